"""Memory after thread churn: many short-lived threads that each increment.

Each round starts ``CONCURRENCY`` threads at a time until ``threads_per_round``
threads (500 quick, 2000 otherwise) have each done one ``inc()`` on the same
counter and exited.  The
time is per thread (start + first increment + exit).  ``extra_info`` records
RSS before/after all rounds and, for fastmetrics, ``shard_stats()`` before/after.

The invariant checked (not a timing): fastmetrics pools a dead thread's shard
for the next thread, so churn never creates more shards than the threads
alive at once.  Keys: ``<candidate>.churn.thread``; no gate uses them.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Dict

import pytest
from _harness import Measure, unavailable  # type: ignore[import-not-found]

from fastmetrics._cli.bench.subjects import OURS, SCRAPE_CANDIDATES, Subjects, Unavailable
from fastmetrics._cli.bench.timing import Workload

CONCURRENCY = 8
pytestmark = pytest.mark.bench_phase(30)


def rss_kib() -> int:
    """Resident set size of this process in KiB (Linux /proc; else peak RSS)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError, AttributeError):
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


class Churn(Workload):
    """``run(n)``: ``n`` threads, ``CONCURRENCY`` at a time, each ``counter.inc()`` once."""

    def __init__(self, counter: Any) -> None:
        self.counter = counter

    def run(self, n: int) -> None:
        done = 0
        while done < n:
            batch = [threading.Thread(target=self.counter.inc) for _ in range(min(CONCURRENCY, n - done))]
            for thread in batch:
                thread.start()
            for thread in batch:
                thread.join()
            done += len(batch)

    def ops(self, n: int) -> int:
        return n


@pytest.mark.parametrize("candidate", SCRAPE_CANDIDATES)
def test_thread_churn(measure: Measure, subjects: Subjects, candidate: str) -> None:
    try:
        counter = subjects.counter(candidate)
    except Unavailable as exc:
        unavailable(candidate, str(exc))
    ours = candidate in OURS
    before: Dict[str, int] = subjects.core(candidate).stats() if ours else {}
    rss_before = rss_kib()
    workload = Churn(counter)
    per_round = 500 if measure.settings.quick else 2000
    measure(workload, candidate, "churn.thread", threads=True, n=per_round, concurrency=CONCURRENCY)
    rss_after = rss_kib()
    after: Dict[str, int] = subjects.core(candidate).stats() if ours else {}
    info = measure.benchmark.extra_info
    info.update(rss_kib_before=rss_before, rss_kib_after=rss_after, rss_kib_delta=rss_after - rss_before,
                threads_churned=per_round * (measure.settings.thread_rounds + 1))  # + the warm-up round
    if ours:
        info.update({f"{k}_before": v for k, v in before.items()})
        info.update({f"{k}_after": v for k, v in after.items()})
        grown = after["shards_total"] - before["shards_total"]
        assert grown <= CONCURRENCY, f"thread churn created {grown} shards (> {CONCURRENCY} alive at once)"
