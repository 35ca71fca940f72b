"""Subprocess side of ``bench/test_bench_multiprocess.py``; pytest never imports it.

    python _mp_worker.py loop CANDIDATE MODE     # then "N\\n" on stdin -> "ok OPS\\n"
    python _mp_worker.py populate CANDIDATE FILES METRICS
    python _mp_worker.py cold CANDIDATE DIR NAME         # -> {"seconds": S, "sample": "NAME VALUE"}

Multiprocess mode is chosen as in production, by the environment the bench
gives the worker (``FASTMETRICS_MULTIPROC_DIR`` / ``PROMETHEUS_MULTIPROC_DIR``
set before the import); this script only checks it got what it asked for.

``loop``: ``CANDIDATE`` is ``floor``, ``fastmetrics_c`` or ``prometheus_client``
and ``MODE`` ``mp``, ``local`` or (fastmetrics only) ``pmp``: the
prometheus_client-compatible mode (``PROMETHEUS_MULTIPROC_DIR`` set).  It builds the same compiled, unrolled
``c.inc()`` loop as the in-process bench (``fastmetrics._cli.bench.timing``),
prints ``ready UNROLL``, then for every line ``N`` runs ``N * UNROLL``
increments and answers ``ok``.  It exits when stdin closes.

``populate``: forks ``FILES - 1`` children, one at a time; each creates
``METRICS`` counters, increments each once, and exits; then this process does
the same, so ``FILES`` exited processes leave one file each in the directory
(fastmetrics: ``<pid>-<uid>.fm``; prometheus_client: ``counter_<pid>.db``).
Prints ``done``.

``cold``: an exporter process that has never read ``DIR`` (``CANDIDATE``'s
multiprocess directory, of exited processes' files) times its first scrape:
a new registry, the library's ``MultiProcessCollector`` (fastmetrics' with its
default, compaction on), one ``generate_latest``; imports and a garbage
collection happen before the clock starts.  Prints the seconds and the sample
line of metric ``NAME``, as JSON.
"""

from __future__ import annotations

import os
import sys


def _loop(candidate: str, mode: str) -> None:
    import fastmetrics
    from fastmetrics import multiprocess
    from fastmetrics._cli.bench.subjects import FloorMetric
    from fastmetrics._cli.bench.timing import compile_loop, time_batch

    if candidate == "floor":
        counter = FloorMetric()
    elif candidate == "fastmetrics_c":
        if fastmetrics.implementation != "cython":
            sys.exit("the fastmetrics_c candidate needs the Cython extension")
        from fastmetrics.multiprocess import _prometheus

        if (multiprocess.directory() is not None) != (mode == "mp"):
            sys.exit(f"fastmetrics multiprocess directory {multiprocess.directory()!r} in mode {mode}")
        if (_prometheus.directory() is not None) != (mode == "pmp"):
            sys.exit(f"fastmetrics prometheus_client-compatible directory {_prometheus.directory()!r} in mode {mode}")
        counter = fastmetrics.Counter("bench_mp_ops", "Bench.")
    elif candidate == "prometheus_client":
        from prometheus_client import Counter, values

        if (values.ValueClass is not values.MutexValue) != (mode == "mp"):
            sys.exit(f"prometheus_client ValueClass {values.ValueClass!r} in mode {mode}")
        counter = Counter("bench_mp_ops", "Bench.")
    else:
        sys.exit(f"unknown candidate {candidate!r}")
    loop = compile_loop("c.inc()", {"c": counter})
    print("ready", loop.unroll, flush=True)
    for line in sys.stdin:
        n = int(line)
        time_batch(loop, n)   # GC off during the batch, as in process
        print("ok", flush=True)


def _populate(candidate: str, files: int, metrics: int) -> None:
    if candidate == "fastmetrics_c":
        import fastmetrics as lib
    else:
        import prometheus_client as lib   # type: ignore[no-redef]

    def declare_and_count() -> None:
        for i in range(metrics):
            lib.Counter(f"bench_mp_c{i}", f"Counter {i}.").inc()

    for _ in range(files - 1):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                declare_and_count()
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if status:
            sys.exit(f"child {pid} failed with status {status}")
    declare_and_count()   # this process's file is the last one
    print("done", flush=True)


def _cold(candidate: str, directory: str, name: str) -> None:
    import gc
    import json
    import time

    from prometheus_client import CollectorRegistry, generate_latest

    if candidate == "fastmetrics_c":
        import fastmetrics
        from fastmetrics.multiprocess import MultiProcessCollector

        if fastmetrics.implementation != "cython":
            sys.exit("the fastmetrics_c candidate needs the Cython extension")

        def collector(registry: CollectorRegistry) -> object:
            return MultiProcessCollector(registry, directory)
    else:
        from prometheus_client import multiprocess

        def collector(registry: CollectorRegistry) -> object:
            return multiprocess.MultiProcessCollector(registry, path=directory)
    gc.collect()
    t0 = time.perf_counter()
    registry = CollectorRegistry()
    collector(registry)
    text = generate_latest(registry).decode()
    seconds = time.perf_counter() - t0
    sample = next((line for line in text.splitlines() if line.startswith(name + " ")), None)
    print(json.dumps({"seconds": seconds, "sample": sample}), flush=True)


def main() -> None:
    role, candidate = sys.argv[1], sys.argv[2]
    if role == "loop":
        _loop(candidate, sys.argv[3])
    elif role == "cold":
        _cold(candidate, sys.argv[3], sys.argv[4])
    else:
        _populate(candidate, int(sys.argv[3]), int(sys.argv[4]))


if __name__ == "__main__":
    main()
