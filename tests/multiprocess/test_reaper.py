"""The reaper closes mappings and descriptors off the request path: each once,
in order, errors logged, drain() waits; a fork child gets its own."""

from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Dict

import pytest
from _support import in_forked_child

from fastmetrics.multiprocess import _reaper

pytest.importorskip("fcntl", reason="multiprocess mode needs POSIX (fcntl.flock)")


def test_release_closes_mappings_and_descriptors(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * mmap.PAGESIZE)
    fd = os.open(path, os.O_RDONLY)
    mapping = mmap.mmap(fd, mmap.PAGESIZE, access=mmap.ACCESS_READ)
    path.unlink()   # as compaction does: deleted while still open and mapped
    _reaper.release(mapping)
    _reaper.release(fd)
    _reaper.drain()
    assert mapping.closed
    with pytest.raises(OSError):
        os.fstat(fd)


def test_an_error_is_logged_and_the_rest_still_closed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    mapping = mmap.mmap(-1, mmap.PAGESIZE)
    view = memoryview(mapping)   # an exported buffer: close() raises BufferError
    fd = os.open(tmp_path, os.O_RDONLY)
    with caplog.at_level("WARNING", logger="fastmetrics.multiprocess"):
        _reaper.release(mapping)
        _reaper.release(fd)
        _reaper.drain()
    with pytest.raises(OSError):
        os.fstat(fd)
    assert not mapping.closed
    assert any("could not close" in r.getMessage() for r in caplog.records)
    view.release()
    mapping.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_fork_child_has_its_own_reaper(tmp_path: Path) -> None:
    _reaper.release(os.open(tmp_path, os.O_RDONLY))
    _reaper.drain()   # the parent's thread exists now

    def child() -> Dict[str, bool]:
        fd = os.open(tmp_path, os.O_RDONLY)
        _reaper.release(fd)
        _reaper.drain()   # would wait forever on the parent's (absent) thread
        try:
            os.fstat(fd)
        except OSError:
            return {"closed": True}
        return {"closed": False}

    assert in_forked_child(child) == {"closed": True}
