"""Timing primitives: workloads, the compiled loop, threads, batches, calibration.

Contract:

* A :class:`Workload` runs ``ops(n)`` operations when called as ``run(n)``.
* :class:`CompiledLoop` runs one statement ``n * unroll`` times from a compiled
  loop whose body repeats it ``unroll`` times (as ``timeit`` does, with the
  loop's own cost amortised); its bindings are fast locals.
* :class:`ThreadedLoop` runs a workload on N persistent threads at once; its
  ``ops`` is the total over all threads, so time / ops is inverse throughput.
* :func:`time_batch` times one ``run(n)`` with the cyclic GC off
  (:func:`gc_paused`); :func:`calibrate` finds the ``n`` for a target batch time.

The pytest-benchmark suite in ``bench/`` uses these too, so both measure alike.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Mapping


class Workload:
    """Something that runs ``ops(n)`` operations when called as ``run(n)``."""

    def run(self, n: int) -> None:
        raise NotImplementedError

    def ops(self, n: int) -> int:
        raise NotImplementedError

    def close(self) -> None:
        """Release resources (threads); idempotent."""


class CompiledLoop(Workload):
    """``run(n)`` executes ``stmt`` ``n * unroll`` times from a compiled loop.

    The names in ``bindings`` become fast locals (default arguments), the loop
    is ``for _ in itertools.repeat(None, n)`` like ``timeit``'s, and the body
    repeats the statement ``unroll`` times to amortise the loop's own cost.
    ``ValueError`` for ``unroll < 1`` or a binding name that is not a public
    identifier; ``SyntaxError`` for a bad statement.
    """

    def __init__(self, stmt: str, bindings: Mapping[str, Any], unroll: int = 20) -> None:
        if unroll < 1:
            raise ValueError("unroll must be >= 1")
        for name in bindings:
            if not name.isidentifier() or name.startswith("_"):
                raise ValueError(f"bad binding name {name!r}")
        compile(stmt, "<bench stmt>", "exec")  # SyntaxError early, with the statement
        params = "".join(f", {name}=_b_{name}" for name in bindings)
        body = "".join(f"        {stmt}\n" for _ in range(unroll))
        src = f"def _run(_n{params}):\n    for _ in _repeat(None, _n):\n{body}"
        namespace: Dict[str, Any] = {"_repeat": itertools.repeat}
        namespace.update({f"_b_{name}": value for name, value in bindings.items()})
        exec(compile(src, f"<bench: {stmt}>", "exec"), namespace)
        self.stmt = stmt
        self.unroll = unroll
        self._run: Callable[[int], None] = namespace["_run"]

    def run(self, n: int) -> None:
        self._run(n)

    def ops(self, n: int) -> int:
        return n * self.unroll


def compile_loop(stmt: str, bindings: Mapping[str, Any], unroll: int = 20) -> CompiledLoop:
    """A :class:`CompiledLoop` for ``stmt`` over ``bindings``."""
    return CompiledLoop(stmt, bindings, unroll)


class ThreadedLoop(Workload):
    """Runs ``loop.run(n)`` on ``threads`` persistent threads at once.

    ``run(n)`` releases every worker through a barrier and returns when all
    have finished (re-raising the first exception a worker raised), so timing
    it measures wall time for ``threads * loop.ops(n)`` operations.  Workers
    live until :meth:`close` (they keep their shards); ``close`` breaks the
    barriers, so it also frees workers left waiting by an interrupted ``run``.
    """

    def __init__(self, loop: Workload, threads: int) -> None:
        if threads < 1:
            raise ValueError("threads must be >= 1")
        self.loop = loop
        self.threads = threads
        self._n = 0
        self._closed = False
        self._errors: List[BaseException] = []
        self._start = threading.Barrier(threads + 1)
        self._done = threading.Barrier(threads + 1)
        self._workers = [
            threading.Thread(target=self._work, name=f"bench-worker-{i}", daemon=True) for i in range(threads)
        ]
        for worker in self._workers:
            worker.start()

    def _work(self) -> None:
        try:
            while True:
                self._start.wait()
                try:
                    self.loop.run(self._n)
                except Exception as exc:  # re-raised by run() in the calling thread
                    self._errors.append(exc)
                self._done.wait()
        except threading.BrokenBarrierError:  # close()
            return

    def run(self, n: int) -> None:
        if self._closed:
            raise RuntimeError("ThreadedLoop is closed")
        self._n = n
        self._start.wait()
        self._done.wait()
        if self._errors:
            raise self._errors[0]

    def ops(self, n: int) -> int:
        return self.threads * self.loop.ops(n)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._start.abort()
        self._done.abort()
        for worker in self._workers:
            worker.join()


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic GC off inside the block (as ``timeit``), restored after: a
    collection triggered by one candidate's garbage must not land on another's
    batch."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def time_batch(workload: Workload, n: int) -> float:
    """Seconds for one ``workload.run(n)``, GC off."""
    with gc_paused():
        t0 = time.perf_counter()
        workload.run(n)
        return time.perf_counter() - t0


def calibrate(workload: Workload, target_s: float, max_n: int = 1 << 24) -> int:
    """``n`` (1 to ``max_n``) for which one batch should last about ``target_s``.

    Grows ``n`` until a batch lasts a quarter of the target, then sizes it from
    the fastest of three batches at that ``n``: a stall from another process
    can only make a batch slower, so it can only make the batch longer, never
    cut the calibration short.  Also serves as the warm-up.
    """
    n = 1
    while n < max_n:
        elapsed = time_batch(workload, n)
        if elapsed >= target_s / 4:
            break
        grow = 10.0 if elapsed <= 0 else min(10.0, 0.3 * target_s / elapsed)
        n = min(max_n, max(n + 1, int(n * grow)))
    best = min(time_batch(workload, n) for _ in range(3))
    if best <= 0:
        return max_n
    return max(1, min(max_n, round(n * target_s / best)))
