"""Scrape cost as metrics and threads grow: ``generate_latest`` in text format and
``prometheus_client.openmetrics.exposition.generate_latest``.

A private registry holds M unlabelled counters; T threads have incremented
every one of them and stay alive during the measurement.  Grid: M in 1, 10,
100 with T = 1, and M = 10 with T in 4, 16.  Keys:
``<candidate>.scrape.<text|openmetrics>.m<M>.t<T>``; ``extra_info`` records
``shards_total`` for fastmetrics.

fastmetrics folds every shard the process has made: one per thread alive at
once, up to its bound (exclusive shards plus stripes, set by the CPUs; pooled,
never freed), so these benchmarks run first, in increasing T
(``bench_phase``); prometheus_client's cost does not depend on T.
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest
from _harness import Measure, unavailable  # type: ignore[import-not-found]

from fastmetrics._cli.bench.ops import SCRAPE_FORMATS
from fastmetrics._cli.bench.scaling import ParkedWriters
from fastmetrics._cli.bench.subjects import OURS, SCRAPE_CANDIDATES, Subjects, Unavailable
from fastmetrics._cli.bench.timing import compile_loop

GRID = [(1, 1), (10, 1), (100, 1), (10, 4), (10, 16)]
PHASE_BY_THREADS = {1: 0, 4: 1, 16: 2}


def _grid() -> Iterator[Any]:
    for metrics_count, threads in GRID:
        yield pytest.param(metrics_count, threads, id=f"m{metrics_count}-t{threads}",
                           marks=pytest.mark.bench_phase(PHASE_BY_THREADS[threads]))


@pytest.mark.parametrize("fmt", sorted(SCRAPE_FORMATS))
@pytest.mark.parametrize(("metrics_count", "threads"), list(_grid()))
@pytest.mark.parametrize("candidate", SCRAPE_CANDIDATES)
def test_scrape(measure: Measure, subjects: Subjects, candidate: str, metrics_count: int,
                threads: int, fmt: str) -> None:
    try:
        target = subjects.scrape_target(candidate, metrics_count)
    except Unavailable as exc:
        unavailable(candidate, str(exc))
    writers = ParkedWriters([target.counters], threads)
    try:
        extra = {}
        if candidate in OURS:
            extra["shards_total"] = subjects.core(candidate).stats()["shards_total"]
        workload = compile_loop("g(o)", {"g": SCRAPE_FORMATS[fmt], "o": target.registry}, unroll=1)
        measure(workload, candidate, f"scrape.{fmt}.m{metrics_count}.t{threads}",
                metrics=metrics_count, writer_threads=threads, **extra)
    finally:
        writers.release()
