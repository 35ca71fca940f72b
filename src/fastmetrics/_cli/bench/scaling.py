"""Scrape cost and memory when T threads have touched S series (issue 14).

One Counter with one label and S children; T threads each increment every
child once, then stay alive (parked) while the process is measured.

Contract:

* :func:`measure_cell` runs fresh worker subprocesses (``python -m
  fastmetrics._cli.bench.scaling``), never this process, so neither library's
  earlier state (shards, pooled threads, freed memory) colours the numbers:

  - **memory**: one worker per library, holding only that library's metric;
    ``rss_added_kib`` is the resident set size after the T threads have
    incremented, minus before they started (the S children already exist);
  - **scrape**: one worker holding both libraries' metrics, incremented by the
    same parked threads; it times ``generate_latest`` (text format) of each
    library's registry, alternating, ``rounds`` times each, so load from the
    rest of the machine hits both alike.  The ratio is the median of
    fastmetrics' over the median of prometheus_client's.

* The worker uses the Cython core (``FASTMETRICS_NO_EXTENSIONS`` is removed
  from its environment); it fails (non-zero exit, reason on stderr) without it.
* Linux only for memory (``/proc/self/statm``); elsewhere ``rss_added_kib``
  is None.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

#: The cells of the docs table (threads, series) and of the gates.
TABLE_THREADS: Sequence[int] = (1, 64, 256, 1024)
TABLE_SERIES: Sequence[int] = (10_000, 100_000)
GATE_THREADS: Sequence[int] = (64, 1024)
GATE_SERIES = 10_000
TIMEOUT_S = 1800.0

FM, PROM = "fastmetrics", "prometheus_client"


def rss_kib() -> Optional[int]:
    """Resident set size of this process in KiB (Linux), or None."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError, AttributeError):
        return None


@dataclass(frozen=True)
class Cell:
    """One (threads, series) measurement."""

    threads: int
    series: int
    fm_scrape_s: float            # median seconds per scrape
    prom_scrape_s: float
    fm_rss_added_kib: Optional[int]
    prom_rss_added_kib: Optional[int]
    shards_total: int             # fastmetrics' shards after the threads incremented

    @property
    def scrape_ratio(self) -> float:
        return self.fm_scrape_s / self.prom_scrape_s

    @property
    def memory_ratio(self) -> Optional[float]:
        if self.fm_rss_added_kib is None or not self.prom_rss_added_kib:
            return None
        return self.fm_rss_added_kib / self.prom_rss_added_kib


# -- the worker ------------------------------------------------------------------


def _children(library: str, registry: Any, series: int) -> List[Any]:
    if library == FM:
        from fastmetrics import Counter
    else:
        from prometheus_client import Counter  # type: ignore[assignment]
    parent = Counter("scaling_requests", "Requests.", ["key"], registry=registry)
    return [parent.labels(str(i)) for i in range(series)]


class ParkedWriters:
    """``threads`` threads that each increment every child of every list once,
    then wait, alive (keeping their shards live), until :meth:`release`.
    Also used by ``bench/test_bench_scrape.py``."""

    def __init__(self, lists: List[List[Any]], threads: int) -> None:
        self._release = threading.Event()
        self._ready = threading.Barrier(threads + 1)
        self._threads = [threading.Thread(target=self._run, args=(lists,), daemon=True) for _ in range(threads)]
        for thread in self._threads:
            thread.start()
        self._ready.wait()

    def _run(self, lists: List[List[Any]]) -> None:
        for children in lists:
            for child in children:
                child.inc()
        self._ready.wait()
        self._release.wait()

    def release(self) -> None:
        self._release.set()
        for thread in self._threads:
            thread.join()


class _State:
    """A worker's metrics, parked threads and measurements."""

    def __init__(self, libraries: List[str], threads: int, series: int) -> None:
        import fastmetrics
        from fastmetrics import _core
        from prometheus_client import CollectorRegistry, generate_latest

        if fastmetrics.implementation != "cython":
            raise SystemExit("fastmetrics bench scaling: needs the Cython core")
        threading.stack_size(256 * 1024)   # the same for both libraries; 1,024 threads fit anywhere
        self.registries = {lib: CollectorRegistry() for lib in libraries}
        lists = [_children(lib, self.registries[lib], series) for lib in libraries]
        gc.collect()
        before = rss_kib()
        self.parked = ParkedWriters(lists, threads)
        gc.collect()
        after = rss_kib()
        self.rss_added_kib = None if before is None or after is None else after - before
        self.shards_total = int(_core.stats()["shards_total"]) if FM in libraries else 0
        self.scrape = generate_latest
        for lib in libraries:  # warm-up, and a check that every child is there with its count
            text = generate_latest(self.registries[lib]).decode()
            if f'scaling_requests_total{{key="{series - 1}"}} {float(threads)}' not in text:
                raise SystemExit(f"fastmetrics bench scaling: {lib}'s scrape lacks the last series")


