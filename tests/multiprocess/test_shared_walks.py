"""A cold read of many files with the same records (workers of one program)
walks the records of one of them, plus the records that differ
(``_segments``), and reads counts in bulk (``_plan``): the result of every
file is the one a fresh walk of that file alone gives, whatever differs
between the files (counts, a byte of metadata, more or fewer records, several
slots per series, invalid values).

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

from fastmetrics.multiprocess import _reader, _segments, _shared
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

    def counting(self, mm, into, off, used, archive_version):   # type: ignore[no-untyped-def]
        stop, next_ = real(self, mm, into, off, used, archive_version)
        walked[-1] += len([1 for at, _, _ in fm.walk(bytes(mm)) if off <= at < next_])
        return stop, next_

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


def test_files_that_differ_in_some_records_walk_only_those(tmp_path, monkeypatch):
    """A label value differs: the segment that holds it is walked (up to the
    next chunk or word record), the others are taken.  More records: the
    common ones taken, the rest walked.  Fewer records: the segments they
    hold in full taken, the last one walked."""
    base = write(tmp_path / "base.fm", fm.build(_records({0: 1})))
    other_label = write(tmp_path / "label.fm", fm.build(_records({0: 2}, label="b")))
    longer = write(tmp_path / "longer.fm", fm.build(_records({0: 3}, extra=3)))
    longer_again = write(tmp_path / "longer2.fm", fm.build(_records({0: 4}, extra=3)))
    prefix = write(tmp_path / "prefix.fm", fm.build(_records({0: 5})[:4]))
    walked = _read_all([base, other_label, longer, longer_again, prefix, base], monkeypatch)
    assert walked == [9, 4, 3, 0, 2, 0]


def test_a_file_read_through_kept_segments_then_grows(tmp_path, monkeypatch):
    """A live worker's file took kept segments when it held fewer records:
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


def test_kept_segments_are_bounded(tmp_path, monkeypatch):
    """At most MAX_PER_OFFSET segments per offset (most recently used
    first), MAX_BYTES in all (oldest out first), none larger."""
    reader = _reader.Reader()
    try:
        for i in range(_segments.MAX_PER_OFFSET + 3):   # a first segment of its own each
            path = write(tmp_path / f"{i}.fm", fm.build(_records({0: 1}, label=str(i))))
            reader.read(str(path))
        by_start = reader._segments._by_start
        assert max(map(len, by_start.values())) == _segments.MAX_PER_OFFSET
    finally:
        reader.close()
    data = fm.build(_records({0: 1}, extra=40))
    used = fm.used_of(data)
    path = write(tmp_path / "big.fm", data)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        kept = _segments.Segments[int]()
        monkeypatch.setattr(_segments, "MAX_BYTES", 1024)
        assert kept.add(mm, 1024, used, used, 1) is None   # larger than the budget
        first = kept.add(mm, 128, 640, 640, 1)
        second = kept.add(mm, 640, 1152, 1152, 2)
        assert first is not None and second is not None and len(kept) == 2
        assert kept.add(mm, 1152, 1664, 1664, 3) is not None
        assert len(kept) == 2 and kept.find(mm, 128, used) is None   # the oldest went
        assert first.blob == b"" and first.walked == 1   # its bytes too (a layout may still hold it)
        found = kept.find(mm, 640, used)
        assert found is not None and found.walked == 2
        assert kept.find(mm, 640, 1000) is None   # it ends past used


def test_a_cold_scrape_of_exited_workers_is_exact(mp, monkeypatch):
    """Eight exited workers (the implementation under test) with the same
    metrics: a new process's first scrape (no shared reader yet) walks the
    records of one file, one by one, and its totals are exact, with and
    without compaction."""
    for i in range(8):
        mp.run("count", n=10 + i, label="w")
    expected = expected_count_totals({"w": sum(10 + i for i in range(8))})
    for key in expected:
        if key[0] == "mp_bytes_total":
            expected[key] *= 8   # each worker's (count's bytes series do not depend on n)
    walks: List[int] = []   # records walked one by one in process files
    real = _reader.Reader._walk_records
    one_file = len(list(fm.walk(next(mp.path.glob("*.fm")).read_bytes())))

    def counting(self, mm, into, off, used, archive_version):   # type: ignore[no-untyped-def]
        stop, next_ = real(self, mm, into, off, used, archive_version)
        if archive_version is None:
            walks.extend(at for at, _, _ in fm.walk(bytes(mm)) if off <= at < next_)
        return stop, next_

    monkeypatch.setattr(_reader.Reader, "_walk_records", counting)
    _shared.forget_all()
    _, text = scrape(mp.path, compact=False)
    assert_counters(text, expected)
    assert len(walks) == one_file
    _shared.forget_all()
    walks.clear()
    collector, text = scrape(mp.path)
    assert collector.skipped == []
    assert_counters(text, expected)
    assert len(walks) == one_file   # compaction's read of the 8 files
    assert [name for name in os.listdir(mp.path) if name.endswith(".fm")] == ["archive.fm"]


