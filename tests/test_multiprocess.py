"""Multiprocess mode, proven across real processes.

Every write happens in fresh subprocesses (``tests/_mp_worker.py``) started
with ``FASTMETRICS_MULTIPROC_DIR`` set (and ``FASTMETRICS_NO_EXTENSIONS=1`` for
the pure-Python twin); each worker checks it runs the implementation asked for.
This process only reads and folds the directory (``MultiProcessCollector``,
``read_directory``, ``compact``), as a separate exporter would, and never
enables the mode itself.  Every wait is bounded.
"""

from __future__ import annotations

import json
import math
import mmap
import multiprocessing
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from fastmetrics import multiprocess
from fastmetrics.multiprocess import _compact, _format, _reader
from fastmetrics.multiprocess import MultiProcessCollector, compact, read_directory

fcntl = pytest.importorskip("fcntl", reason="multiprocess mode needs POSIX (fcntl.flock)")

WORKER = Path(__file__).with_name("_mp_worker.py")
TIMEOUT = 120.0
STATES = ["idle", "busy", "done"]
LOGGER = "fastmetrics.multiprocess"


@pytest.fixture(params=[pytest.param("cython", id="c", marks=pytest.mark.c_extension),
                        pytest.param("python", id="python")])
def implementation(request: pytest.FixtureRequest) -> str:
    """The ``fastmetrics.implementation`` every worker of the test must run."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def _pytest_process_stays_out_of_multiprocess_mode():
    assert multiprocess.directory() is None
    yield
    assert multiprocess.directory() is None


# -- subprocess harness ----------------------------------------------------------

class Worker:
    """One ``_mp_worker.py`` subprocess: JSON lines out, JSON commands in."""

    def __init__(self, implementation: str, path: Path, scenario: str, args: dict,
                 env_dir: bool, log: Path, extra_env: Optional[Dict[str, str]] = None) -> None:
        env = {k: v for k, v in os.environ.items()
               if k not in (multiprocess.ENV_DIR, multiprocess.ENV_CAPACITY, "FASTMETRICS_NO_EXTENSIONS")}
        if implementation == "python":
            env["FASTMETRICS_NO_EXTENSIONS"] = "1"
        if env_dir:
            env[multiprocess.ENV_DIR] = str(path)
        env.update(extra_env or {})
        self.log = log
        with open(log, "wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, str(WORKER), scenario, implementation, json.dumps(args)],
                env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, bufsize=0)
        self.pid = self.proc.pid
        self._buf = b""

    def _fail(self, why: str) -> None:
        pytest.fail(f"worker {self.pid}: {why}\n--- stderr ---\n{self.log.read_text(errors='replace')}")

    def read(self, timeout: float = TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._fail("no answer in time")
            if select.select([fd], [], [], remaining)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.proc.wait(timeout=TIMEOUT)
                    self._fail(f"exited with {self.proc.returncode} before answering")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)  # type: ignore[no-any-return]

    def expect(self, event: str) -> dict:
        msg = self.read()
        if msg.get("event") != event:
            self._fail(f"expected {event!r}, got {msg!r}")
        return msg

    def send(self, **cmd) -> None:
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()

    def call(self, op: str, **cmd):
        """Run one command in the worker; its result."""
        self.send(op=op, **cmd)
        reply = self.read()
        if not reply.get("ok"):
            self._fail(f"{op} {cmd} failed: {reply}")
        return reply["result"]

    def wait(self, expect_rc: Optional[int] = 0) -> int:
        try:
            rc = self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT)
            self._fail("did not exit in time")
        if expect_rc is not None and rc != expect_rc:
            self._fail(f"exit status {rc}, expected {expect_rc}")
        return rc

    def exit(self) -> None:
        self.call("exit")
        self.wait()

    def kill(self) -> None:
        """SIGKILL, and reap (the kernel has then dropped the file's flock)."""
        os.kill(self.pid, signal.SIGKILL)
        assert self.wait(expect_rc=None) == -signal.SIGKILL

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT)
        for stream in (self.proc.stdin, self.proc.stdout):
            stream.close()