def _serve(threads: int, series: int) -> None:
    """Hold both libraries' metrics; on each stdin line ``LIBRARY N`` scrape
    that library's registry N times and answer ``ok``; exit at EOF."""
    state = _State([FM, PROM], threads, series)
    gc.collect()
    gc.disable()   # nothing is allocated between scrapes: a collection would only add noise
    print(f"ready {state.shards_total}", flush=True)
    for line in sys.stdin:
        lib, n = line.split()
        registry = state.registries[lib]
        for _ in range(int(n)):
            state.scrape(registry)
        print("ok", flush=True)
    state.parked.release()


def _worker(mode: str, threads: int, series: int, rounds: int) -> Dict[str, Any]:
    libraries = [FM, PROM] if mode == "scrape" else [mode]
    state = _State(libraries, threads, series)
    registries, generate_latest, parked = state.registries, state.scrape, state.parked
    result: Dict[str, Any] = {"rss_added_kib": state.rss_added_kib, "shards_total": state.shards_total}
    if mode == "scrape":
        times: Dict[str, List[float]] = {lib: [] for lib in libraries}
        gc.disable()
        for i in range(rounds):
            for lib in (libraries if i % 2 == 0 else libraries[::-1]):
                t0 = time.perf_counter()
                generate_latest(registries[lib])
                times[lib].append(time.perf_counter() - t0)
        gc.enable()
        result["scrape_s"] = {lib: statistics.median(ts) for lib, ts in times.items()}
    parked.release()
    return result


def _run_worker(mode: str, threads: int, series: int, rounds: int) -> Dict[str, Any]:
    proc = subprocess.run(worker_command(mode, threads, series, rounds), env=worker_env(), capture_output=True,
                          text=True, timeout=TIMEOUT_S)
    if proc.returncode != 0:
        raise RuntimeError(f"scaling worker {mode} T={threads} S={series} failed ({proc.returncode}): "
                           f"{proc.stderr.strip()[-500:]}")
    result: Dict[str, Any] = json.loads(proc.stdout)
    return result


def measure_cell(threads: int, series: int, rounds: int = 15, memory: bool = True) -> Cell:
    """Measure one cell in fresh subprocesses (see the module docstring)."""
    scrape = _run_worker("scrape", threads, series, rounds)
    fm_mem = _run_worker(FM, threads, series, 0) if memory else {"rss_added_kib": None, "shards_total": 0}
    prom_mem = _run_worker(PROM, threads, series, 0) if memory else {"rss_added_kib": None}
    return Cell(threads, series, scrape["scrape_s"][FM], scrape["scrape_s"][PROM],
                fm_mem["rss_added_kib"], prom_mem["rss_added_kib"], scrape["shards_total"])


def markdown_table(cells: Sequence[Cell]) -> List[str]:
    """The docs table: one row per cell."""
    lines = ["| S series | T threads | scrape fastmetrics | scrape prometheus_client | scrape ratio "
             "| RSS added fastmetrics | RSS added prometheus_client | RSS ratio | shards |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for cell in cells:
        def mib(kib: Optional[int]) -> str:
            return "n/a" if kib is None else f"{kib / 1024:.1f} MiB"
        ratio = cell.memory_ratio
        lines.append(f"| {cell.series:,} | {cell.threads:,} | {cell.fm_scrape_s * 1e3:.1f} ms "
                     f"| {cell.prom_scrape_s * 1e3:.1f} ms | {cell.scrape_ratio:.2f} "
                     f"| {mib(cell.fm_rss_added_kib)} | {mib(cell.prom_rss_added_kib)} "
                     f"| {'n/a' if ratio is None else f'{ratio:.2f}'} | {cell.shards_total} |")
    return lines


def worker_command(mode: str, threads: int, series: int, rounds: int = 0) -> List[str]:
    """The command line of a worker (``serve``, ``scrape``, or a library's
    memory worker)."""
    return [sys.executable, "-m", "fastmetrics._cli.bench.scaling", mode, str(threads), str(series), str(rounds)]


def worker_env() -> Dict[str, str]:
    """A worker's environment: the Cython core, single-process mode."""
    return {k: v for k, v in os.environ.items()
            if k not in ("FASTMETRICS_NO_EXTENSIONS", "FASTMETRICS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROC_DIR",
                         "prometheus_multiproc_dir")}


if __name__ == "__main__":
    _mode, _threads, _series, _rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    if _mode == "serve":
        _serve(_threads, _series)
    else:
        json.dump(_worker(_mode, _threads, _series, _rounds), sys.stdout)
