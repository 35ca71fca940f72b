"""Throughput on 1, 2 and 4 threads: ``Counter.inc()`` and ``Enum.state(s)``.

Each round releases N persistent threads that each run a calibrated batch on
the same metric; the stored time is wall time / total operations of all
threads (inverse throughput).  Keys: ``<candidate>.threads.counter.inc.tN``
and ``<candidate>.threads.enum.state.tN``; ``A.t1 / A.t2 >= 0.9`` reads
"2 threads keep at least 0.9x the throughput of one".

``private.threads.enum.state.tN`` is the control the Enum gate is normalised
by: the same compiled loop (``o.state('running')``) where each thread calls a
no-op object of its own, so nothing is shared and its t1/t2 is what this run's
machine and interpreter give a second thread.
"""

from __future__ import annotations

from typing import Any

import pytest

from _harness import PerThreadLoops

from fastmetrics._cli.bench.ops import thread_ops
from fastmetrics._cli.bench.subjects import METRIC_CANDIDATES, FloorMetric
from fastmetrics._cli.bench.timing import ThreadedLoop, compile_loop

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


@pytest.mark.parametrize("threads", THREADS, ids=[f"t{n}" for n in THREADS])
def test_threads_enum_state_private_control(measure: Any, threads: int) -> None:
    op = thread_ops("enum", threads)
    loops = PerThreadLoops(lambda: compile_loop(op.stmt, {"o": FloorMetric()}, op.unroll))
    measure(ThreadedLoop(loops, threads), "private", op.key, threads=True)
