"""Concurrency is proven, not assumed: exact totals under threads, scrapes that
never go backwards, thread churn without loss or growth, growth during scrapes,
signal handlers and fork() without deadlock."""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading
import time
from typing import Any, Dict

import pytest
from _support import fork_with_threads, in_forked_child
from prometheus_client import generate_latest

THREADS = 4
PER_THREAD = 200_000


def _rss_bytes():
    """Resident set size (Linux), peak RSS (macOS), or None where unknown."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        pass
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def test_exact_totals_under_threads_while_scrapes_never_go_backwards(impl, counter, registry):
    plain = counter("ops_total", "Ops.")
    child = counter("bytes_total", "Bytes.", labelnames=["dir"]).labels("in")
    state = impl.Enum("phase", "Phase.", states=["a", "b"], registry=registry)
    start = threading.Barrier(THREADS + 1)
    done = threading.Event()
    readings: list = []

    def work():
        start.wait()
        for i in range(PER_THREAD):
            plain.inc()
            if i & 7 == 0:
                child.inc(2)
                state.state("b" if i & 8 else "a")

    def scrape():
        start.wait()
        while not done.is_set():
            readings.append((registry.get_sample_value("ops_total"),
                             registry.get_sample_value("bytes_total", {"dir": "in"})))
        readings.append((registry.get_sample_value("ops_total"),
                         registry.get_sample_value("bytes_total", {"dir": "in"})))

    workers = [threading.Thread(target=work) for _ in range(THREADS)]
    scraper = threading.Thread(target=scrape)
    for t in [*workers, scraper]:
        t.start()
    for t in workers:
        t.join(timeout=300)
    done.set()
    scraper.join(timeout=60)
    assert not any(t.is_alive() for t in [*workers, scraper])

    assert plain._value.get() == THREADS * PER_THREAD
    assert child._value.get() == THREADS * (PER_THREAD // 8) * 2
    assert len(readings) > 10
    for (a0, b0), (a1, b1) in zip(readings, readings[1:]):
        assert a1 >= a0 and b1 >= b0
    assert readings[-1] == (THREADS * PER_THREAD, THREADS * (PER_THREAD // 8) * 2)
    assert impl.stats()["shards_total"] >= 1


def test_thread_churn_loses_nothing_and_does_not_grow(impl, counter):
    c = counter("churn_total", "Churn.")
    child = counter("churn_labelled_total", "Churn.", labelnames=["k"]).labels("x")
    wave, waves = 8, 2500          # 20,000 short-lived threads, at most 8 alive at once

    def work():
        c.inc()
        child.inc(3)

    def run_waves(n):
        for _ in range(n):
            threads = [threading.Thread(target=work) for _ in range(wave)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

    run_waves(50)                  # warm the pool
    gc.collect()
    shards_before, rss_before = impl.stats()["shards_total"], _rss_bytes()
    run_waves(waves - 50)
    gc.collect()
    shards_after, rss_after = impl.stats()["shards_total"], _rss_bytes()

    assert c._value.get() == wave * waves
    assert child._value.get() == 3 * wave * waves
    # Shards are recycled: their number follows the peak of live threads (plus
    # threads still inside their exit hook), not the 20,000 threads created.
    assert shards_after - shards_before <= 4 * wave, (shards_before, shards_after)
    if rss_before is not None:
        assert rss_after - rss_before < 32 * 2**20, (rss_before, rss_after)


def test_tables_grow_while_threads_increment_and_scrapes_fold(impl, counter, registry):
    c = counter("grow_total", "Growth.", labelnames=["k"])
    n_children, n_threads = 1500, 3            # > 2 chunks of 512 slots each
    stop = threading.Event()
    errors: list = []

    def creator(tid):
        for i in range(n_children):
            c.labels(f"{tid}-{i}").inc(i)

    def scraper():
        last = {}
        while not stop.is_set():
            for fam in registry.collect():
                for s in fam.samples:
                    if s.name == "grow_total":
                        key = s.labels["k"]
                        if s.value < last.get(key, 0):
                            errors.append((key, last[key], s.value))
                        last[key] = s.value
            generate_latest(registry)

    threads = [threading.Thread(target=creator, args=(t,)) for t in range(n_threads)]
    scr = threading.Thread(target=scraper)
    scr.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    stop.set()
    scr.join(timeout=60)
    assert not errors
    for t in range(n_threads):
        for i in range(0, n_children, 97):
            assert registry.get_sample_value("grow_total", {"k": f"{t}-{i}"}) == i
    total = sum(s.value for fam in registry.collect() for s in fam.samples if s.name == "grow_total")
    assert total == n_threads * sum(range(n_children))


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs setitimer")
def test_increment_from_a_signal_handler_that_interrupts_inc(counter):
    # prometheus_client deadlocks/recurses here: the handler waits for the lock
    # that the interrupted inc() holds.  Shards have no lock to wait for.
    c = counter("sig_total", "Signals.")
    child = counter("sig_labelled_total", "Signals.", labelnames=["k"]).labels("a")
    handled = [0]

    def handler(signum, frame):
        c.inc()
        child.inc(2)
        handled[0] += 1

    previous = signal.signal(signal.SIGALRM, handler)
    loops = 0
    deadline = time.monotonic() + 10
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
        while (handled[0] < 300 or loops < 200_000) and time.monotonic() < deadline:
            c.inc()
            child.inc(2)
            loops += 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, previous)
    assert handled[0] > 0
    assert c._value.get() == loops + handled[0]
    assert child._value.get() == 2 * (loops + handled[0])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@fork_with_threads
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # 3.12+: fork() with threads
def test_fork_while_threads_increment(impl, counter, registry):
    c = counter("forked_total", "Fork.")
    labelled = counter("forked_labelled_total", "Fork.", labelnames=["k"])
    state = impl.Enum("forked_state", "Fork.", states=["a", "b"], registry=registry)
    stop = threading.Event()
    made = [0] * 3

    def work(tid):
        i = 0
        while not stop.is_set():
            c.inc()
            labelled.labels(f"{tid}-{i % 5000}").inc()   # creates children: takes the locks
            state.state("b" if i & 1 else "a")
            i += 1
        made[tid] = i

    threads = [threading.Thread(target=work, args=(t,)) for t in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(5):
            time.sleep(0.05)
            before = c._value.get()

            def child() -> Dict[str, Any]:
                v0 = c._value.get()
                c.inc()
                labelled.labels("child-new").inc(5)
                t = threading.Thread(target=lambda: [c.inc() for _ in range(1000)])
                t.start()
                t.join()
                state.state("b")
                text = generate_latest(registry).decode()
                return {"v0": v0, "v1": c._value.get(), "scrape_ok": "forked_total" in text,
                        "child_new": labelled.labels("child-new")._value.get()}

            report = in_forked_child(child)
            assert report["v0"] >= before           # the child keeps the parent's counts
            assert report["v1"] == report["v0"] + 1001
            assert report["scrape_ok"] and report["child_new"] == 5
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert c._value.get() == sum(made)
    assert sum(ch._value.get() for ch in labelled._metrics.values()) == sum(made)
