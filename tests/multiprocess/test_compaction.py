"""Compaction: crash safety, temp files, version 1 files and archives folded
into version 2, copies of a live file; and the fold it shares with the scrape."""

from __future__ import annotations

import os
import shutil
import time

import _fmfile as fm
import pytest
from _expose import STATES, assert_counters, enum_states, expected_count_totals, fm_files, only_file, scrape, serve
from _expose import reasons, skipped_paths, value, write

from fastmetrics.multiprocess import _reader, compact, read_directory
from fastmetrics.multiprocess import _format as fmt

fcntl = pytest.importorskip("fcntl", reason="multiprocess mode needs POSIX (fcntl.flock)")


def test_compaction_that_crashed_before_deleting_does_not_double_count(mp, tmp_path):
    """A compaction that replaced the archive but died before deleting the
    files it folded (simulated: copy the files aside, compact, put them back):
    readers skip the files listed in the archive, totals stay exact, and the
    next compaction deletes them without folding them again."""
    workers = {"w0": 100, "w1": 200, "w2": 300}
    for label, n in workers.items():
        mp.run("count", n=n, label=label)
    expected = expected_count_totals(workers)
    aside = tmp_path / "aside"
    aside.mkdir()
    names = fm_files(mp.path)
    assert len(names) == 3
    for name in names:
        shutil.copy2(mp.path / name, aside / name)

    result = compact(str(mp.path))
    assert (result.ran, result.absorbed, result.skipped) == (True, 3, [])
    for name in names:
        shutil.copy2(aside / name, mp.path / name)
    absorbed = _reader.read(str(mp.path / "archive.fm")).absorbed
    assert {fmt.parse_name(name).uid for name in names} <= absorbed

    snapshot = read_directory(str(mp.path))
    assert snapshot.skipped == [] and snapshot.files == 1
    collector, text = scrape(mp.path, compact=False)
    assert collector.skipped == []
    assert_counters(text, expected)

    result = compact(str(mp.path))
    assert (result.ran, result.removed, result.skipped) == (True, 3, [])
    assert fm_files(mp.path) == ["archive.fm"]
    _, text = scrape(mp.path)
    assert_counters(text, expected)
    mp.run("count", n=5, label="w3")   # the archive keeps working afterwards
    _, text = scrape(mp.path)
    assert_counters(text, expected_count_totals(dict(workers, w3=5)))


def test_temp_files_are_ignored_and_stale_ones_removed(mp):
    """A file still being created (``.<name>.tmp``) and an archive being
    written (``archive.fm.<pid>.tmp``) are invisible to readers, even with
    valid content.  Compaction deletes a process temp file only when it is old
    and unlocked (its creator died)."""
    mp.run("count", n=50, label="w")
    [original] = fm_files(mp.path)
    data = (mp.path / original).read_bytes()
    fresh, stale, held = (mp.path / fmt.temp_name(fm.fake_process_name()) for _ in range(3))
    for path in (fresh, stale, held, mp.path / fmt.archive_temp_name(12345)):
        path.write_bytes(fm.valid_copy(data))
    long_ago = time.time() - 3600
    for path in (stale, held):
        os.utime(path, (long_ago, long_ago))
    fd = os.open(held, os.O_RDONLY)   # as its creator would, while alive
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        collector, text = scrape(mp.path, compact=False)
        assert collector.skipped == []
        assert_counters(text, expected_count_totals({"w": 50}))
        assert compact(str(mp.path)).absorbed == 1
        assert fresh.exists() and held.exists() and not stale.exists()
    finally:
        os.close(fd)
    collector, text = scrape(mp.path)
    assert collector.skipped == []
    assert_counters(text, expected_count_totals({"w": 50}))


def test_v1_and_v2_files_fold_by_wall_clock(tmp_path):
    """A version 1 file (an enum set in 2024, a counter with a retired slot)
    and a version 2 file (the enum set in 2100, a counter reset by a new
    writer: two slots of one series, both counted): ``mostrecent`` shows the
    2100 state, counters are summed, and the archive compaction writes is
    version 2 with the word re-encoded.  A later v1 file from 2024 does not
    win over the archive's 2100."""
    path = tmp_path / "mp"
    path.mkdir()
    v1 = fm.build([fm.words(0, {1: fm.word(1, 2, fm.NS_2024)}),
                   fm.chunk(0, {0: 100.0, 2: 3.0}),
                   fm.counter(0, "ops"), fm.Record(fmt.REC_RETIRE, 0, b""), fm.counter(2, "ops"),
                   fm.enum(1, "phase", STATES)], version=1)
    v2 = fm.build([fm.words(0, {0: fm.word(2, 1, fm.NS_2100)}),
                   fm.chunk(0, {1: 4.0, 2: 5.0}),
                   fm.enum(0, "phase", STATES), fm.counter(1, "ops"), fm.counter(2, "ops")],
                  version=2)
    write(path / fm.fake_process_name(), v1)
    write(path / fm.fake_process_name(), v2)

    def phase_and_ops() -> tuple:
        collector, text, _ = serve(path, enum_mode="mostrecent")
        assert collector.skipped == []
        return enum_states(text, "phase"), value(text, "ops_total")

    assert phase_and_ops() == ({(): "busy"}, 12)
    assert fm_files(path) == ["archive.fm"]
    archive = fm.parse((path / "archive.fm").read_bytes())
    assert archive.fields.version == 2
    [last] = [rec for rec in archive.records if rec.kind == fmt.REC_LAST]
    assert fm.value_of(last) == fm.word(2, 1, fm.NS_2100)

    write(path / fm.fake_process_name(), fm.build(
        [fm.words(0, {0: fm.word(1, 0, fm.NS_2024)}), fm.enum(0, "phase", STATES)], version=1))
    assert phase_and_ops() == ({(): "busy"}, 12)


