"""The nogil C API: ``counter_add`` from a downstream Cython module, 1 and 2 threads,
next to a deliberately shared single atomic counter.

The downstream module is the one ``tests/test_nogil_api.py`` compiles (source and
build in ``tests/_downstream.py``, loaded here by path), built once per session
exactly as a user would.  Each round runs a 10,000,000-iteration nogil loop
(``hammer(c, n, 1.0)`` / ``hammer_shared(n)``) on each of N persistent threads;
the stored time is wall time / total increments (inverse throughput), so
``A.t1 / A.t2 >= 1.8`` reads "2 threads give >= 1.8x the 1-thread throughput".
Keys: ``fastmetrics_c.nogil.add.tN`` (sharded counter),
``shared_atomic.nogil.add.tN`` (one ``__atomic_fetch_add`` word for all threads)
and ``private.nogil.add.tN`` (the control: the same loop on a word of each
thread's own stack, nothing shared, so its t1/t2 is what the machine gives a
second thread in this run; the scaling gate is normalised by it).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Callable

import pytest

import fastmetrics
from fastmetrics._cli.bench.timing import ThreadedLoop, Workload

THREADS = (1, 2)
LOOP = 10_000_000  # increments per thread per round
pytestmark = pytest.mark.bench_phase(30)

_DOWNSTREAM = Path(__file__).resolve().parent.parent / "tests" / "_downstream.py"


def _load_downstream_helper() -> Any:
    spec = importlib.util.spec_from_file_location("_fm_downstream_helper", _DOWNSTREAM)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def downstream(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if fastmetrics.implementation != "cython":
        pytest.skip(f"the nogil C API needs the Cython extension (implementation: {fastmetrics.implementation})")
    return _load_downstream_helper().build(tmp_path_factory.mktemp("downstream"))


class NogilLoop(Workload):
    """``run(n)``: one call of a downstream function that loops ``n`` times without the GIL."""

    def __init__(self, call: Callable[[int], Any]) -> None:
        self.call = call

    def run(self, n: int) -> None:
        if self.call(n):
            raise RuntimeError("counter_add returned -1")

    def ops(self, n: int) -> int:
        return n


@pytest.mark.parametrize("threads", THREADS, ids=[f"t{n}" for n in THREADS])
@pytest.mark.parametrize("candidate", ["fastmetrics_c", "shared_atomic", "private"])
def test_nogil_add(measure: Any, downstream: Any, candidate: str, threads: int) -> None:
    if candidate == "fastmetrics_c":
        counter = fastmetrics.Counter("nogil_bench", "Nogil bench.", registry=None)
        loop = NogilLoop(lambda n: downstream.hammer(counter, n, 1.0))
    elif candidate == "shared_atomic":
        loop = NogilLoop(downstream.hammer_shared)
    else:
        loop = NogilLoop(downstream.hammer_private)
    measure(ThreadedLoop(loop, threads), candidate, f"nogil.add.t{threads}",
            threads=True, n=LOOP, loop=LOOP)
