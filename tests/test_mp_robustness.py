"""Multiprocess mode against hostile directories and extreme values.

Each test reproduces one finding of an audit (issue 11): a FIFO that blocked
every scrape, an infinite count that dropped a whole process, a label value
that broke every scrape for good, entries that stopped compaction, a copied
file counted twice, an unusable capacity.  Writes happen in real worker
processes (``tests/_mp_worker.py``) where the writer is under test, and in
files built by hand (``tests/_fmfile.py``) where the content must be one no
current writer produces.  Every operation that could hang runs in a thread
with a deadline.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

import _fmfile as fm
from fastmetrics import multiprocess
from fastmetrics.multiprocess import _format
from fastmetrics.multiprocess import MultiProcessCollector, compact
from test_multiprocess import (  # noqa: F401 - fixtures
    STATES, _pytest_process_stays_out_of_multiprocess_mode, assert_counters, enum_states,
    expected_count_totals, fake_process_name, fm_files, implementation, mp, value,
)

DEADLINE = 60.0   # seconds; every bounded operation takes milliseconds


# -- helpers ---------------------------------------------------------------------------

def bounded(call: Callable[[], Any], fifo_dir: Optional[Path] = None) -> Any:
    """``call()`` in a daemon thread: its result, or its exception re-raised;
    the test fails if it has not returned within DEADLINE.  A reader stuck
    opening a FIFO is then released (each FIFO in ``fifo_dir`` is opened for
    writing), so the thread ends."""
    box: Dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = call()
        except BaseException as e:  # noqa: BLE001 - re-raised below
            box["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(DEADLINE)
    if thread.is_alive():
        for _ in range(20):
            for entry in (fifo_dir.iterdir() if fifo_dir else ()):
                if stat.S_ISFIFO(entry.lstat().st_mode):
                    try:
                        os.close(os.open(entry, os.O_WRONLY | os.O_NONBLOCK))
                    except OSError:
                        pass
            thread.join(0.5)
        pytest.fail(f"{call} did not return within {DEADLINE} s")
    if "error" in box:
        raise box["error"]
    return box["result"]


def serve(path: Path, **kwargs) -> tuple:
    """(collector, text exposition, OpenMetrics exposition), each step bounded."""
    registry = CollectorRegistry()
    collector = MultiProcessCollector(registry, str(path), **kwargs)
    text = bounded(lambda: generate_latest(registry).decode(), path)
    openmetrics = bounded(lambda: generate_openmetrics(registry).decode(), path)
    return collector, text, openmetrics


def skipped_paths(skipped) -> List[str]:
    return sorted({p for p, _ in skipped})


def reasons(skipped, path) -> str:
    return " | ".join(reason for p, reason in skipped if p == str(path))


def only_file(path: Path) -> Path:
    [name] = [n for n in fm_files(path) if n != "archive.fm"]
    return path / name


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def worker_env(implementation: str, **extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in (multiprocess.ENV_DIR, multiprocess.ENV_CAPACITY, "FASTMETRICS_NO_EXTENSIONS")}
    if implementation == "python":
        env["FASTMETRICS_NO_EXTENSIONS"] = "1"
    env.update(extra)
    return env


# -- 3. FIFOs and other special files are never waited on ------------------------------

def test_a_fifo_named_like_a_process_file_is_skipped_not_waited_on(mp):
    """A FIFO named ``*.fm`` next to an exited worker's file: a scrape returns
    (it used to block opening the FIFO), serves the worker's counts and
    reports the FIFO.  Compaction folds the worker's file and leaves the FIFO
    alone; a FIFO named like a stale temp file (old, never locked) does not
    block it either."""
    mp.run("count", n=50, label="w")
    fifo = mp.path / fake_process_name()
    os.mkfifo(fifo)
    temp_fifo = mp.path / f".{fake_process_name()}.tmp"
    os.mkfifo(temp_fifo)
    os.utime(temp_fifo, (1, 1))
    expected = expected_count_totals({"w": 50})

    collector, text, _ = serve(mp.path, compact=False)
    assert_counters(text, expected)
    assert skipped_paths(collector.skipped) == [str(fifo)]
    assert "not a regular file" in reasons(collector.skipped, fifo)

    collector, text, _ = serve(mp.path)
    assert_counters(text, expected)
    assert skipped_paths(collector.skipped) == [str(fifo)]
    assert sorted(fm_files(mp.path)) == sorted(["archive.fm", fifo.name])
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and stat.S_ISFIFO(temp_fifo.lstat().st_mode)


def test_a_fifo_named_like_the_archive_is_skipped_then_moved_aside(mp):
    """A FIFO named ``archive.fm``: a scrape returns and reports it;
    compaction moves it aside and writes a real archive."""
    mp.run("count", n=7, label="w")
    archive = mp.path / "archive.fm"
    os.mkfifo(archive)

    collector, text, _ = serve(mp.path, compact=False)
    assert_counters(text, expected_count_totals({"w": 7}))
    assert skipped_paths(collector.skipped) == [str(archive)]

    result = bounded(lambda: compact(str(mp.path)), mp.path)
    assert (result.ran, result.absorbed) == (True, 1)
    assert skipped_paths(result.skipped) == [str(archive)]
    assert archive.is_file()
    collector, text, _ = serve(mp.path)
    assert collector.skipped == []
    assert_counters(text, expected_count_totals({"w": 7}))


# -- 4. a value is not corruption; one bad value skips only its series -------------------

def test_infinite_counts_are_served_and_survive_compaction(mp):
    """``inc(float("inf"))`` and two ``inc(1e308)`` (which overflow to +Inf)
    are legal counts: the scrape serves +Inf for those series and every other
    series of the process, live and after the process exited and its file was
    folded into the archive (whose TOTAL records hold +Inf)."""
    worker = mp.serve()
    worker.call("inc", metric="ops", amount=math.inf)
    worker.call("inc", metric="work", labels=["big"], amount=1e308, times=2)
    worker.call("inc", metric="work", labels=["small"], amount=3)

    def check() -> None:
        collector, text, openmetrics = serve(mp.path)
        assert collector.skipped == []
        assert value(text, "mp_ops_total") == math.inf
        assert value(text, "mp_work_total", worker="big") == math.inf
        assert value(text, "mp_work_total", worker="small") == 3
        assert "mp_ops_total +Inf" in openmetrics

    check()
    worker.exit()
    check()
    assert fm_files(mp.path) == ["archive.fm"] and not list(mp.path.glob("*.corrupt"))
    totals = [struct.unpack_from("=d", rec.payload, 4)[0]
              for rec in fm.parse((mp.path / "archive.fm").read_bytes()).records if rec.kind == fm.TOTAL]
    assert totals.count(math.inf) == 2


def _file_with_bad_values(uid: bytes) -> bytes:
    """A dead process's file: valid series next to a NaN count, a negative
    count, an enum word out of range, a negative enum word and an enum whose
    chunk of words is missing."""
    return fm.build([
        fm.words(0, {3: fm.word(2, 1, fm.NS_2024), 4: fm.word(2, 7, fm.NS_2024), 5: -1}),
        fm.chunk(0, {0: 5.0, 1: math.nan, 2: -1.0, 6: 2.0}),
        fm.chunk(0, {0: 1.0, 6: 0.5}),
        fm.counter(0, "good"),
        fm.counter(1, "nan_count"),
        fm.counter(2, "neg_count"),
        fm.counter(6, "labelled", labelnames=["k"], labelvalues=["v"]),
        fm.enum(3, "good_state", STATES),
        fm.enum(4, "bad_index", STATES),
        fm.enum(5, "bad_word", STATES),
        fm.enum(512, "no_word", STATES),
    ], uid=uid)


def test_one_bad_value_skips_only_its_series(tmp_path):
    """A NaN or negative count, or an enum word that names no state, skips
    that series of that file alone, reported: the file's other series are
    served, and compaction folds them and deletes the file instead of setting
    it aside as corrupt.  Another file's value of a skipped series counts."""
    path = tmp_path / "mp"
    path.mkdir()
    uid = os.urandom(16)
    bad = write(path / fm.process_name(4_000_001, uid), _file_with_bad_values(uid))
    other_uid = os.urandom(16)
    write(path / fm.process_name(4_000_002, other_uid),
          fm.build([fm.chunk(0, {0: 2.0}), fm.counter(0, "nan_count")], uid=other_uid))

    def check(collector, text: str) -> None:
        assert value(text, "good_total") == 6
        assert value(text, "labelled_total", k="v") == 2.5
        assert value(text, "nan_count_total") == 2   # the other file's
        assert value(text, "neg_count_total") is None
        assert enum_states(text, "good_state") == {(): "busy"}
        assert "bad_index" not in text and "bad_word" not in text and "no_word" not in text

    collector, text, _ = serve(path, compact=False, enum_mode="mostrecent")
    check(collector, text)
    assert skipped_paths(collector.skipped) == [str(bad)]
    why = reasons(collector.skipped, bad)
    for name in ("nan_count", "neg_count", "bad_index", "bad_word", "no_word"):
        assert name in why, why
    assert len(collector.skipped) == 5

    result = compact(str(path))
    assert (result.ran, result.absorbed, result.removed) == (True, 2, 2)
    assert skipped_paths(result.skipped) == [str(bad)] and len(result.skipped) == 5
    assert fm_files(path) == ["archive.fm"] and not list(path.glob("*.corrupt"))
    collector, text, _ = serve(path, enum_mode="mostrecent")
    assert collector.skipped == []
    check(collector, text)


