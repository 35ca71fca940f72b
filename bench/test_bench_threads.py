"""Throughput on 1, 2 and 4 threads: ``Counter.inc()`` and ``Enum.state(s)``.

Each round releases N persistent threads that each run a calibrated batch on
the same metric; the stored time is wall time / total operations of all
threads (inverse throughput).  Keys: ``<candidate>.threads.counter.inc.tN``
and ``<candidate>.threads.enum.state.tN``; ``A.t1 / A.t2 >= 0.9`` reads
"2 threads keep at least 0.9x the throughput of one".
"""

from __future__ import annotations

from typing import Any

import pytest

from fastmetrics._cli.bench.ops import thread_ops
from fastmetrics._cli.bench.subjects import METRIC_CANDIDATES

THREADS = (1, 2, 4)
pytestmark = pytest.mark.bench_phase(20)


@pytest.mark.parametrize("threads", THREADS, ids=[f"t{n}" for n in THREADS])
@pytest.mark.parametrize("candidate", METRIC_CANDIDATES)
def test_threads_counter_inc(run_op: Any, candidate: str, threads: int) -> None:
    run_op(thread_ops("counter", threads), candidate)


@pytest.mark.parametrize("threads", THREADS, ids=[f"t{n}" for n in THREADS])
@pytest.mark.parametrize("candidate", METRIC_CANDIDATES)
def test_threads_enum_state(run_op: Any, candidate: str, threads: int) -> None:
    run_op(thread_ops("enum", threads), candidate)