class Cluster:
    """The processes of one test, sharing one multiprocess directory."""

    def __init__(self, implementation: str, tmp_path: Path) -> None:
        self.implementation = implementation
        self.tmp = tmp_path
        self.path = tmp_path / "mp"
        self.path.mkdir()
        self.workers: List[Worker] = []

    def start(self, scenario: str, env_dir: bool = True, extra_env: Optional[Dict[str, str]] = None,
              **args) -> Worker:
        log = self.tmp / f"worker-{len(self.workers)}-{scenario}.stderr"
        worker = Worker(self.implementation, self.path, scenario, args, env_dir, log, extra_env)
        self.workers.append(worker)
        return worker

    def serve(self) -> Worker:
        """A worker driven command by command (see ``_handle`` in the worker)."""
        worker = self.start("serve")
        worker.expect("ready")
        return worker

    def run(self, scenario: str, env_dir: bool = True, extra_env: Optional[Dict[str, str]] = None,
            **args) -> dict:
        """Run a one-shot scenario to a normal exit; its "done" message."""
        worker = self.start(scenario, env_dir, extra_env, **args)
        msg = worker.expect("done")
        worker.wait()
        return msg

    def close(self) -> None:
        for worker in self.workers:
            worker.close()


@pytest.fixture
def mp(implementation: str, tmp_path: Path):
    cluster = Cluster(implementation, tmp_path)
    try:
        yield cluster
    finally:
        cluster.close()


# -- reading helpers -------------------------------------------------------------

Labels = Tuple[Tuple[str, str], ...]


def scrape(path: Path, **kwargs) -> Tuple[MultiProcessCollector, str]:
    """What an exporter serves: a fresh registry holding only the collector."""
    registry = CollectorRegistry()
    collector = MultiProcessCollector(registry, str(path), **kwargs)
    return collector, generate_latest(registry).decode()


def samples(text: str) -> Dict[Tuple[str, Labels], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text: str, name: str, **labels: str) -> Optional[float]:
    return samples(text).get((name, tuple(sorted(labels.items()))))


def enum_states(text: str, name: str) -> Dict[Labels, str]:
    """Series of an enum -> its current state; each series must have exactly
    one state at 1 and every other state at 0."""
    series: Dict[Labels, Dict[str, float]] = {}
    for (sample, labels), v in samples(text).items():
        if sample == name:
            key = tuple((k, x) for k, x in labels if k != name)
            series.setdefault(key, {})[dict(labels)[name]] = v
    current = {}
    for key, states in series.items():
        assert sorted(states) == sorted(STATES), (key, states)
        on = [s for s, v in states.items() if v == 1]
        assert len(on) == 1 and sum(states.values()) == 1, (key, states)
        current[key] = on[0]
    return current


def fm_files(path: Path) -> List[str]:
    return sorted(p.name for p in path.iterdir() if p.name.endswith(".fm"))


def expected_count_totals(workers: Dict[str, int]) -> Dict[Tuple[str, Labels], float]:
    """Totals of ``count`` workers (label -> n), as the worker defines them."""
    expected = {("mp_ops_total", ()): float(sum(workers.values())),
                ("mp_bytes_total", (("code", "200"), ("direction", "in"))): 3.0 * len(workers),
                ("mp_bytes_total", (("code", "500"), ("direction", "out"))): 0.5 * len(workers)}
    for label, n in workers.items():
        expected[("mp_work_total", (("worker", label),))] = float(n)
    return expected


def assert_counters(text: str, expected: Dict[Tuple[str, Labels], float]) -> None:
    got = {k: v for k, v in samples(text).items() if k[0].endswith("_total")}
    assert got == expected


# -- file surgery (the layout documented in multiprocess/_format.py) -------------

HEADER = struct.Struct("=8sIIqqQ16sII")
HEADER_FIELDS = ("magic", "version", "flags", "pid", "created_ns", "capacity", "uid", "order", "crc")
KIND_CHUNK, KIND_WORDS, KIND_COUNTER = 1, 2, 3


def used_of(data: bytes) -> int:
    return struct.unpack_from("=q", data, 64)[0]  # type: ignore[no-any-return]


