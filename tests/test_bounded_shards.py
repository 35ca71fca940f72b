"""Shards are bounded by cores, not threads (issue 14): with many more threads
than exclusive shards, the threads beyond share stripes, and everything the
per-thread design guaranteed still holds: exact totals, scrapes that never go
backwards, bounded shard counts under churn, reset under stripe writers, fork
while stripe writers run.  Both implementations."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from typing import Any, Dict, Iterator, List

import pytest
from _support import fork_with_threads, in_forked_child
from prometheus_client import generate_latest

from fastmetrics._shard_limits import ENV_EXCLUSIVE, MAX_SHARDS, ShardLimits, shard_limits

SERIES = 700            # > one chunk of 512 slots


def _many(impl: Any) -> int:
    """A thread count well beyond the exclusive shards."""
    return 3 * int(impl.stats()["exclusive_max"]) + 5


def _bound(impl: Any) -> int:
    st = impl.stats()
    return int(st["exclusive_max"]) + int(st["stripes_max"])


@contextlib.contextmanager
def _writers_beyond_the_shards(impl: Any, c: Any) -> Iterator[int]:
    """Inside: :func:`_many` threads call ``c.inc()`` in a loop, some of them
    on stripes already; yields their number.  On exit they stop and are joined."""
    threads_count = _many(impl)
    stop = threading.Event()
    go = threading.Barrier(threads_count + 1)

    def work() -> None:
        go.wait()
        while not stop.is_set():
            c.inc()

    workers = [threading.Thread(target=work) for _ in range(threads_count)]
    for t in workers:
        t.start()
    go.wait()
    try:
        deadline = time.monotonic() + 60
        while impl.stats()["stripe_threads"] < 1:   # until some thread increments on a stripe
            assert time.monotonic() < deadline, impl.stats()
            time.sleep(0.001)
        yield threads_count
    finally:
        stop.set()
        for t in workers:
            t.join(timeout=300)


def test_exact_totals_with_many_more_threads_than_shards_and_monotonic_scrapes(impl, counter, registry):
    parent = counter("striped_total", "Striped.", labelnames=["k"])
    children = [parent.labels(str(i)) for i in range(SERIES)]
    threads_count, rounds = _many(impl), 20
    start = threading.Barrier(threads_count + 1)
    parked = threading.Barrier(threads_count + 1)
    release = threading.Event()
    done = threading.Event()
    readings: List[List[float]] = []
    watched = [children[0], children[SERIES // 2], children[-1]]

    # One scrape under ASan can outlast every worker's rounds, so the workers
    # stop halfway until a whole scrape has run with them all there: at least
    # one scrape lands between writes, whatever the scheduling.
    halfway = threading.Barrier(threads_count + 1)
    resume = threading.Event()

    def work() -> None:
        start.wait()
        for r in range(rounds):
            if r == rounds // 2:
                halfway.wait()
                resume.wait()
            for child in children:
                child.inc()
        parked.wait()
        release.wait()

    def scrape() -> None:
        while not done.is_set():
            readings.append([c._value.get() for c in watched])
            generate_latest(registry)

    workers = [threading.Thread(target=work) for _ in range(threads_count)]
    scraper = threading.Thread(target=scrape)
    for t in workers:
        t.start()
    start.wait()
    halfway.wait()
    scraper.start()
    deadline = time.monotonic() + 300
    while len(readings) < 2 and scraper.is_alive() and time.monotonic() < deadline:
        time.sleep(0.001)       # readings[1]: the first scrape is over
    resume.set()
    parked.wait()
    try:
        st = impl.stats()
        # every worker is alive and has incremented: most of them are on stripes
        assert st["stripe_threads"] >= threads_count - st["exclusive_max"], st
        assert st["shards_total"] <= _bound(impl), st
    finally:
        release.set()
        for t in workers:
            t.join(timeout=300)
        done.set()
        scraper.join(timeout=60)
    expected = float(threads_count * rounds)
    assert all(c._value.get() == expected for c in children)
    text = generate_latest(registry).decode()
    assert f'striped_total{{k="{SERIES - 1}"}} {expected}' in text
    assert len(readings) > 1
    assert readings[0] == [float(threads_count * (rounds // 2))] * len(watched)   # taken with all at halfway
    for before, after in zip(readings, readings[1:]):
        assert all(b <= a for b, a in zip(before, after)), (before, after)


def test_thread_churn_beyond_the_exclusive_shards_stays_bounded(impl, counter):
    c = counter("churn_striped_total", "Churn.")
    child = counter("churn_striped_labelled_total", "Churn.", labelnames=["k"]).labels("x")
    wave, waves = _many(impl), 150          # thousands of short-lived threads, more alive than shards

    def work() -> None:
        c.inc()
        child.inc(2)

    live_before = impl.stats()["threads_live"]
    for _ in range(waves):
        threads = [threading.Thread(target=work) for _ in range(wave)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    st = impl.stats()
    assert c._value.get() == wave * waves
    assert child._value.get() == 2 * wave * waves
    assert st["shards_total"] <= _bound(impl), st
    # exited threads gave their tickets back (a few may still be in their exit hook)
    assert st["threads_live"] <= live_before + 2, (live_before, st)


def test_reset_under_stripe_writers_leaves_no_stray_count(impl, counter):
    c = counter("reset_striped_total", "Reset.")
    with _writers_beyond_the_shards(impl, c) as threads_count:
        # The twin's reset waits, GIL switch by GIL switch, for every thread
        # paused inside an increment: fewer rounds keep it quick.
        for _ in range(200 if impl.name == "c" else 5):
            c.reset()
            assert c._value.get() >= 0
    # An increment that stored into the old slot after reset zeroed it would
    # show up once that slot comes back as the next spare.
    c.reset()
    assert c._value.get() == 0
    c.reset()
    assert c._value.get() == 0
    threads = [threading.Thread(target=lambda: [c.inc() for _ in range(100)]) for _ in range(threads_count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c._value.get() == 100 * threads_count


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@fork_with_threads
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # 3.12+: fork() with threads
def test_fork_while_stripe_writers_run(impl, counter, registry):
    c = counter("fork_striped_total", "Fork.")
    with _writers_beyond_the_shards(impl, c) as threads_count:
        for _ in range(5):
            time.sleep(0.02)
            before = c._value.get()

            def child() -> Dict[str, Any]:
                v0 = c._value.get()
                c.inc()
                helpers = [threading.Thread(target=lambda: [c.inc() for _ in range(100)])
                           for _ in range(threads_count)]
                for t in helpers:
                    t.start()
                for t in helpers:
                    t.join()
                return {"v0": v0, "v1": c._value.get(),
                        "scrape_ok": "fork_striped_total" in generate_latest(registry).decode()}

            report = in_forked_child(child)
            assert report["v0"] >= before
            assert report["v1"] == report["v0"] + 1 + 100 * threads_count
            assert report["scrape_ok"]


# -- the bounds ----------------------------------------------------------------------


def test_default_bounds_follow_the_cpus() -> None:
    assert shard_limits({}, cpu_count=1) == ShardLimits(4, 2)
    assert shard_limits({}, cpu_count=2) == ShardLimits(4, 2)
    assert shard_limits({}, cpu_count=8) == ShardLimits(16, 8)
    assert shard_limits({}, cpu_count=10_000) == ShardLimits(MAX_SHARDS, MAX_SHARDS)


def test_exclusive_shards_from_the_environment() -> None:
    assert shard_limits({ENV_EXCLUSIVE: " 1 "}, cpu_count=2) == ShardLimits(1, 2)
    assert shard_limits({ENV_EXCLUSIVE: ""}, cpu_count=2) == ShardLimits(4, 2)
    for bad in ("0", "-3", "many", "1.5", str(MAX_SHARDS + 1)):
        with pytest.raises(ValueError, match=f"{ENV_EXCLUSIVE}="):
            shard_limits({ENV_EXCLUSIVE: bad}, cpu_count=2)


def test_the_store_uses_the_bounds_of_its_environment(impl) -> None:
    import subprocess
    import sys

    code = impl.prologue + ("from fastmetrics import _core\n"
                            "c = fastmetrics.Counter('x', 'X.')\n"
                            "import threading\n"
                            "ts = [threading.Thread(target=c.inc) for _ in range(20)]\n"
                            "[t.start() for t in ts]; [t.join() for t in ts]\n"
                            "st = _core.stats()\n"
                            "assert c._value.get() == 20\n"
                            "bound = st['exclusive_max'] + st['stripes_max']\n"
                            "print(st['exclusive_max'], st['shards_total'] <= bound)\n")
    out = subprocess.run([sys.executable, "-c", code], env=impl.env(**{ENV_EXCLUSIVE: "1"}),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "True"]
    bad = subprocess.run([sys.executable, "-c", impl.prologue], env=impl.env(**{ENV_EXCLUSIVE: "zero"}),
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0
    assert f"ValueError: {ENV_EXCLUSIVE}='zero'" in bad.stderr