def test_a_corrupt_file_with_the_same_first_records_is_still_corrupt(tmp_path):
    """A file that starts like one already walked, then repeats an enum-word
    record: the same CorruptFile as a fresh read of it alone, and the file
    walked before still reads."""
    good = write(tmp_path / "good.fm", fm.build(_records({0: 1})))
    bad = write(tmp_path / "bad.fm", fm.build([*_records({0: 2}), fm.words(0, {3: 0})]))
    with pytest.raises(_reader.CorruptFile) as fresh:
        _reader.read(str(bad))
    reader = _reader.Reader()
    try:
        reader.read(str(good))
        with pytest.raises(_reader.CorruptFile) as shared:
            reader.read(str(bad))
        assert str(shared.value) == str(fresh.value) == "duplicate enum words for chunk 0"
        _same(reader.read(str(good)), _reader.read(str(good)))
    finally:
        reader.close()


@pytest.mark.parametrize("records", [
    _records({0: 1, 2: 2}),                                                          # two threads in chunk 1
    [fm.counter(0, "a"), fm.chunk(0, {0: 1.0}), fm.counter(1, "b", labelnames=["k"], labelvalues=["v"]),
     fm.counter(513, "c"), fm.chunk(1, {513: 0.5}), fm.enum(2, "e", STATES), fm.words(0, {2: 5})],
    [fm.counter(0, "a"), fm.counter(700, "no_chunk"), fm.chunk(0, {0: 3.0})],        # a counter without chunk
    [fm.counter(0, "a"), fm.chunk(0, {0: 1.0}), fm.counter(1, "a"), fm.chunk(0, {1: 2.0})],  # a reset: 2 slots
    [fm.counter(0, "a"), fm.chunk(0, {0: math.inf}), fm.counter(1, "n"), fm.chunk(0, {1: math.nan})],
], ids=["two-threads", "one-thread", "no-chunk", "reset", "inf-nan"])
def test_the_bulk_plan_and_read_equal_the_slot_by_slot_ones(tmp_path, records):
    """The C-level plan (one thread per chunk) equals the slot-by-slot plan,
    and the bulk read of the counts equals the series loop, value for value
    and in order, problems included."""
    from fastmetrics.multiprocess import _plan

    data = fm.build(records)
    path = write(tmp_path / "f.fm", data)
    reader = _reader.Reader()
    try:
        reader.read(str(path))
        (layout,) = reader._layouts.values()
    finally:
        reader.close()
    looped = _plan._looped_plan(layout.counter_slots, layout.enum_slots, layout.chunks, layout.words, layout.retired)
    if not layout.retired and all(len(starts) == 1 for starts in layout.chunks.values()):
        fast = _plan._one_thread_plan(layout.counter_slots, layout.counter_keys, layout.enum_slots, layout.chunks,
                                      layout.words)
        if all(slot >> fmt.CHUNK_BITS in layout.chunks for slot in layout.counter_slots):
            assert fast is not None
            assert list(_plan.counter_entries(fast)) == list(_plan.counter_entries(looped))
            assert (fast.batch, fast.enums, fast.problems) == (looped.batch, looped.enums, looped.problems)
        else:
            assert fast is None
    used = fm.used_of(data)
    view = memoryview(data)[:used]
    f64, i64 = view.cast("d"), view.cast("q")
    bulk = _plan.read_counts(looped, f64, i64, 2)
    loop = _plan.read_counts(looped._replace(batch=None), f64, i64, 2)
    assert [list(d.items()) if isinstance(d, dict) else d for d in bulk] == \
        [list(d.items()) if isinstance(d, dict) else d for d in loop]
