"""Regression tests of the reliability audit (hangs and silent loss in the core).

Each scenario that could hang runs in a subprocess with a hard deadline: a
deadlock is a failed test, never a stuck suite.  Subprocesses select the
implementation through their environment (``impl.env()``), as users do.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
import threading

import pytest
from _support import fork_with_threads
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import Enum as PromEnum

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")


def _run(impl, code: str, timeout: float = 60.0, **environ: str) -> str:
    """Run ``code`` in a fresh interpreter on ``impl`` with ``environ`` added;
    its stdout, or fail on a non-zero exit, a signal or a hang (the process is
    killed at ``timeout``)."""
    try:
        proc = subprocess.run([sys.executable, "-c", impl.prologue + textwrap.dedent(code)],
                              env=impl.env(**environ), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"deadlock: the scenario did not finish within {timeout:g} s")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@needs_fork
@fork_with_threads
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_fork_while_other_threads_take_cold_paths_never_deadlocks(impl):
    # Audit item 1: the store's C mutex was held across fork() from a Python
    # hook, so the forking thread ran bytecode holding it and could hand the
    # GIL to a thread that then blocked on the mutex holding the GIL.
    out = _run(impl, """
        import os, sys, threading, time
        sys.setswitchinterval(1e-6)
        from fastmetrics import Counter
        c = Counter("shared", "Shared.", registry=None)
        stop = threading.Event()

        def spawner():        # a new thread's first inc(): shard acquisition
            while not stop.is_set():
                t = threading.Thread(target=c.inc)
                t.start()
                t.join()

        def creator():        # slot allocation and release in __dealloc__
            while not stop.is_set():
                Counter("tmp", "Tmp.", registry=None).inc()

        threads = [threading.Thread(target=spawner), threading.Thread(target=creator)]
        for t in threads:
            t.start()
        forks, deadline = 0, time.monotonic() + 4.0
        while time.monotonic() < deadline:
            pid = os.fork()
            if pid == 0:
                c.inc()
                os._exit(0 if c._value.get() >= 1 else 3)
            _, status = os.waitpid(pid, 0)
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
            forks += 1
        stop.set()
        for t in threads:
            t.join()
        print(forks)
    """)
    assert int(out) > 10


@needs_fork
def test_garbage_collection_inside_the_fork_window_never_deadlocks(impl):
    # Audit item 2: a collection inside the fork hooks freed a cyclic Counter,
    # whose dealloc locked the mutex its own thread held.  Every gen-0 offset
    # around the hooks' allocations is tried.
    out = _run(impl, """
        import gc, os
        from fastmetrics import Counter
        for offset in range(1, 60):
            gc.collect()
            gc.set_threshold(offset)
            c = Counter("cyclic", "Cyclic.", registry=None)
            c.inc()
            c.self_ref = c        # only the cycle collector can free it
            del c
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            _, status = os.waitpid(pid, 0)
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
        gc.set_threshold(700)
        print("ok")
    """)
    assert out.strip() == "ok"


def test_enum_with_more_than_4096_states_is_exact(impl, registry):
    # Audit item 6: the state index was masked to 12 bits in-process.
    states = [f"s{i}" for i in range(5000)]
    ours = impl.Enum("many", "Many states.", states=states, registry=registry)
    theirs_registry = CollectorRegistry()
    theirs = PromEnum("many", "Many states.", states=states, registry=theirs_registry)
    for s in ("s4999", "s4096", "s903", "s0"):
        ours.state(s)
        theirs.state(s)
        assert ours._value == states.index(s)
        assert registry.get_sample_value("many", {"many": s}) == 1
        assert generate_latest(registry) == generate_latest(theirs_registry)


def test_reset_every_cycle_runs_in_flat_memory(impl, counter):
    # Audit item 7: each reset() kept a retired slot until the counter died,
    # so the slot table filled (an unrelated Counter then failed) and memory grew.
    c = counter("cycled_total", "Reset every cycle.")
    labelled = counter("cycled_labelled_total", "Reset every cycle.", labelnames=["k"]).labels("a")
    c.inc()
    labelled.inc()
    c.reset()
    labelled.reset()
    baseline = impl.stats()["slots_used"]
    for _ in range(5000):
        c.inc(2)
        labelled.inc(3)
        assert c._value.get() == 2 and labelled._value.get() == 3
        c.reset()
        labelled.reset()
        assert c._value.get() == 0 and labelled._value.get() == 0
    assert impl.stats()["slots_used"] == baseline
    c.inc(0.1)
    assert c._value.get() == 0.1   # exact: a reset restarts from a zeroed word


def test_reset_racing_with_increments_loses_nothing_after_it(impl, counter):
    # Every increment made after reset() returns is counted, exactly, while
    # other threads keep incrementing through many resets.
    c = counter("raced_total", "Raced.")
    stop = threading.Event()
    done = [0, 0]

    def work(i):
        n = 0
        while not stop.is_set():
            c.inc()
            n += 1
        done[i] = n

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(300):
            c.reset()
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    before = impl.stats()["slots_used"]
    c.reset()
    c.inc(5)
    assert c._value.get() == 5
    assert impl.stats()["slots_used"] == before
    gc.collect()


def test_multiprocess_reset_on_a_full_file_changes_nothing(impl, tmp_path):
    # Audit item 5: reset() switched to a new slot, then raised MemoryError
    # before that slot's metadata was written: later increments reached no scrape.
    out = _run(impl, """
        import json
        from fastmetrics import Counter
        from fastmetrics.multiprocess import read_directory
        import fastmetrics.multiprocess as mp
        c = Counter("jobs", "Jobs.")
        c.inc(5)
        filler = Counter("filler", "Filler.", labelnames=["k"])
        made = 0
        try:
            while True:
                filler.labels(str(made)).inc()
                made += 1
        except MemoryError as e:
            full_error = str(e)
        try:
            c.reset()
        except MemoryError as e:
            reset_error = str(e)
        else:
            reset_error = None
        c.inc(2)
        snap = read_directory(mp.directory())
        print(json.dumps({"reset_error": reset_error, "full_error": full_error, "made": made,
                          "value": c._value.get(),
                          "scraped": snap.counters.get(("jobs", ())), "skipped": snap.skipped}))
    """, FASTMETRICS_MULTIPROC_DIR=str(tmp_path), FASTMETRICS_MULTIPROC_CAPACITY=str(64 * 1024))
    report = json.loads(out)
    assert report["made"] > 10
    assert str(tmp_path) in report["full_error"]
    assert report["reset_error"] is not None and str(tmp_path) in report["reset_error"]
    assert report["value"] == 7            # the failed reset changed nothing
    assert report["scraped"] == 7          # and every increment reaches the scrape
    assert report["skipped"] == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tmpfs mount: Linux")
def test_multiprocess_full_filesystem_is_an_error_not_sigbus(impl, small_tmpfs):
    # Audit item 14: a process file on a filesystem that fills up killed the
    # worker with SIGBUS at the first touch of an unbacked page.
    out = _run(impl, """
        import errno, json, threading
        from fastmetrics import Counter
        import fastmetrics.multiprocess as mp
        c = Counter("kept", "Kept.")
        c.inc(3)
        wide = Counter("wide", "Wide.", labelnames=["k"])
        made, error = 0, None

        def inc_in_a_new_thread(child):
            # A new thread may get a new shard (the last one's is pooled only
            # when its OS thread has fully exited), so its first increment can
            # be the allocation that meets the full file system: report it.
            failed = []
            def inc():
                try:
                    child.inc()
                except OSError as e:
                    failed.append(e)
            t = threading.Thread(target=inc)
            t.start()
            t.join()
            if failed:
                raise failed[0]

        try:
            for i in range(100_000):
                # every 512th child starts a new chunk
                inc_in_a_new_thread(wide.labels(str(i)))
                made += 1
        except OSError as e:
            error = {"errno": e.errno, "text": str(e)}
        c.inc(4)
        snap = mp.read_directory(mp.directory())
        print(json.dumps({"made": made, "error": error, "kept": c._value.get(),
                          "scraped": snap.counters.get(("kept", ())),
                          "children": sum(v for (name, _), v in snap.counters.items() if name == "wide")}))
    """, timeout=120, FASTMETRICS_MULTIPROC_DIR=str(small_tmpfs),
        FASTMETRICS_MULTIPROC_CAPACITY=str(16 << 20))
    report = json.loads(out)
    assert report["error"] is not None, report
    assert report["error"]["errno"] == 28                      # ENOSPC
    assert str(small_tmpfs) in report["error"]["text"]
    assert report["made"] > 0
    assert report["kept"] == 7 and report["scraped"] == 7      # what was counted stays valid
    assert report["children"] == report["made"]


def test_multiprocess_reset_every_cycle_appends_nothing(impl, tmp_path):
    # Audit item 7, multiprocess: each reset() appended records (and took a
    # slot that is never recycled there) forever.
    out = _run(impl, """
        import json, mmap, os
        from fastmetrics import Counter
        import fastmetrics.multiprocess as mp
        c = Counter("cycled", "Reset every cycle.", labelnames=["k"]).labels("a")
        c.inc()
        c.reset()
        path = [os.path.join(mp.directory(), n) for n in os.listdir(mp.directory()) if n.endswith(".fm")][0]
        def used():
            with open(path, "rb") as f:
                return int.from_bytes(f.read(72)[64:72], "little")
        first = used()
        for i in range(2000):
            c.inc(3)
            c.reset()
        c.inc(2)
        snap = mp.read_directory(mp.directory())
        print(json.dumps({"first": first, "last": used(), "value": c._value.get(),
                          "scraped": snap.counters.get(("cycled", ("a",)))}))
    """, FASTMETRICS_MULTIPROC_DIR=str(tmp_path))
    report = json.loads(out)
    assert report["last"] == report["first"]
    assert report["value"] == 2 and report["scraped"] == 2


def test_multiprocess_enum_stamps_last_past_2041(impl, tmp_path):
    # Audit item 8: `index | stamp_us << 12` went negative from 2041-05-10 and
    # the reader rejected the whole file.  The clock is faked to 2100 (the
    # twin reads time.time_ns and its words must decode to that date; the C
    # core reads clock_gettime, so for it the reader must accept today's).
    year_2100_ns = 4_102_444_800 * 10**9
    out = _run(impl, f"""
        import json, time
        time.time_ns = lambda: {year_2100_ns}
        from fastmetrics import Counter, Enum, implementation
        import fastmetrics.multiprocess as mp
        from fastmetrics import _core
        e = Enum("phase", "Phase.", states=["a", "b", "c"])
        e.state("c")
        c = Counter("jobs", "Jobs.")
        c.inc()
        snap = mp.read_directory(mp.directory(), enum_mode="mostrecent")
        value = snap.enums[(("phase", ()), None)]
        print(json.dumps({{"index": value.index, "stamp_ns": value.stamp_ns,
                          "jobs": snap.counters.get(("jobs", ())), "skipped": snap.skipped,
                          "bits": _core.arena().arena_layout()["STATE_BITS"]}}))
    """, FASTMETRICS_MULTIPROC_DIR=str(tmp_path))
    report = json.loads(out)
    assert report["skipped"] == [] and report["jobs"] == 1
    assert report["bits"] == 16
    assert report["index"] == 2
    if impl.name == "python":
        assert report["stamp_ns"] == year_2100_ns
    # The largest stamp the encoding holds, as a date: far beyond any clock.
    assert (2**63 - 1) >> 16 > 1000 * 86400 * 365 * 4000
