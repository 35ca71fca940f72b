"""Reading a directory whatever it holds: invalid files and series, special
entries (FIFOs, sockets, symlink loops, unreadable files), copies, damaged
archives, extreme values, metadata the exporter cannot serve.

Each case reproduces a finding (issue 11 audit among them).  Writes happen in
real worker processes (``_mp_worker.py``) where the writer is under test, and
in files built by hand (``_fmfile.py``) where the content must be one no
current writer produces.  Every operation that could hang runs in a thread
with a deadline (``_expose.bounded``).
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Dict, Tuple

import _fmfile as fm
import pytest
from _support import skip_or_fail
from _expose import LOGGER, STATES, assert_counters, bounded, enum_states, expected_count_totals, fm_files
from _expose import only_file, reasons, scrape, serve, skipped_paths, value, write
from prometheus_client import CollectorRegistry, generate_latest

from fastmetrics.multiprocess import MultiProcessCollector, _compact, _reader, compact, read_directory
from fastmetrics.multiprocess import _format as fmt

pytest.importorskip("fcntl", reason="multiprocess mode needs POSIX (fcntl.flock)")


def _invalid_variants(data: bytes) -> Dict[str, Tuple[bytes, str]]:
    """Name -> (content, a word of the reason) for every kind of invalid file,
    each made from a valid file with one defect."""
    base = fm.valid_copy(data)
    used = fm.used_of(base)
    return {
        "empty": (b"", "shorter than the header"),
        "short-header": (bytes(base[:100]), "shorter than the header"),
        "short-used": (bytes(base[:used - 8]), "in use"),
        "random": (os.urandom(4096), "magic"),
        "foreign-magic": (b"PROMETHE" + bytes(base[8:]), "magic"),
        "version": (bytes(fm.valid_copy(base, version=3)), "unsupported version 3"),
    }


def _damaged_series_variants(data: bytes) -> Dict[str, Tuple[bytes, str]]:
    """Name -> (content, a word of the reason) for valid files (new uid) whose
    ``mp_ops`` series alone is damaged: its metadata, or its count."""
    base = fm.valid_copy(data)
    meta = bytearray(base)
    [(start, length)] = [(s, len(rec.payload)) for _, s, rec in fm.walk(base) if rec.kind == fmt.REC_COUNTER
                         and b'"mp_ops"' in rec.payload]
    meta[start + 4 + length // 2] ^= 0x20   # inside the JSON text
    variants = {"metadata": (bytes(meta), "checksum")}
    for name, bad in (("nan", math.nan), ("negative", -5.0)):
        damaged = fm.valid_copy(data)
        offsets = fm.counter_value_offsets(damaged, "mp_ops")
        assert offsets
        for off in offsets:
            fmt.F64.pack_into(damaged, off, bad)
        variants[name] = (bytes(damaged), "invalid count")
    return variants


def test_invalid_files_are_skipped_reported_and_set_aside(mp, caplog):
    """Next to a real worker's file: a valid copy (counted) and one file per
    defect (empty, shorter than the header, shorter than ``used``, random
    bytes, other magic, unsupported version with a good CRC), and files whose
    ``mp_ops`` series alone is damaged (metadata, NaN and negative counts).  A
    scrape does not raise, skips and reports each invalid file and damaged
    series once (``collector.skipped`` and a warning); its totals are those
    of the valid files and series.  Compaction renames the invalid dead files
    ``*.corrupt``, folds the others without their damaged series, and writes
    an archive that still reads exactly."""
    mp.run("count", n=1000, label="w")
    [original] = fm_files(mp.path)
    data = (mp.path / original).read_bytes()
    (mp.path / fm.fake_process_name()).write_bytes(fm.valid_copy(data))
    invalid: Dict[str, str] = {}   # path -> expected reason word
    for content, reason in _invalid_variants(data).values():
        path = mp.path / fm.fake_process_name()
        path.write_bytes(content)
        invalid[str(path)] = reason
    damaged: Dict[str, str] = {}
    for content, reason in _damaged_series_variants(data).values():
        path = mp.path / fm.fake_process_name()
        path.write_bytes(content)
        damaged[str(path)] = reason
    expected = expected_count_totals({"w": 1000})
    # the original, its valid copy, and the damaged files but for mp_ops
    expected = {key: (2 if key[0] == "mp_ops_total" else 2 + len(damaged)) * v for key, v in expected.items()}
    reported = {**invalid, **damaged}

    caplog.set_level("WARNING", logger=LOGGER)
    registry = CollectorRegistry()
    collector = MultiProcessCollector(registry, str(mp.path), compact=False)
    for _ in range(2):   # reported on every scrape, logged once
        assert_counters(generate_latest(registry).decode(), expected)
        assert sorted(path for path, _ in collector.skipped) == sorted(reported)
        for path, reason in collector.skipped:
            assert reported[path] in reason, (path, reason)
    warnings = [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelname == "WARNING"]
    for path in reported:
        assert sum(path in message for message in warnings) == 1, (path, warnings)

    collector, text = scrape(mp.path)   # compaction on
    assert_counters(text, expected)
    assert sorted(path for path, _ in collector.skipped) == sorted(reported)
    for path, reason in collector.skipped:
        assert ("moved to" if path in invalid else "left out of the archive") in reason, (path, reason)
    assert fm_files(mp.path) == ["archive.fm"]
    assert sorted(p.name for p in mp.path.glob("*.corrupt")) == sorted(
        os.path.basename(path) + ".corrupt" for path in invalid)

    snapshot = read_directory(str(mp.path))
    assert snapshot.skipped == [] and snapshot.files == 1   # the archive alone, valid
    collector, text = scrape(mp.path)
    assert collector.skipped == []
    assert_counters(text, expected)


def test_a_corrupt_archive_is_reported_and_replaced(mp, caplog):
    """An archive with a damaged header is skipped and reported, never
    raised; the next compaction moves it aside (its counts are lost, as the
    docs say) and folds newer files into a fresh archive."""
    mp.run("count", n=100, label="a")
    assert compact(str(mp.path)).absorbed == 1
    archive = mp.path / "archive.fm"
    data = bytearray(archive.read_bytes())
    data[24] ^= 0x20   # created_ns
    archive.write_bytes(data)

    caplog.set_level("WARNING", logger=LOGGER)
    collector, text = scrape(mp.path, compact=False)
    assert collector.skipped == [(str(archive), "header checksum mismatch")]
    assert value(text, "mp_ops_total") is None
    assert any(str(archive) in r.getMessage() for r in caplog.records if r.name == LOGGER)

    mp.run("count", n=5, label="b")
    result = compact(str(mp.path))
    assert result.absorbed == 1 and [p for p, _ in result.skipped] == [str(archive)]
    assert len(list(mp.path.glob("archive.fm.corrupt-*"))) == 1
    collector, text = scrape(mp.path)
    assert collector.skipped == []
    assert_counters(text, expected_count_totals({"b": 5}))


def test_a_reader_rereads_a_file_whose_header_changed_in_place(tmp_path):
    """A Reader remembers files by (path, device, inode) between reads.  A
    file rewritten in place with another uid (what a reused inode looks like)
    is walked again, never answered from the old walk; compaction gives every
    archive a new uid for that reason."""
    meta = fmt.Meta("counter", "mp_ops", "Operations.", "", (), (), ())
    path = str(tmp_path / "archive.fm")

    def archive_bytes(total: float) -> bytes:
        _compact.write_archive(path, {meta.key: total}, {}, {meta.key: meta}, set(), os.urandom(16), 1)
        return Path(path).read_bytes()

    first, second = archive_bytes(1.0), archive_bytes(2.0)
    assert len(first) == len(second)
    with open(path, "r+b") as f:
        f.write(first)
    reader = _reader.Reader()
    try:
        assert reader.read(path).counters == {meta.key: 1.0}
        inode = os.stat(path).st_ino
        with open(path, "r+b") as f:   # same inode, same size, new header and total
            f.write(second)
        assert os.stat(path).st_ino == inode
        assert reader.read(path).counters == {meta.key: 2.0}
    finally:
        reader.close()


def test_a_fifo_named_like_a_process_file_is_skipped_not_waited_on(mp):
    """A FIFO named ``*.fm`` next to an exited worker's file: a scrape returns
    (it used to block opening the FIFO), serves the worker's counts and
    reports the FIFO.  Compaction folds the worker's file and leaves the FIFO
    alone; a FIFO named like a stale temp file (old, never locked) does not
    block it either."""
    mp.run("count", n=50, label="w")
    fifo = mp.path / fm.fake_process_name()
    os.mkfifo(fifo)
    temp_fifo = mp.path / fmt.temp_name(fm.fake_process_name())
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
    totals = [fm.value_of(rec)
              for rec in fm.parse((mp.path / "archive.fm").read_bytes()).records if rec.kind == fmt.REC_TOTAL]
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
    bad = write(path / fmt.process_file_name(4_000_001, uid), _file_with_bad_values(uid))
    other_uid = os.urandom(16)
    write(path / fmt.process_file_name(4_000_002, other_uid),
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
               if rec.kind == fmt.REC_TOTAL and b'"mp_ops"' in rec.payload else rec for rec in parsed.records]
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


def test_metadata_that_is_not_utf8_skips_its_series_only(tmp_path):
    """Files written before the refusal existed hold ``\\udcff`` escapes in
    their metadata: those series are skipped and reported (the endpoint would
    otherwise fail to encode every scrape), the rest is served, and
    compaction keeps them out of the archive."""
    path = tmp_path / "mp"
    path.mkdir()
    bad = os.fsdecode(b"\xff")
    file = write(path / fm.fake_process_name(), fm.build([
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


def test_metadata_nested_too_deep_for_the_parser_skips_its_slot_only(tmp_path):
    """A metadata record with a valid checksum whose JSON nests deeper than
    the parser's recursion limit skips that slot, reported; the file's other
    series are served and folded."""
    path = tmp_path / "mp"
    path.mkdir()
    file = write(path / fm.fake_process_name(), fm.build([
        fm.chunk(0, {0: 3.0, 1: 4.0}), fm.counter(0, "good"),
        fm.Record(fmt.REC_COUNTER, 1, fmt.checked(b"[" * 200_000 + b"]" * 200_000)),
    ]))
    collector, text, _ = serve(path, compact=False)
    assert value(text, "good_total") == 3
    assert skipped_paths(collector.skipped) == [str(file)]
    collector, text, _ = serve(path)
    assert fm_files(path) == ["archive.fm"] and not list(path.glob("*.corrupt"))
    assert value(text, "good_total") == 3


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


_FILE_CAPS = "-dac_override,-dac_read_search"
_RERUN = "FASTMETRICS_TEST_WITHOUT_FILE_CAPS"


def _rerun_without_file_capabilities(request: pytest.FixtureRequest) -> None:
    """Run this test again in a child pytest without the capabilities that let
    root open a mode 000 file (``setpriv`` drops them from the bounding and
    inheritable sets, so the child's exec does not get them); fail if it does
    not pass there."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        skip_or_fail("an unreadable file needs a process without CAP_DAC_OVERRIDE: "
                     "install util-linux (setpriv), or run the tests as a user other than root")
    if os.environ.get(_RERUN):
        pytest.fail("mode 000 files still open without CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH")
    proc = subprocess.run(
        [setpriv, "--bounding-set", _FILE_CAPS, "--inh-caps", _FILE_CAPS, sys.executable, "-m", "pytest",
         "-q", "-p", "no:cacheprovider", request.node.nodeid],
        cwd=str(request.config.rootpath), env={**os.environ, _RERUN: "1"}, capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.parametrize("kind", ["socket", "symlink-loop", "directory", "unreadable"])
def test_entries_that_cannot_be_opened_do_not_stop_compaction(mp, kind, tmp_path, request):
    """A socket, a symlink loop, a directory or an unreadable file named
    ``*.fm`` is skipped and reported by scrapes and compaction, and left where
    it is; the exited worker's file is still folded.  As root, the unreadable
    case runs in a child without the capabilities that would read it anyway."""
    if kind == "unreadable" and _opens_mode_000_files(tmp_path):
        _rerun_without_file_capabilities(request)
        return
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


def test_a_copy_of_an_exited_process_file_counts_once(mp):
    """Copies of a file under other names (same uid in the header) are
    counted once, the one named after its header, and reported; compaction
    folds it once and deletes the copies with it."""
    mp.run("count", n=30, label="w")
    original = only_file(mp.path)
    copies = [mp.path / "copy.fm", mp.path / fm.fake_process_name()]
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
