"""Pure-Python twin of the multiprocess arena (``_arena.h``): a chunk provider
(see :class:`fastmetrics._core_py.ChunkProvider`) backed by this process's
memory-mapped file, driven by :mod:`fastmetrics.multiprocess` through
:func:`fastmetrics._core.arena`.

Records are appended at ``used`` (header last, then ``used`` through an int64
view: one aligned 8-byte store, as readers load it).  Every append first
reserves its pages (``posix_fallocate``, 64 KiB steps), so a full file system
is an ``OSError`` at allocation time, never a SIGBUS on a later store.  All
state is guarded by one lock, taken after the store's.
"""

from __future__ import annotations

import os
import struct
import threading
from typing import Any, Dict, Optional

from . import _core_py
from .multiprocess._format import (CHUNK_BYTES, CHUNK_SLOTS, HDR_USED, MAX_CHUNKS, REC_ALIGN, REC_CHUNK, REC_DATA_OFF,
                                   REC_HEAD, REC_META_OFF, REC_WORDS, STATE_BITS)

implementation = "python"
RESERVE_STEP = 64 * 1024

_lock = threading.Lock()
_arena: Optional[memoryview] = None   # the mapping, or None when detached
_fd = -1                               # the file, for reserving pages
_path: Optional[str] = None
_reserved = 0                          # bytes known to be backed


def _full() -> MemoryError:
    return MemoryError(f"fastmetrics: the multiprocess file {_path} is full or detached "
                       f"(set FASTMETRICS_MULTIPROC_CAPACITY higher)")


def _reserve_locked(arena: memoryview, end: int) -> None:
    """Back the file up to ``end`` with real pages.  The range starts past
    ``used``: nothing is stored there yet."""
    global _reserved
    if end <= _reserved or _fd < 0 or not hasattr(os, "posix_fallocate"):
        return
    want = min(-(-end // RESERVE_STEP) * RESERVE_STEP, len(arena))
    try:
        os.posix_fallocate(_fd, _reserved, want - _reserved)
    except OSError as e:
        raise OSError(e.errno, f"fastmetrics: cannot reserve space in the multiprocess file "
                               f"({os.strerror(e.errno or 0)}); what was counted stays valid", _path) from None
    _reserved = want


def _append(kind: int, arg: int, payload_off: int, data: Optional[bytes], length: int) -> int:
    """Append a record and publish it; the payload's offset.  ``MemoryError``
    when full or detached, ``OSError`` when its pages cannot be reserved;
    nothing is published then."""
    with _lock:
        arena = _arena
        if arena is None:
            raise _full()
        with arena[HDR_USED:HDR_USED + 8] as field, field.cast("q") as used_word:
            used = used_word[0]
            size = (payload_off + length + REC_ALIGN - 1) & ~(REC_ALIGN - 1)
            if used < 0 or size > len(arena) - used:
                raise _full()
            _reserve_locked(arena, used + size)
            if data:
                arena[used + payload_off:used + payload_off + length] = data
            REC_HEAD.pack_into(arena, used, kind, length, arg)
            used_word[0] = used + size
        return used + payload_off


def _view(off: int) -> memoryview:
    """The chunk at ``off`` (bytes; the caller casts it)."""
    assert _arena is not None
    return _arena[off:off + CHUNK_BYTES]


class _Provider:
    """The store's chunk provider: chunks and enum words as records."""

    def chunk(self, c: int) -> Any:
        return _view(_append(REC_CHUNK, c, REC_DATA_OFF, None, CHUNK_BYTES)).cast("d")

    def words(self, c: int, initial: Optional[Any]) -> Any:
        data = struct.pack(f"={CHUNK_SLOTS}q", *initial) if initial is not None else None
        return _view(_append(REC_WORDS, c, REC_DATA_OFF, data, CHUNK_BYTES)).cast("q")

    def before_fork(self) -> None:
        _lock.acquire()

    def after_fork_parent(self) -> None:
        _lock.release()

    def after_fork_child(self) -> None:
        _detach_locked()   # the mapping is the parent's file
        _lock.release()


def _detach_locked() -> None:
    global _arena, _fd, _reserved
    _arena, _fd, _reserved = None, -1, 0


def _mp_enable() -> None:
    """Make the arena the store's chunk provider (``RuntimeError`` once a
    metric exists)."""
    _core_py.set_provider(_Provider(), STATE_BITS)


def _mp_attach(buffer: Any, fd: int, path: str) -> None:
    """Append to ``buffer`` (a writable mapping of ``path``, open as ``fd``,
    zero past its header) from now on; enum words move there too."""
    global _arena, _fd, _path, _reserved
    with _lock:
        _arena = memoryview(buffer).cast("B")
        _fd, _path = fd, path
        with _arena[HDR_USED:HDR_USED + 8] as field, field.cast("q") as used_word:
            _reserved = used_word[0]   # the header is written
    try:
        _core_py.words_rehome()
    except BaseException:
        _mp_detach()
        raise


def _mp_detach() -> None:
    """Stop using the mapping (before it is closed)."""
    with _lock:
        _detach_locked()


def _mp_record(kind: int, arg: int, payload: bytes) -> None:
    """Append a metadata record (``MemoryError`` when full, ``OSError`` when
    its pages cannot be reserved)."""
    _append(kind, arg, REC_META_OFF, payload, len(payload))


def arena_layout() -> Dict[str, int]:
    """The file-layout constants this writer uses (see the C twin)."""
    return {"HDR_USED": HDR_USED, "REC_META_OFF": REC_META_OFF, "REC_DATA_OFF": REC_DATA_OFF,
            "REC_ALIGN": REC_ALIGN, "REC_CHUNK": REC_CHUNK, "REC_WORDS": REC_WORDS, "STATE_BITS": STATE_BITS,
            "CHUNK_SLOTS": CHUNK_SLOTS, "MAX_CHUNKS": MAX_CHUNKS}