def test_a_damaged_archive_record_costs_only_its_series(mp):
    """A TOTAL record of the archive whose metadata checksum fails: that
    series is skipped and reported, the archive's other series are served,
    and the next compaction carries them over (the archive is not set aside)."""
    mp.run("count", n=100, label="a")
    assert compact(str(mp.path)).absorbed == 1
    archive = mp.path / "archive.fm"
    parsed = fm.parse(archive.read_bytes())
    records = [rec._replace(payload=rec.payload[:-3] + b"X" + rec.payload[-2:])
               if rec.kind == fm.TOTAL and b'"mp_ops"' in rec.payload else rec for rec in parsed.records]
    archive.write_bytes(fm.rebuild(parsed, records))
    without_ops = {k: v for k, v in expected_count_totals({"a": 100}).items() if k[0] != "mp_ops_total"}

    collector, text, _ = serve(mp.path, compact=False)
    assert_counters(text, without_ops)
    assert skipped_paths(collector.skipped) == [str(archive)] and "checksum" in reasons(collector.skipped, archive)

    mp.run("count", n=5, label="b")
    result = compact(str(mp.path))
    assert result.absorbed == 1 and skipped_paths(result.skipped) == [str(archive)]
    assert not list(mp.path.glob("archive.fm.corrupt-*"))
    collector, text, _ = serve(mp.path)
    assert collector.skipped == []
    expected = expected_count_totals({"a": 100, "b": 5})
    expected[("mp_ops_total", ())] = 5.0   # the archive's 100 were lost with their record
    assert_counters(text, expected)


