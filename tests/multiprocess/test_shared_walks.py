"""A cold read of many files with the same records (workers of one program)
walks one of them (``_templates``) and reads counts in bulk (``_plan``): the
result of every file is the one a fresh walk of that file alone gives,
whatever differs between the files (counts, a byte of metadata, more or fewer
records, several slots per series, invalid values).

The files are built by hand (``_fmfile.py``) where the case needs a layout no
writer is asked for, and written by real workers (both implementations) for
the directory an exporter sees after its workers exited.
"""

from __future__ import annotations

import math
import mmap
import os
from pathlib import Path
from typing import Dict, List

import _fmfile as fm
import pytest
from _expose import assert_counters, expected_count_totals, scrape, write

from fastmetrics.multiprocess import _reader, _shared, _templates
from fastmetrics.multiprocess import _format as fmt

pytest.importorskip("fcntl", reason="multiprocess mode needs POSIX (fcntl.flock)")

STATES = ["idle", "busy", "done"]


def _records(values: Dict[int, float], *, label: str = "a", extra: int = 0) -> List[fm.Record]:
    """A worker's records: counters in slots 0..3 (slot 1 never counted: no
    chunk value), slot 600 in a second chunk that two threads wrote, an enum,
    then ``extra`` more counters."""
    records = [fm.counter(0, "ops"), fm.chunk(0, {0: values.get(0, 0.0), 2: values.get(2, 0.0)}),
               fm.counter(1, "idle"), fm.counter(2, "bytes", labelnames=["k"], labelvalues=[label]),
               fm.enum(3, "phase", STATES), fm.words(0, {3: fm.word(2, 1, fm.NS_2024)}),
               fm.counter(600, "wide"), fm.chunk(1, {600: 1.5}), fm.chunk(1, {600: values.get(600, 2.25)})]
    records += [fm.counter(4 + i, f"extra{i}") for i in range(extra)]
    return records


def _same(pf: _reader.ParsedFile, fresh: _reader.ParsedFile) -> None:
    """``pf`` is what a fresh reader of the file alone reads, in the same order."""
    assert pf == fresh
    assert list(pf.metas.items()) == list(fresh.metas.items())
    assert list(pf.counters.items()) == list(fresh.counters.items())


def _read_all(paths: List[Path], monkeypatch: pytest.MonkeyPatch) -> List[int]:
    """Read ``paths`` with one reader, each checked against a fresh read of
    it alone; the number of records walked one by one per file."""
    walked: List[int] = []
    real = _reader.Reader._walk_records

    def counting(self, mm, layout, used, archive):   # type: ignore[no-untyped-def]
        before = layout.scanned
        real(self, mm, layout, used, archive)
        walked[-1] += len([1 for off, _, _ in fm.walk(bytes(mm)) if before <= off < layout.scanned])

    reader = _reader.Reader()
    try:
        for path in paths:
            fresh = _reader.read(str(path))
            monkeypatch.setattr(_reader.Reader, "_walk_records", counting)
            walked.append(0)
            _same(reader.read(str(path)), fresh)
            monkeypatch.setattr(_reader.Reader, "_walk_records", real)
    finally:
        reader.close()
    return walked


def test_files_with_the_same_records_are_walked_once(tmp_path, monkeypatch):
    """Six files that differ only in their counts: the first is walked, the
    others take its walk, and each reads its own counts."""
    paths = [write(tmp_path / f"{i}.fm", fm.build(_records({0: i, 2: 10.0 * i, 600: i / 4}))) for i in range(6)]
    walked = _read_all(paths, monkeypatch)
    assert walked == [9, 0, 0, 0, 0, 0]
    pf = _reader.read(str(paths[5]))
    assert pf.counters[("ops", ())] == 5 and pf.counters[("bytes", ("a",))] == 50
    assert pf.counters[("idle", ())] == 0 and pf.counters[("wide", ())] == 1.5 + 5 / 4


def test_files_that_differ_in_their_records_are_walked_as_far_as_they_differ(tmp_path, monkeypatch):
    """A byte of metadata differs: walked in full.  More records: the common
    ones taken, the rest walked.  Fewer records (a prefix): walked in full."""
    base = write(tmp_path / "base.fm", fm.build(_records({0: 1})))
    other_label = write(tmp_path / "label.fm", fm.build(_records({0: 2}, label="b")))
    longer = write(tmp_path / "longer.fm", fm.build(_records({0: 3}, extra=3)))
    longer_again = write(tmp_path / "longer2.fm", fm.build(_records({0: 4}, extra=3)))
    prefix = write(tmp_path / "prefix.fm", fm.build(_records({0: 5})[:4]))
    walked = _read_all([base, other_label, longer, longer_again, prefix, base], monkeypatch)
    assert walked == [9, 9, 3, 0, 4, 0]