def records(data: bytes):
    """(kind, arg, payload offset, payload length) of each published record."""
    off, used = 128, used_of(data)
    while off < used:
        kind, length, arg = struct.unpack_from("=IIq", data, off)
        if kind == 0:
            return
        start = off + (128 if kind in (KIND_CHUNK, KIND_WORDS) else 16)
        yield kind, arg, start, length
        off = (start + length + 127) & ~127


def reheader(data: bytes, **fields) -> bytearray:
    """``data`` with header fields replaced and the header CRC recomputed."""
    values = dict(zip(HEADER_FIELDS, HEADER.unpack_from(data)))
    values.update(fields)
    out = bytearray(data)
    HEADER.pack_into(out, 0, *values.values())
    struct.pack_into("=I", out, 60, zlib.crc32(bytes(out[:60])))
    return out


def counter_value_offsets(data: bytes, name: str) -> List[int]:
    """Offsets of the float64s holding counter ``name``'s partial sums."""
    recs = list(records(data))
    slots = [arg for kind, arg, start, length in recs
             if kind == KIND_COUNTER and json.loads(data[start + 4:start + length])["name"] == name]
    return [start + 8 * (slot & 511) for slot in slots
            for kind, arg, start, _ in recs if kind == KIND_CHUNK and arg == slot >> 9]


def fake_process_name() -> str:
    return f"{4_000_000 + int.from_bytes(os.urandom(2), 'little')}-{os.urandom(16).hex()}.fm"


def valid_copy(data: bytes) -> bytearray:
    """A copy that is a valid file of another (dead) process: new uid, only the
    used bytes."""
    return reheader(data[:used_of(data)], uid=os.urandom(16))


# -- 1. multiprocessing pools ----------------------------------------------------

@pytest.mark.parametrize("method, n, via_enable", [
    ("fork", 250_000, False),
    ("forkserver", 250_000, False),
    ("spawn", 250_000, True),
])
def test_pool_increments_are_exact_in_the_scrape(mp, method, n, via_enable):
    """A Pool of 4 processes, one task of n increments each: the collector's
    scrape has the exact totals of an unlabelled and a labelled counter.  Each
    pool process ran the requested implementation in multiprocess mode with a
    file of its own.  Spawn runs with enable(path) instead of the environment:
    enable exports the directory so spawned children follow."""
    if method not in multiprocessing.get_all_start_methods():
        pytest.skip(f"no {method} start method here")
    msg = mp.run("pool", env_dir=not via_enable, via_enable=via_enable, method=method, procs=4, n=n,
                 path=str(mp.path))
    for result in msg["results"]:
        assert result["impl"] == mp.implementation
        assert result["dir"] == str(mp.path)
        assert result["pid"] != msg["pid"] and len(result["files"]) == 1
    _, text = scrape(mp.path)
    assert value(text, "mp_ops_total") == 4 * n
    assert value(text, "mp_bytes_total", direction="in", code="0") == (1 + 3) * n   # tasks 0 and 2
    assert value(text, "mp_bytes_total", direction="in", code="1") == (2 + 4) * n   # tasks 1 and 3


# -- 2. SIGKILL ----------------------------------------------------------------------

def test_sigkill_mid_run_keeps_every_completed_increment(mp, tmp_path):
    """A worker runs ``inc(); progress = i + 1`` (progress in a shared mapping)
    and is SIGKILLed mid-loop while two other workers run to a normal exit: its
    total is progress or progress + 1 (killed between the two stores), and the
    others' counts are exact."""
    progress_file = tmp_path / "progress"
    progress_file.write_bytes(bytes(8))
    with open(progress_file, "r+b") as f:
        progress = memoryview(mmap.mmap(f.fileno(), 8)).cast("q")
    n = 50_000
    others = [mp.start("count", n=n, label=f"w{k}") for k in range(2)]
    victim = mp.start("spin", label="victim", progress=str(progress_file), limit=10**10)
    deadline = time.monotonic() + TIMEOUT
    while progress[0] < 20_000:
        assert victim.proc.poll() is None, victim.log.read_text()
        assert time.monotonic() < deadline, "the victim made no progress"
        time.sleep(0.001)
    victim.kill()
    done = progress[0]
    for worker in others:
        worker.expect("done")
        worker.wait()

    collector, text = scrape(mp.path)
    assert collector.skipped == []
    assert done <= value(text, "mp_work_total", worker="victim") <= done + 1
    assert 2 * n + done <= value(text, "mp_ops_total") <= 2 * n + done + 1
    assert value(text, "mp_work_total", worker="w0") == value(text, "mp_work_total", worker="w1") == n
    assert fm_files(mp.path) == ["archive.fm"]   # the killed worker's file was folded too