# -- 8. the version 2 enum word, and version 1 files ------------------------------------

def test_enum_words_of_both_versions_decode_to_index_and_wall_clock():
    """Version 2 stores ``index | stamp_ms << 16`` (65,536 states, good for
    millennia); version 1, still read, ``index | stamp_us << 12``."""
    assert (_format.VERSION, _format.STATE_BITS, _format.MAX_STATES) == (2, 16, 65536)
    assert _format.decode_word(1, fm.word(1, 4095, fm.NS_2024)) == (4095, fm.NS_2024)
    assert _format.decode_word(2, fm.word(2, 65535, fm.NS_2100 + 999_999)) == (65535, fm.NS_2100)
    assert _format.decode_word(2, 0) == (0, 0)


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
                   fm.counter(0, "ops"), fm.Record(fm.RETIRE, 0, b""), fm.counter(2, "ops"),
                   fm.enum(1, "phase", STATES)], version=1)
    v2 = fm.build([fm.words(0, {0: fm.word(2, 1, fm.NS_2100)}),
                   fm.chunk(0, {1: 4.0, 2: 5.0}),
                   fm.enum(0, "phase", STATES), fm.counter(1, "ops"), fm.counter(2, "ops")],
                  version=2)
    write(path / fake_process_name(), v1)
    write(path / fake_process_name(), v2)

    def phase_and_ops() -> tuple:
        collector, text, _ = serve(path, enum_mode="mostrecent")
        assert collector.skipped == []
        return enum_states(text, "phase"), value(text, "ops_total")

    assert phase_and_ops() == ({(): "busy"}, 12)
    assert fm_files(path) == ["archive.fm"]
    archive = fm.parse((path / "archive.fm").read_bytes())
    assert archive.fields["version"] == 2
    [last] = [rec for rec in archive.records if rec.kind == fm.LAST]
    assert struct.unpack_from("=q", last.payload, 4)[0] == fm.word(2, 1, fm.NS_2100)

    write(path / fake_process_name(), fm.build(
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
    write(path / fake_process_name(), fm.build([fm.words(0, {0: fm.word(2, 0, fm.NS_2024 - 10**9),
                                                             1: fm.word(2, 1, newer)}),
                                                fm.chunk(0, {2: 1.0}), fm.enum(0, "phase", STATES),
                                                fm.enum(1, "role", STATES), fm.counter(2, "ops")]))
    collector, text, _ = serve(path, compact=False, enum_mode="mostrecent")
    assert collector.skipped == []
    assert (value(text, "ops_total"), enum_states(text, "phase")) == (11, {(): "done"})

    result = compact(str(path))
    assert (result.absorbed, result.skipped) == (1, [])
    archive = fm.parse((path / "archive.fm").read_bytes())
    assert archive.fields["version"] == 2
    lasts = [struct.unpack_from("=q", rec.payload, 4)[0] for rec in archive.records if rec.kind == fm.LAST]
    assert sorted(lasts) == sorted([fm.word(2, 2, fm.NS_2024), fm.word(2, 1, newer)])
    collector, text, _ = serve(path, enum_mode="mostrecent")
    assert collector.skipped == []
    assert value(text, "ops_total") == 11
    assert (enum_states(text, "phase"), enum_states(text, "role")) == ({(): "done"}, {(): "busy"})


# -- 9. strings that are not valid UTF-8 -----------------------------------------------------

def test_strings_that_are_not_utf8_are_refused_before_anything_is_written(mp):
    """In multiprocess mode a label value, help text or enum state holding a
    lone surrogate (``os.fsdecode(b"\\xff")``) raises ValueError naming it,
    before a slot is allocated or a record written; the scrape keeps working."""
    msg = mp.run("surrogates")
    for what, error in msg["errors"].items():
        assert error is not None and error.startswith("ValueError: "), (what, error)
        assert "\\udcff'" in error and "not valid UTF-8" in error, (what, error)
    assert msg["errors"]["label"].startswith("ValueError: label value '\\udcff'")
    assert msg["after"] == msg["before"]
    data = only_file(mp.path).read_bytes()
    assert b"udcff" not in data and b"mp_bad_" not in data
    collector, text, _ = serve(mp.path)
    assert collector.skipped == []
    assert value(text, "mp_work_total", worker="ok") == 2


def test_in_process_mode_accepts_any_label_value(impl, registry):
    """Without multiprocess mode nothing is encoded: a lone surrogate is a
    label value like any other, as with prometheus_client."""
    bad = os.fsdecode(b"\xff")
    c = impl.Counter("surrogate", "Help " + bad, labelnames=["k"], registry=registry)
    c.labels(bad).inc()
    assert c.labels(bad)._value.get() == 1


def test_metadata_that_is_not_utf8_skips_its_series_only(tmp_path):
    """Files written before the refusal existed hold ``\\udcff`` escapes in
    their metadata: those series are skipped and reported (the endpoint would
    otherwise fail to encode every scrape), the rest is served, and
    compaction keeps them out of the archive."""
    path = tmp_path / "mp"
    path.mkdir()
    bad = os.fsdecode(b"\xff")
    file = write(path / fake_process_name(), fm.build([
        fm.words(0, {2: 0}), fm.chunk(0, {0: 1.0, 1: 2.0, 3: 4.0}),
        fm.counter(0, "good"),
        fm.counter(1, "bad_value", labelnames=["k"], labelvalues=[bad]),
        fm.enum(2, "bad_state", ["ok", bad]),
        fm.counter(3, "bad_doc", doc="Help " + bad),
    ]))
    for compacting in (False, True):
        collector, text, _ = serve(path, compact=compacting, enum_mode="mostrecent")
        assert value(text, "good_total") == 1
        assert "bad_" not in text
        if not compacting:
            assert skipped_paths(collector.skipped) == [str(file)] and len(collector.skipped) == 3
            assert "UTF-8" in reasons(collector.skipped, file)
    collector, text, _ = serve(path)
    assert collector.skipped == [] and fm_files(path) == ["archive.fm"]
    assert value(text, "good_total") == 1


# -- 11. a lock that cannot be taken, metadata the parser cannot take -------------------------

def test_a_lock_that_is_a_directory_is_reported_and_the_scrape_served(mp):
    """``.lock`` is a directory: the scrape reads without the lock and
    reports it, compaction does not run (reported), nothing raises."""
    mp.run("count", n=10, label="w")
    lock = mp.path / ".lock"
    lock.mkdir()
    collector, text, _ = serve(mp.path)
    assert_counters(text, expected_count_totals({"w": 10}))
    assert skipped_paths(collector.skipped) == [str(lock)]
    result = bounded(lambda: compact(str(mp.path)))
    assert result.ran is False and skipped_paths(result.skipped) == [str(lock)]
    assert len(fm_files(mp.path)) == 1 and "archive.fm" not in fm_files(mp.path)


def test_metadata_nested_too_deep_for_the_parser_skips_its_slot_only(tmp_path):
    """A metadata record with a valid checksum whose JSON nests deeper than
    the parser's recursion limit skips that slot, reported; the file's other
    series are served and folded."""
    path = tmp_path / "mp"
    path.mkdir()
    file = write(path / fake_process_name(), fm.build([
        fm.chunk(0, {0: 3.0, 1: 4.0}), fm.counter(0, "good"),
        fm.Record(fm.COUNTER, 1, fm.checked(b"[" * 200_000 + b"]" * 200_000)),
    ]))
    collector, text, _ = serve(path, compact=False)
    assert value(text, "good_total") == 3
    assert skipped_paths(collector.skipped) == [str(file)]
    collector, text, _ = serve(path)
    assert fm_files(path) == ["archive.fm"] and not list(path.glob("*.corrupt"))
    assert value(text, "good_total") == 3


# -- 12. entries that cannot be opened --------------------------------------------------------

def _make_entry(kind: str, target: Path) -> None:
    if kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(target))
        sock.close()
    elif kind == "symlink-loop":
        other = target.with_name("loop-" + target.name)
        os.symlink(other, target)
        os.symlink(target, other)
    elif kind == "directory":
        target.mkdir()
    elif kind == "unreadable":
        target.write_bytes(b"\0" * 4096)
        target.chmod(0)
    else:
        raise AssertionError(kind)


def _opens_mode_000_files(tmp_path: Path) -> bool:
    """Whether this process can open a mode 000 file (root with CAP_DAC_OVERRIDE)."""
    probe = tmp_path / "probe"
    probe.write_bytes(b"")
    probe.chmod(0)
    try:
        os.close(os.open(probe, os.O_RDONLY))
        return True
    except PermissionError:
        return False
    finally:
        probe.unlink()


@pytest.mark.parametrize("kind", ["socket", "symlink-loop", "directory", "unreadable"])
def test_entries_that_cannot_be_opened_do_not_stop_compaction(mp, kind, tmp_path):
    """A socket, a symlink loop, a directory or an unreadable file named
    ``*.fm`` is skipped and reported by scrapes and compaction, and left where
    it is; the exited worker's file is still folded."""
    if kind == "unreadable" and _opens_mode_000_files(tmp_path):
        pytest.skip("this process opens mode 000 files (root: run it under "
                    "capsh --drop=cap_dac_override,cap_dac_read_search)")
    mp.run("count", n=20, label="w")
    entry = mp.path / "x.fm"   # short: a socket's path has a length limit
    _make_entry(kind, entry)
    before = {p.name: stat.S_IFMT(p.lstat().st_mode) for p in mp.path.iterdir() if p.name != ".lock"}

    result = bounded(lambda: compact(str(mp.path)))
    assert (result.ran, result.absorbed) == (True, 1)
    assert str(entry) in skipped_paths(result.skipped)
    assert not list(mp.path.glob("*.corrupt"))
    after = {p.name: stat.S_IFMT(p.lstat().st_mode) for p in mp.path.iterdir() if p.name != ".lock"}
    assert {n: m for n, m in after.items() if n != "archive.fm"} == {
        n: m for n, m in before.items() if not stat.S_ISREG(m) or n == entry.name}

    collector, text, _ = serve(mp.path)
    assert_counters(text, expected_count_totals({"w": 20}))
    assert str(entry) in skipped_paths(collector.skipped)


# -- 13. copies of a process file ---------------------------------------------------------------

def test_a_copy_of_an_exited_process_file_counts_once(mp):
    """Copies of a file under other names (same uid in the header) are
    counted once, the one named after its header, and reported; compaction
    folds it once and deletes the copies with it."""
    mp.run("count", n=30, label="w")
    original = only_file(mp.path)
    copies = [mp.path / "copy.fm", mp.path / fake_process_name()]
    for copy in copies:
        shutil.copyfile(original, copy)
    expected = expected_count_totals({"w": 30})

    collector, text, _ = serve(mp.path, compact=False)
    assert_counters(text, expected)
    assert skipped_paths(collector.skipped) == sorted(map(str, copies))
    assert all("same uid" in reason for _, reason in collector.skipped)

    result = compact(str(mp.path))
    assert (result.absorbed, result.removed) == (1, 3)
    assert fm_files(mp.path) == ["archive.fm"]
    collector, text, _ = serve(mp.path)
    assert collector.skipped == []
    assert_counters(text, expected)


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


# -- 15. capacities the file system cannot hold --------------------------------------------------

def _import_in_child(implementation: str, tmp_path: Path, code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=worker_env(implementation, **env),
                          capture_output=True, text=True, timeout=DEADLINE, cwd=tmp_path)


def test_a_capacity_beyond_the_limit_names_the_variable(implementation, tmp_path):
    """FASTMETRICS_MULTIPROC_CAPACITY=2**62 fails the import with a
    ValueError naming the variable, its value and the limit (it used to be a
    bare ``OSError: File too large``); so does ``enable(capacity=2**62)``.
    Nothing is left in the directory."""
    path = tmp_path / "mp"
    huge = str(1 << 62)
    proc = _import_in_child(implementation, tmp_path, "import fastmetrics",
                            **{multiprocess.ENV_DIR: str(path), multiprocess.ENV_CAPACITY: huge})
    assert proc.returncode != 0
    last_line = proc.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ValueError: ") and multiprocess.ENV_CAPACITY in last_line and huge in last_line
    assert "1 TiB" in last_line
    proc = _import_in_child(implementation, tmp_path, (
        "from fastmetrics import multiprocess\n"
        "try:\n"
        f"    multiprocess.enable({str(path)!r}, capacity={huge})\n"
        "except ValueError as e:\n"
        "    print(e)\n"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"capacity={huge} ") and "1 TiB" in proc.stdout
    assert not path.exists() or not any(path.iterdir())


def test_a_capacity_the_file_system_refuses_names_the_variable(implementation, tmp_path):
    """Under a file size limit (RLIMIT_FSIZE 1 MiB) the default 64 MiB file
    cannot be reserved: the import fails with a ValueError naming the
    variable and the capacity, not a bare OSError, and no file is left."""
    path = tmp_path / "mp"
    code = ("import resource\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n"
            "import fastmetrics\n")
    proc = _import_in_child(implementation, tmp_path, code, **{multiprocess.ENV_DIR: str(path)})
    assert proc.returncode != 0
    last_line = proc.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ValueError: ") and multiprocess.ENV_CAPACITY in last_line, proc.stderr
    assert str(multiprocess.DEFAULT_CAPACITY) in last_line
    assert sorted(p.name for p in path.iterdir()) == []
