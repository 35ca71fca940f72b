"""Multiprocess mode across real processes: pools (fork, forkserver, spawn),
SIGKILL, churn, many live processes, pre-fork servers, per-process resets.

Every write happens in fresh subprocesses (``_mp_worker.py``) started with
``FASTMETRICS_MULTIPROC_DIR`` set (and ``FASTMETRICS_NO_EXTENSIONS=1`` for the
pure-Python twin); each worker checks it runs the implementation asked for.
This process only reads and folds the directory (``MultiProcessCollector``,
``compact``), as a separate exporter would.  Every wait is bounded.
"""

from __future__ import annotations

import mmap
import multiprocessing
import os
import threading
import time
from typing import Dict, List, Optional, Tuple

import pytest
from _cluster import TIMEOUT
from _expose import Labels, assert_counters, enum_states, fm_files, scrape, value
from _expose import STATES
from prometheus_client import CollectorRegistry, generate_latest

from fastmetrics.multiprocess import MultiProcessCollector, compact

pytest.importorskip("fcntl", reason="multiprocess mode needs POSIX (fcntl.flock)")

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
        assert result["impl"] == mp.impl.implementation
        assert result["dir"] == str(mp.path)
        assert result["pid"] != msg["pid"] and len(result["files"]) == 1
    _, text = scrape(mp.path)
    assert value(text, "mp_ops_total") == 4 * n
    assert value(text, "mp_bytes_total", direction="in", code="0") == (1 + 3) * n   # tasks 0 and 2
    assert value(text, "mp_bytes_total", direction="in", code="1") == (2 + 4) * n   # tasks 1 and 3


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