def test_sigkill_after_n_increments_counts_exactly_n(mp):
    """A worker finishes its increments (three threads, so three chunks),
    answers, and is SIGKILLed while idle: exactly what it did is counted."""
    worker = mp.serve()
    worker.call("inc", metric="ops", times=10_000, threads=3)
    worker.call("inc", metric="work", labels=["victim"], amount=2.5, times=1000)
    assert worker.call("value", metric="ops") == 30_000
    worker.kill()
    collector, text = scrape(mp.path)
    assert collector.skipped == []
    assert value(text, "mp_ops_total") == 30_000
    assert value(text, "mp_work_total", worker="victim") == 2500


# -- 3. process churn ----------------------------------------------------------------

def _churn_totals(children: int) -> Dict[Tuple[str, Labels], float]:
    expected = {("mp_ops_total", ()): float(sum(1 + i % 7 for i in range(children)))}
    for code in range(3):
        expected[("mp_bytes_total", (("code", str(code)), ("direction", "out")))] = float(
            sum(1 for i in range(children) if i % 3 == code))
    return expected


def test_a_thousand_short_lived_processes_while_scraping(mp):
    """A driver forks 1,000 children (10 at a time) that each increment and
    os._exit.  A scraper thread (compaction on) runs throughout: its totals
    never go backwards and end exact.  At three checkpoints the driver pauses:
    a scrape is exact, and after compaction the directory holds only the
    archive and the driver's live file."""
    driver = mp.start("churn", children=1000, batch=10, checkpoints=[250, 500, 750])
    registry = CollectorRegistry()
    collector = MultiProcessCollector(registry, str(mp.path))
    stop = threading.Event()
    readings: List[Tuple[float, float]] = []
    problems: list = []

    def scraper() -> None:
        while not stop.is_set():
            try:
                text = generate_latest(registry).decode()
            except Exception as e:  # noqa: BLE001 - reported below
                problems.append(repr(e))
                return
            if collector.skipped:
                problems.append(list(collector.skipped))
            readings.append((value(text, "mp_ops_total") or 0.0,
                             value(text, "mp_bytes_total", direction="out", code="1") or 0.0))
            time.sleep(0.002)

    thread = threading.Thread(target=scraper)
    thread.start()
    try:
        for checkpoint in (250, 500, 750):
            assert driver.expect("checkpoint")["done"] == checkpoint
            _, text = scrape(mp.path)   # a second collector, racing with the thread's
            assert_counters(text, _churn_totals(checkpoint))
            assert compact(str(mp.path)).ran
            files = fm_files(mp.path)
            assert len(files) == 2 and "archive.fm" in files, files
            assert any(name.startswith(f"{driver.pid}-") for name in files), files
            driver.send(op="go")
        driver.expect("done")
        driver.wait()
    finally:
        stop.set()
        thread.join(timeout=TIMEOUT)
    assert not thread.is_alive()
    final = generate_latest(registry).decode()   # the thread's collector, after the churn
    readings.append((value(final, "mp_ops_total"), value(final, "mp_bytes_total", direction="out", code="1")))

    assert problems == []
    assert len(readings) > 3
    for before, after in zip(readings, readings[1:]):
        assert after[0] >= before[0] and after[1] >= before[1], (before, after)
    assert_counters(final, _churn_totals(1000))
    assert fm_files(mp.path) == ["archive.fm"]
    assert sorted(os.listdir(mp.path)) == [".lock", "archive.fm"]


# -- 4. invalid files ------------------------------------------------------------------

