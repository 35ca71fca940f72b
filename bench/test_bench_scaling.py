"""Scrape and memory when T threads have touched S series (issue 14): the
bounds that follow the cores, not the threads, measured against
prometheus_client at T in 64 and 1,024, S = 10,000 (the gated cells; the
whole T x S table is ``python -m fastmetrics bench-scaling``'s, in
docs/benchmarks.md).  See :mod:`fastmetrics._cli.bench.scaling` for the
workload: one Counter with S labelled children, each of T parked threads
incremented every child once.

**scrape.** One worker subprocess per T holds both libraries' metrics,
incremented by the same parked threads; this process drives it over a pipe
(``LIBRARY N`` -> N scrapes -> ``ok``; the round trip is ~0.1 ms of a ~60 ms
scrape).  Keys: ``<candidate>.many_threads.scrape.t<T>.s<S>``, seconds per scrape.

**memory.** One fresh worker per (library, T): the resident set size added
by the T threads (the S children existed before they started), measured once
per session (it does not vary with load).  Keys:
``<candidate>.many_threads.rss.t<T>.s<S>``, whose values are KiB, not seconds:
only their ratio is gated.
"""

from __future__ import annotations

import json
import subprocess
from typing import Dict, Iterator, Tuple

import pytest
from _harness import Measure, record_value, unavailable  # type: ignore[import-not-found]

import fastmetrics
from fastmetrics._cli.bench.scaling import FM, GATE_SERIES, GATE_THREADS, PROM, TIMEOUT_S, worker_command, worker_env
from fastmetrics._cli.bench.subjects import FM_C
from fastmetrics._cli.bench.timing import Workload

pytestmark = pytest.mark.bench_phase(35)
CANDIDATES = {FM_C: FM, "prometheus_client": PROM}


def _need_extension(candidate: str) -> None:
    if candidate == FM_C and fastmetrics.implementation != "cython":
        unavailable(candidate, f"needs the Cython extension (implementation: {fastmetrics.implementation})")


class ScrapeServer:
    """A ``scaling serve`` worker: both libraries' metrics, T parked threads."""

    def __init__(self, threads: int, series: int) -> None:
        self.proc = subprocess.Popen(worker_command("serve", threads, series), env=worker_env(),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.shards_total = int(self._reply("ready"))

    def _reply(self, word: str) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()   # the worker answers or exits (EOF): never blocks forever
        if not line.startswith(word):
            self.proc.wait(timeout=TIMEOUT_S)
            raise RuntimeError(f"scaling worker exited with {self.proc.returncode} instead of {word!r}")
        return line[len(word):].strip()

    def scrape(self, library: str, n: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{library} {n}\n")
        self._reply("ok")

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT_S)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class RemoteScrape(Workload):
    """``run(n)``: the server scrapes one library's registry n times; the
    server outlives the measurement (the session fixture stops it)."""

    def __init__(self, server: ScrapeServer, library: str) -> None:
        self.server = server
        self.library = library

    def run(self, n: int) -> None:
        self.server.scrape(self.library, n)

    def ops(self, n: int) -> int:
        return n


@pytest.fixture(scope="session")
def scrape_servers() -> Iterator[Dict[Tuple[int, int], ScrapeServer]]:
    """(threads, series) -> its server, started on first use."""
    servers: Dict[Tuple[int, int], ScrapeServer] = {}
    yield servers
    for server in servers.values():
        server.close()


@pytest.mark.parametrize("threads", GATE_THREADS, ids=[f"t{t}" for t in GATE_THREADS])
@pytest.mark.parametrize("candidate", sorted(CANDIDATES))
def test_scrape_with_many_threads(measure: Measure, scrape_servers: Dict[Tuple[int, int], ScrapeServer],
                                  candidate: str, threads: int) -> None:
    _need_extension(FM_C)   # the server runs the Cython core for both rows
    server = scrape_servers.get((threads, GATE_SERIES))
    if server is None:
        server = scrape_servers[(threads, GATE_SERIES)] = ScrapeServer(threads, GATE_SERIES)
    measure(RemoteScrape(server, CANDIDATES[candidate]), candidate,
            f"many_threads.scrape.t{threads}.s{GATE_SERIES}", n=1, threads_parked=threads, series=GATE_SERIES,
            shards_total=server.shards_total)


@pytest.mark.parametrize("threads", GATE_THREADS, ids=[f"t{t}" for t in GATE_THREADS])
@pytest.mark.parametrize("candidate", sorted(CANDIDATES))
def test_memory_with_many_threads(benchmark: object, candidate: str, threads: int) -> None:
    _need_extension(FM_C)
    proc = subprocess.run(worker_command(CANDIDATES[candidate], threads, GATE_SERIES), env=worker_env(),
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    if result["rss_added_kib"] is None:
        pytest.skip("no resident set size on this platform (/proc/self/statm)")
    record_value(benchmark, candidate, f"many_threads.rss.t{threads}.s{GATE_SERIES}", float(result["rss_added_kib"]),
                 unit="KiB", threads_parked=threads, series=GATE_SERIES, shards_total=result["shards_total"])
