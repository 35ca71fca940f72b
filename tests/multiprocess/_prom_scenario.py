"""One multi-process scenario in prometheus_client's multiprocess mode, run by
``test_prometheus_compat.py`` twice: with ``Counter`` from prometheus_client
(``FM_SCENARIO_LIB=prometheus_client``) and from fastmetrics
(``FM_SCENARIO_LIB=fastmetrics``), ``PROMETHEUS_MULTIPROC_DIR`` set by the
caller.  It prints the exposition of prometheus_client's own, unmodified
``MultiProcessCollector`` over the directory (text format), then one line
``#VALUE <this process's counter._value.get()>``.

The scenario: counters (plain, labelled with awkward values, with a unit)
declared before any process starts; 4 threads incrementing in the parent; a
forked child that increments, creates a new labelled child and resets a
counter of its own; a ``spawn`` worker (a fresh interpreter importing this
module); a forked worker SIGKILLed after it has counted; in the parent a
``reset()``, a removed child (upstream warns, its entries stay), a removed
and re-created child, and increments after all of it.
"""

from __future__ import annotations

import importlib
import multiprocessing
import os
import signal
import sys
import threading
import warnings

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

LIB = os.environ["FM_SCENARIO_LIB"]
Counter = importlib.import_module(LIB).Counter

JOBS = Counter("jobs", "Jobs done.")
REQUESTS = Counter("requests", "Requests by path.", ["path", "method"])
BYTES = Counter("sent", "Bytes sent.", unit="bytes", namespace="app")
RESETS = Counter("resets", "Reset in the parent.")
THREADS, PER_THREAD = 4, 2500


def spawned_worker() -> None:   # in a fresh interpreter: the metrics above were declared again
    JOBS.inc(7)
    REQUESTS.labels("/spawned", "GET").inc(3)
    BYTES.inc(1024)


def forked_child() -> None:
    JOBS.inc(2)
    REQUESTS.labels("/x", "GET").inc(5)
    REQUESTS.labels("/child-only", "POST").inc()
    RESETS.inc(4)
    RESETS.reset()   # this process's value only
    RESETS.inc(1)


def main() -> None:
    REQUESTS.labels("/x", "GET")          # created, never incremented: a 0 sample
    REQUESTS.labels('é "q"\\n', "PUT").inc(0.5)
    RESETS.inc(10)

    def hammer() -> None:
        for _ in range(PER_THREAD):
            JOBS.inc()
            REQUESTS.labels("/x", "GET").inc(2)

    threads = [threading.Thread(target=hammer) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    pid = os.fork()
    if pid == 0:
        try:
            forked_child()
        finally:
            os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0

    worker = multiprocessing.get_context("spawn").Process(target=spawned_worker)
    worker.start()
    worker.join()
    assert worker.exitcode == 0

    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:   # counts, says so, then waits to be killed
        JOBS.inc(100)
        REQUESTS.labels("/killed", "GET").inc(11)
        os.write(ready_w, b"1")
        signal.pause()
        os._exit(1)
    assert os.read(ready_r, 1) == b"1"
    os.kill(pid, signal.SIGKILL)
    assert os.waitpid(pid, 0)[1] != 0

    RESETS.reset()
    RESETS.inc(2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        REQUESTS.labels("/gone", "GET").inc(6)
        REQUESTS.remove("/gone", "GET")
        REQUESTS.labels("/again", "GET").inc(1)
        REQUESTS.remove("/again", "GET")
        REQUESTS.labels("/again", "GET").inc(2)
    JOBS.inc(0.25)
    BYTES.inc(10)

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    sys.stdout.write(generate_latest(registry).decode())
    for w in caught:
        print(f"#WARNING {w.category.__name__}: {w.message}")
    print(f"#VALUE jobs {JOBS._value.get()!r} resets {RESETS._value.get()!r}")


if __name__ == "__main__":
    main()