def _invalid_variants(data: bytes) -> Dict[str, Tuple[bytes, str]]:
    """Name -> (content, a word of the reason) for every kind of invalid file,
    each made from a valid file with one defect."""
    base = valid_copy(data)
    used = used_of(base)
    return {
        "empty": (b"", "shorter than the header"),
        "short-header": (bytes(base[:100]), "shorter than the header"),
        "short-used": (bytes(base[:used - 8]), "in use"),
        "random": (os.urandom(4096), "magic"),
        "foreign-magic": (b"PROMETHE" + bytes(base[8:]), "magic"),
        "version": (bytes(reheader(base, version=3)), "unsupported version 3"),
    }


def _damaged_series_variants(data: bytes) -> Dict[str, Tuple[bytes, str]]:
    """Name -> (content, a word of the reason) for valid files (new uid) whose
    ``mp_ops`` series alone is damaged: its metadata, or its count."""
    base = valid_copy(data)
    meta = bytearray(base)
    [(start, length)] = [(s, n) for k, a, s, n in records(base) if k == KIND_COUNTER
                         and b'"mp_ops"' in base[s:s + n]]
    meta[start + 4 + length // 2] ^= 0x20   # inside the JSON text
    variants = {"metadata": (bytes(meta), "checksum")}
    for name, bad in (("nan", math.nan), ("negative", -5.0)):
        damaged = valid_copy(data)
        offsets = counter_value_offsets(damaged, "mp_ops")
        assert offsets
        for off in offsets:
            struct.pack_into("=d", damaged, off, bad)
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
    (mp.path / fake_process_name()).write_bytes(valid_copy(data))
    invalid: Dict[str, str] = {}   # path -> expected reason word
    for content, reason in _invalid_variants(data).values():
        path = mp.path / fake_process_name()
        path.write_bytes(content)
        invalid[str(path)] = reason
    damaged: Dict[str, str] = {}
    for content, reason in _damaged_series_variants(data).values():
        path = mp.path / fake_process_name()
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


# -- 5. many live processes ---------------------------------------------------------------

def test_scrape_of_64_live_processes_then_their_compaction(mp):
    """64 forked children increment, set their enum and stay alive: a scrape
    sums the 64 live files exactly and shows 64 enum series, each with its
    process's pid and state.  Once they exit, one compaction folds all 65 files
    (children and driver) and the totals do not change."""
    driver = mp.start("park", children=64)
    children = driver.expect("parked")["children"]
    assert len(children) == 64 and all(nfiles == 1 for _, _, nfiles in children)
    state_of_pid = {str(pid): STATES[i % 3] for i, pid, _ in children}
    totals = {("mp_ops_total", ()): float(sum(range(1, 65))),
              ("mp_bytes_total", (("code", "x"), ("direction", "in"))): 128.0}

    collector, text = scrape(mp.path)
    assert collector.skipped == []
    assert_counters(text, totals)
    assert enum_states(text, "mp_phase") == {(("pid", pid),): state for pid, state in state_of_pid.items()}
    assert len(fm_files(mp.path)) == 65   # nothing dead, nothing folded

    driver.send(op="release")
    driver.expect("released")
    driver.wait()
    assert compact(str(mp.path)).absorbed == 65
    assert fm_files(mp.path) == ["archive.fm"]
    collector, text = scrape(mp.path)
    assert_counters(text, totals)
    assert enum_states(text, "mp_phase") == {}   # pid mode: no live process left
    _, text = scrape(mp.path, enum_mode="mostrecent")
    assert list(enum_states(text, "mp_phase")) == [()]
    assert enum_states(text, "mp_phase")[()] in STATES


# -- 6. the rest of the contract ----------------------------------------------------------

def _mp_lines(text: str) -> List[str]:
    lines = [line for line in text.splitlines()
             if (line.startswith("mp_") or line.split(" ", 2)[-1].startswith("mp_")
                 or line.startswith(("# HELP mp_", "# TYPE mp_", "# UNIT mp_")))
             and "_created" not in line]
    return sorted(lines)


def test_an_exporter_that_declared_nothing_serves_the_full_families(mp):
    """This process never declared the workers' metrics, yet the collector
    serves them as the worker's own registry does: same names, HELP (escaped
    newline and backslash), TYPE, UNIT, labels and values, in both exposition
    formats (minus ``_created``, which multiprocess mode drops)."""
    assert not any(family.name.startswith("mp_") for family in REGISTRY.collect())
    msg = mp.run("count", n=10, label="w")
    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(mp.path), enum_mode="mostrecent")
    for fmt, generate, lines in (("text", generate_latest, 20), ("openmetrics", generate_openmetrics, 21)):
        served, declared = _mp_lines(generate(registry).decode()), _mp_lines(msg[fmt])
        assert served == declared, fmt
        assert len(served) == lines   # 5 families, 10 samples (+ 1 UNIT line in OpenMetrics)
    text = generate_latest(registry).decode()
    assert "# HELP mp_bytes_total Bytes moved.\\nSecond line, with a \\\\ backslash.\n" in text
    assert "# TYPE mp_phase gauge\n" in text   # how the text format shows a stateset
    assert "# UNIT mp_bytes bytes\n" in generate_openmetrics(registry).decode()