def test_a_v1_archive_is_read_and_folded_into_a_v2_archive(tmp_path):
    """An archive written by a version 1 compaction (TOTAL, LAST with a v1
    word, ABSORBED) is read, and folded with a version 2 file into a version
    2 archive: the newer wall clock wins whatever the versions."""
    path = tmp_path / "mp"
    path.mkdir()
    gone = os.urandom(16)
    write(path / "archive.fm", fm.build([fm.total("ops", 10.0), fm.last("phase", fm.word(1, 2, fm.NS_2024), STATES),
                                         fm.absorbed([gone])], version=1, archive=True, pid=0))
    newer = fm.NS_2024 + 10**9
    write(path / fm.fake_process_name(), fm.build([fm.words(0, {0: fm.word(2, 0, fm.NS_2024 - 10**9),
                                                             1: fm.word(2, 1, newer)}),
                                                fm.chunk(0, {2: 1.0}), fm.enum(0, "phase", STATES),
                                                fm.enum(1, "role", STATES), fm.counter(2, "ops")]))
    collector, text, _ = serve(path, compact=False, enum_mode="mostrecent")
    assert collector.skipped == []
    assert (value(text, "ops_total"), enum_states(text, "phase")) == (11, {(): "done"})

    result = compact(str(path))
    assert (result.absorbed, result.skipped) == (1, [])
    archive = fm.parse((path / "archive.fm").read_bytes())
    assert archive.fields.version == 2
    lasts = [fm.value_of(rec) for rec in archive.records if rec.kind == fmt.REC_LAST]
    assert sorted(lasts) == sorted([fm.word(2, 2, fm.NS_2024), fm.word(2, 1, newer)])
    collector, text, _ = serve(path, enum_mode="mostrecent")
    assert collector.skipped == []
    assert value(text, "ops_total") == 11
    assert (enum_states(text, "phase"), enum_states(text, "role")) == ({(): "done"}, {(): "busy"})


def test_a_copy_of_a_live_process_file_is_never_folded(mp):
    """A copy of a live worker's file looks like an exited process (nobody
    holds its lock): compaction must not fold it, or the archive would claim
    the worker's uid and hide its file.  The worker's later counts show, and
    once it exits everything is folded exactly once."""
    worker = mp.serve()
    worker.call("inc", metric="ops", amount=5)
    copy = mp.path / "copy.fm"
    shutil.copyfile(only_file(mp.path), copy)

    collector, text, _ = serve(mp.path)
    assert value(text, "mp_ops_total") == 5
    assert skipped_paths(collector.skipped) == [str(copy)]
    assert copy.exists() and "archive.fm" not in fm_files(mp.path)
    worker.call("inc", metric="ops", amount=2)
    assert value(serve(mp.path)[1], "mp_ops_total") == 7
    worker.exit()
    collector, text, _ = serve(mp.path)
    assert value(text, "mp_ops_total") == 7
    assert fm_files(mp.path) == ["archive.fm"]
    assert value(serve(mp.path)[1], "mp_ops_total") == 7


def test_scrape_and_compaction_fold_alike_through_a_tie_and_a_mismatch(tmp_path):
    """The scrape and compaction share one fold (``multiprocess._fold``): the
    newest file's metadata wins per metric name (its help; an older file's
    ``ops`` with other label names is left out, reported), and equal enum
    stamps go to the higher state index whatever the order of the files.  So
    the exposition is the same, byte for byte, before and after compaction
    folds every file into the archive."""
    path = tmp_path / "mp"
    path.mkdir()
    stamp = fm.NS_2024
    write(path / fm.fake_process_name(), fm.build([
        fm.words(0, {1: fm.word(2, 0, stamp)}), fm.chunk(0, {0: 2.0}),
        fm.counter(0, "ops", doc="Newest help.", labelnames=["k"], labelvalues=["v"]),
        fm.enum(1, "phase", STATES)], created_ns=stamp + 2 * 10**9))
    older = write(path / fm.fake_process_name(), fm.build([
        fm.words(0, {1: fm.word(2, 2, stamp)}), fm.chunk(0, {0: 5.0, 2: 3.0}),
        fm.counter(0, "ops", doc="Older help.", labelnames=["x"], labelvalues=["w"]),
        fm.enum(1, "phase", STATES), fm.counter(2, "other")], created_ns=stamp + 10**9))
    write(path / "archive.fm", fm.build([
        fm.total("ops", 10.0, doc="Archived help.", labelnames=["k"], labelvalues=["v"]),
        fm.last("phase", fm.word(2, 1, stamp), STATES)], archive=True, pid=0, created_ns=stamp))

    collector, before, _ = serve(path, compact=False, enum_mode="mostrecent")
    assert (value(before, "ops_total", k="v"), value(before, "ops_total", x="w")) == (12, None)
    assert value(before, "other_total") == 3
    assert "# HELP ops_total Newest help.\n" in before
    assert enum_states(before, "phase") == {(): "done"}   # idle, busy, done: all at one stamp
    assert skipped_paths(collector.skipped) == [str(older)]
    assert "ops: type, labels or states differ" in reasons(collector.skipped, older)

    result = compact(str(path))
    assert (result.absorbed, skipped_paths(result.skipped)) == (2, [str(older)])
    assert "left out of the archive" in reasons(result.skipped, older)
    assert fm_files(path) == ["archive.fm"]
    collector, after, _ = serve(path, compact=False, enum_mode="mostrecent")
    assert collector.skipped == []
    assert after == before