def test_a_file_read_through_a_template_then_grows(tmp_path, monkeypatch):
    """A live worker's file matched a template when it held fewer records:
    what it appends later is walked and counted."""
    write(tmp_path / "first.fm", fm.build(_records({0: 1})))
    growing = tmp_path / "growing.fm"
    records = _records({0: 2}, extra=2)
    size = len(fm.build(records)) + 4096
    write(growing, fm.build(records, capacity=size).ljust(size, b"\0"))   # room to grow in place
    reader = _reader.Reader()
    try:
        reader.read(str(tmp_path / "first.fm"))
        _same(reader.read(str(growing)), _reader.read(str(growing)))
        data = bytearray(growing.read_bytes())
        appended = fmt.record(*fm.counter(9, "late"))
        used = fm.used_of(bytes(data))
        data[used:used + len(appended)] = appended
        fmt.USED.pack_into(data, fmt.HDR_USED, used + len(appended))
        with open(growing, "r+b") as f:   # in place: same inode, same header
            f.write(data)
        pf = reader.read(str(growing))
        _same(pf, _reader.read(str(growing)))
        assert pf.counters[("late", ())] == 0
    finally:
        reader.close()


@pytest.mark.parametrize("damage", ["nan", "negative", "reset"])
def test_bulk_counts_fall_back_to_the_series_loop(tmp_path, monkeypatch, damage):
    """A file whose counts include an invalid one, or whose series has two
    slots (a reset), read after a file with clean counts: the same series,
    sums and problems as a fresh read of it alone."""
    clean = write(tmp_path / "clean.fm", fm.build(_records({0: 1})))
    if damage == "reset":
        records = [*_records({0: 1}), fm.counter(7, "ops"), fm.chunk(0, {7: 0.5})]
    else:
        records = _records({0: 1, 2: math.nan if damage == "nan" else -1.0})
    damaged = write(tmp_path / "damaged.fm", fm.build(records))
    _read_all([clean, damaged, clean], monkeypatch)
    pf = _reader.read(str(damaged))
    if damage == "reset":
        assert pf.counters[("ops", ())] == 1.5 and pf.problems == []
    else:
        assert ("bytes", ("a",)) not in pf.counters and pf.counters[("ops", ())] == 1
        assert len(pf.problems) == 1 and "invalid count" in pf.problems[0]


def test_templates_are_bounded(tmp_path):
    """At most MAX_TEMPLATES walks are kept, and none larger than MAX_BYTES."""
    reader = _reader.Reader()
    try:
        for i in range(_templates.MAX_TEMPLATES + 3):
            path = write(tmp_path / f"{i}.fm", fm.build(_records({0: 1}, extra=i)))
            reader.read(str(path))
        kept = reader._templates._templates
        assert len(kept) == _templates.MAX_TEMPLATES
        assert [t.end for t in kept] == sorted((t.end for t in kept), reverse=True)   # most recent first
    finally:
        reader.close()
    small = _templates.Templates[int]()
    data = fm.build(_records({0: 1}, extra=40))
    path = write(tmp_path / "big.fm", data)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        original = _templates.MAX_BYTES
        try:
            _templates.MAX_BYTES = 1024
            small.add(mm, fm.used_of(data), [], 1)
            assert small.find(mm, fm.used_of(data)) is None
        finally:
            _templates.MAX_BYTES = original
        small.add(mm, fm.used_of(data), [], 1)
        assert small.find(mm, fm.used_of(data)) == (fm.used_of(data), 1)


def test_a_cold_scrape_of_exited_workers_is_exact(mp, monkeypatch):
    """Eight exited workers (the implementation under test) with the same
    metrics: a new process's first scrape (no shared reader yet) walks the
    records of one file, and its totals are exact, with and without
    compaction."""
    for i in range(8):
        mp.run("count", n=10 + i, label="w")
    expected = expected_count_totals({"w": sum(10 + i for i in range(8))})
    for key in expected:
        if key[0] == "mp_bytes_total":
            expected[key] *= 8   # each worker's (count's bytes series do not depend on n)
    walks = []
    real = _reader.Reader._walk_records

    def counting(self, mm, layout, used, archive):   # type: ignore[no-untyped-def]
        walks.append(archive)
        real(self, mm, layout, used, archive)

    monkeypatch.setattr(_reader.Reader, "_walk_records", counting)
    _shared.forget_all()
    _, text = scrape(mp.path, compact=False)
    assert_counters(text, expected)
    assert walks.count(False) == 1
    _shared.forget_all()
    walks.clear()
    collector, text = scrape(mp.path)
    assert collector.skipped == []
    assert_counters(text, expected)
    assert walks.count(False) == 1   # compaction's read of the 8 files
    assert [name for name in os.listdir(mp.path) if name.endswith(".fm")] == ["archive.fm"]