def test_prefork_master_and_workers_each_count_once(mp):
    """Pre-fork server: the master declares and increments (its file exists),
    then forks 3 workers.  Each worker has a file of its own, created after the
    fork, and starts from zero; the master's counts are not double counted, and
    the master keeps counting after the fork."""
    driver = mp.start("prefork", workers=3, n=1000, master_before=5, master_after=7)
    msg = driver.expect("forked")
    [master_file] = msg["master_files"]
    assert msg["master_value"] == 12   # the master's own view: the workers' counts are theirs
    reports = msg["reports"]
    assert len({r["pid"] for r in reports} | {driver.pid}) == 4
    for report in reports:
        [own] = report["files"]
        assert own != master_file and os.path.basename(own).startswith(f"{report['pid']}-")
        assert (report["start"], report["end"]) == (0, 1000)
    totals = {("mp_ops_total", ()): 12.0 + 3 * 1000,
              ("mp_bytes_total", (("code", "200"), ("direction", "in"))): 5.0 + 3 * 2}

    _, text = scrape(mp.path)
    assert_counters(text, totals)
    assert fm_files(mp.path) == sorted(["archive.fm", os.path.basename(master_file)])   # live master kept
    driver.send(op="exit")
    driver.wait()
    _, text = scrape(mp.path)
    assert_counters(text, totals)
    assert fm_files(mp.path) == ["archive.fm"]


def test_enable_after_a_metric_exists_raises(mp):
    """enable() in a process that already created a metric raises
    RuntimeError and leaves the mode off: no directory, no exported variable,
    no file left behind, and the metric keeps working in process."""
    target = mp.path / "late"
    msg = mp.run("late_enable", env_dir=False, path=str(target))
    assert msg["error"] is not None
    assert msg["directory"] is None and msg["env"] is None
    assert msg["value"] == 4
    assert [name for name in msg["listing"] or [] if name.endswith((".fm", ".tmp"))] == []


def test_enum_pid_and_mostrecent_modes(mp):
    """``pid`` mode shows each live process's state with its pid; ``mostrecent``
    shows the state set last in time over all processes, exited ones included,
    and keeps doing so through compaction (an older process's newer state wins
    over a newer file's older state)."""
    def series(pid: Optional[int] = None) -> Labels:
        return (("pid", str(pid)), ("role", "reader")) if pid else (("role", "reader"),)

    def states(mode: str) -> Dict[Labels, str]:
        return enum_states(scrape(mp.path, enum_mode=mode, compact=False)[1], "mp_role")

    p1 = mp.serve()
    p1.call("state", metric="role", labels=["reader"], state="idle")
    p2 = mp.serve()
    p2.call("state", metric="role", labels=["reader"], state="busy")
    assert states("pid") == {series(p1.pid): "idle", series(p2.pid): "busy"}
    p2.exit()
    assert states("pid") == {series(p1.pid): "idle"}
    assert states("mostrecent") == {series(): "busy"}   # the exited process set it last

    p1.call("state", metric="role", labels=["reader"], state="done")   # older file, newer state
    assert states("mostrecent") == {series(): "done"}
    assert compact(str(mp.path)).absorbed == 1   # p2 folded; p1 alive
    assert states("mostrecent") == {series(): "done"}
    assert states("pid") == {series(p1.pid): "done"}

    p1.exit()
    assert compact(str(mp.path)).absorbed == 1
    assert states("mostrecent") == {series(): "done"}
    assert states("pid") == {}
    p3 = mp.serve()
    p3.call("state", metric="role", labels=["reader"], state="busy")
    p3.exit()
    assert compact(str(mp.path)).absorbed == 1   # archive vs archive: the later stamp wins
    assert states("mostrecent") == {series(): "busy"}


def test_reset_in_one_process_resets_only_its_contribution(mp):
    """Counter.reset() in one worker zeroes that worker's share of the total
    (plain and labelled); the other worker's share and later increments are
    kept, live and after compaction."""
    bytes_in = {"metric": "bytes", "labels": ["in", "200"]}
    p1, p2 = mp.serve(), mp.serve()
    p1.call("inc", metric="ops", amount=10)
    p1.call("inc", amount=4, **bytes_in)
    p2.call("inc", metric="ops", amount=7)
    p2.call("inc", amount=1, **bytes_in)

    def totals() -> Tuple[Optional[float], Optional[float]]:
        text = scrape(mp.path)[1]
        return value(text, "mp_ops_total"), value(text, "mp_bytes_total", direction="in", code="200")

    assert totals() == (17, 5)
    p1.call("reset", metric="ops")
    assert p1.call("value", metric="ops") == 0
    assert totals() == (7, 5)
    p1.call("inc", metric="ops", amount=3)
    assert totals() == (10, 5)
    p1.call("reset", **bytes_in)
    assert totals() == (10, 1)
    p2.exit()
    p1.exit()
    assert totals() == (10, 1)
    assert fm_files(mp.path) == ["archive.fm"]


def test_remove_then_recreate_keeps_the_counts_summed(mp):
    """remove() and clear() drop a child from the process, not its counts:
    re-creating it with labels() adds to what the directory already holds."""
    p = mp.serve()
    bytes_in = {"metric": "bytes", "labels": ["in", "200"]}

    def total() -> Optional[float]:
        return value(scrape(mp.path)[1], "mp_bytes_total", direction="in", code="200")

    p.call("inc", amount=5, **bytes_in)
    p.call("remove", metric="bytes", labels=["in", "200"])
    assert total() == 5
    p.call("inc", amount=2, **bytes_in)
    assert p.call("value", **bytes_in) == 2   # the process's own view: the new child
    assert total() == 7
    p.call("clear", metric="bytes")
    p.call("inc", amount=1, **bytes_in)
    assert total() == 8
    p.exit()
    assert total() == 8
    assert fm_files(mp.path) == ["archive.fm"]


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
    assert {bytes.fromhex(name[:-3].rsplit("-", 1)[1]) for name in names} <= absorbed

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
    fresh, stale, held = (mp.path / f".{fake_process_name()}.tmp" for _ in range(3))
    for path in (fresh, stale, held, mp.path / "archive.fm.12345.tmp"):
        path.write_bytes(valid_copy(data))
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


def test_one_collector_follows_a_live_process_and_lets_it_be_compacted(mp):
    """The same collector scrapes again and again while a live worker adds
    values, labelled children, threads (new chunks) and enum states: each
    scrape is exact.  Files that collectors keep mapped between scrapes do not
    look alive: once the worker exits and a second collector has read its
    file, the first collector's compaction still folds it."""
    registry = CollectorRegistry()
    collector = MultiProcessCollector(registry, str(mp.path))

    def text() -> str:
        out = generate_latest(registry).decode()
        assert collector.skipped == []
        return out

    worker = mp.serve()
    worker.call("inc", metric="ops", amount=2)
    assert value(text(), "mp_ops_total") == 2
    worker.call("inc", metric="ops", times=1000, threads=4)
    for code in range(40):   # new series: metadata records appended after the first scrape
        worker.call("inc", metric="bytes", labels=["in", str(code)], amount=code)
    worker.call("state", metric="role", labels=["writer"], state="busy")
    out = text()
    assert value(out, "mp_ops_total") == 4002
    assert [value(out, "mp_bytes_total", direction="in", code=str(code)) for code in range(40)] == \
        [float(code) for code in range(40)]
    assert enum_states(out, "mp_role") == {(("pid", str(worker.pid)), ("role", "writer")): "busy"}
    worker.call("reset", metric="ops")
    worker.call("inc", metric="ops", amount=5)
    assert value(text(), "mp_ops_total") == 5
    assert fm_files(mp.path) != ["archive.fm"]

    worker.exit()
    lazy_registry = CollectorRegistry()   # maps the exited worker's file and keeps it mapped
    MultiProcessCollector(lazy_registry, str(mp.path), compact=False)
    assert value(generate_latest(lazy_registry).decode(), "mp_ops_total") == 5
    out = text()
    assert fm_files(mp.path) == ["archive.fm"]
    assert value(out, "mp_ops_total") == 5
    assert value(out, "mp_bytes_total", direction="in", code="39") == 39
    assert enum_states(out, "mp_role") == {}


def test_a_reader_rereads_a_file_whose_header_changed_in_place(tmp_path):
    """A Reader remembers files by (path, device, inode) between reads.  A
    file rewritten in place with another uid (what a reused inode looks like)
    is walked again, never answered from the old walk; compaction gives every
    archive a new uid for that reason."""
    meta = _format.Meta("counter", "mp_ops", "Operations.", "", (), (), ())
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


def test_enable_refuses_bad_input_with_clear_errors(mp, tmp_path):
    """enable() without a directory, with a capacity under 64 KiB or not a
    multiple of the page size, or with an unparsable
    FASTMETRICS_MULTIPROC_CAPACITY raises ValueError and leaves the mode off.
    Once enabled, the same directory again is a no-op and another one a
    RuntimeError.  An enum with more states than the file format holds
    (65,536 in version 2 files, 4,096 in version 1) raises ValueError in this
    mode; as many as it holds work."""
    msg = mp.run("enable_errors", env_dir=False, path=str(mp.path), other=str(tmp_path / "other"))
    assert msg["no_directory"] == "ValueError: no directory given and FASTMETRICS_MULTIPROC_DIR is not set"
    assert msg["capacity_small"].startswith("ValueError: capacity must be a multiple of")
    assert msg["capacity_unaligned"].startswith("ValueError: capacity must be a multiple of")
    assert msg["capacity_env"] == "ValueError: FASTMETRICS_MULTIPROC_CAPACITY must be a number of bytes, not '64MiB'"
    assert msg["still_off"] is None
    assert msg["enabled"] == msg["again"] == str(mp.path)
    assert msg["other_directory"] == f"RuntimeError: multiprocess mode is already enabled with {mp.path}"
    [name] = fm_files(mp.path)
    limit = msg["limit"]
    assert limit == _format.max_states(HEADER.unpack_from((mp.path / name).read_bytes())[1])
    assert msg["states_over"] == f"ValueError: fastmetrics multiprocess mode supports at most {limit} enum states"
    assert msg["states_at_limit"] == limit - 1
    _, text = scrape(mp.path, enum_mode="mostrecent")
    assert value(text, "mp_big_ok", mp_big_ok=f"s{limit - 1}") == 1


def test_a_full_file_raises_memoryerror_and_keeps_what_was_counted(mp):
    """With a 64 KiB file, creating values and a new thread's first increment
    end in MemoryError naming the full file; everything counted before is in
    the scrape, exactly, and the file stays valid."""
    msg = mp.run("full", extra_env={multiprocess.ENV_CAPACITY: str(64 * 1024)})
    [name] = fm_files(mp.path)
    assert msg["error"] == (f"fastmetrics: the multiprocess file {mp.path / name} is full or detached "
                            "(set FASTMETRICS_MULTIPROC_CAPACITY higher)")
    assert msg["thread_error"] == [msg["error"]]
    assert 100 < msg["done"] < 1000
    collector, text = scrape(mp.path)
    assert collector.skipped == []
    assert sum(v for (name, _), v in samples(text).items() if name == "mp_fill_total") == msg["done"]
