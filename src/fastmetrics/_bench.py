"""``python -m fastmetrics bench``: a quick interleaved benchmark, no pytest needed.

Prints one table: for each hot-path operation, ns per call of fastmetrics'
Cython core and its pure-Python twin, next to the *floor* (a no-op Python
method with the same signature), ``prometheus_client`` and, for the handler
operations, pycti's real ``OpenCTIMetricHandler``.

Contract:

* Every (operation, candidate) pair is a *case*.  Each round times one batch of
  every case: operations in a freshly shuffled order, and the candidates of
  one operation (and its thread-count variants) back to back, also shuffled,
  so noise from other processes hits them alike.  ns/op is the median over
  the rounds; every ratio (x floor, x faster) is the median over the rounds
  of that round's ratio, so load that varies between rounds cancels out.
* A batch runs the operation ``n * unroll`` times from a compiled loop whose
  body repeats the statement ``unroll`` times (as ``timeit`` does, with the
  loop overhead amortised); ``n`` is calibrated so a batch lasts about
  ``--quick``'s or the default's target.  GC is off during a batch.
* Thread rows (``... N thr``) run the same loop on N persistent threads at
  once; their ns/op is wall time divided by the total operations of all
  threads (inverse throughput), so equal ns/op means equal throughput.
* pycti's handler module is found as the installed ``pycti`` package's
  ``connector/opencti_metric_handler.py`` or given with ``--pycti FILE``; it is
  loaded from that file alone (it only needs prometheus_client), without
  importing the ``pycti`` package.  Without it the pycti column says so.
* An activated handler starts an HTTP server in this process: ours on
  127.0.0.1, pycti's (real code, unchanged) on 0.0.0.0 on an OS-chosen free
  port.  At most one of each per process; no traffic is sent to them.
* Exit status: 0 after printing, 2 for bad arguments or ``--plot`` without
  matplotlib, 130 when interrupted (Ctrl-C).

The pytest-benchmark suite in ``bench/`` reuses :class:`Subjects`,
:func:`compile_loop` and :class:`ThreadedLoop` so both measure the same code.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import importlib.util
import itertools
import json
import os
import platform
import random
import socket
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, TextIO, Tuple

from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter
from prometheus_client import Enum as PromEnum
from prometheus_client import generate_latest as text_generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_generate_latest

from . import _core_py, metrics

PROG = "fastmetrics bench"

#: Candidate names, as used in benchmark keys (``<candidate>.<op>``) and gates.
FLOOR = "floor"
FM_C = "fastmetrics_c"
FM_PY = "fastmetrics_py"
PROM = "prometheus_client"
PYCTI = "pycti"
CANDIDATES: Tuple[str, ...] = (FLOOR, FM_C, FM_PY, PROM, PYCTI)
#: Display names for the candidates.
LABELS: Dict[str, str] = {
    FLOOR: "floor",
    FM_C: "cython",
    FM_PY: "python",
    PROM: "prometheus_client",
    PYCTI: "pycti",
}

STATES = ("idle", "running", "stopped")
PYCTI_NOT_INSTALLED = "n/a (pycti not installed)"
PYCTI_HANDLER_PATH = ("connector", "opencti_metric_handler.py")


# ---------------------------------------------------------------------------
# The floor: no-op methods with the hot-path signatures.
# ---------------------------------------------------------------------------


class FloorMetric:
    """No-op ``Counter``/``Enum`` stand-in: what a Python method call costs."""

    def inc(self, amount: Any = 1, exemplar: Any = None) -> None:
        pass

    def labels(self, *labelvalues: Any, **labelkwargs: Any) -> "FloorMetric":
        return self

    def state(self, state: Any) -> None:
        pass


class FloorHandler:
    """No-op ``OpenCTIMetricHandler`` stand-in (same ``inc``/``state`` signatures)."""

    def inc(self, name: str, n: Any = 1) -> None:
        pass

    def state(self, state: str, name: str = "state") -> None:
        pass


class NullLogger:
    """The connector logger interface the handlers call (``info``/``error``), silent."""

    def info(self, message: str, meta: Any = None) -> None:
        pass

    def error(self, message: str, meta: Any = None) -> None:
        pass


# ---------------------------------------------------------------------------
# Timing primitives.
# ---------------------------------------------------------------------------


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
    have finished, so timing it measures wall time for ``threads * n * unroll``
    operations.  Workers live until :meth:`close` (they keep their shards);
    ``close`` breaks the barriers, so it also frees workers left waiting by an
    interrupted ``run``.
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


def time_batch(workload: Workload, n: int) -> float:
    """Seconds for one ``workload.run(n)``, GC off (as ``timeit``)."""
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        t0 = time.perf_counter()
        workload.run(n)
        return time.perf_counter() - t0
    finally:
        if gc_was_on:
            gc.enable()


def calibrate(workload: Workload, target_s: float, max_n: int = 1 << 24) -> int:
    """``n`` for which one batch should last about ``target_s``.

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
    return max(1, min(max_n, int(round(n * target_s / best))))


# ---------------------------------------------------------------------------
# What is measured: candidates' objects, built on demand.
# ---------------------------------------------------------------------------


class Unavailable(Exception):
    """A candidate cannot provide a subject (e.g. no floor for a scrape)."""


def load_pycti_handler_module(path: str) -> ModuleType:
    """Load pycti's ``opencti_metric_handler.py`` from ``path`` as a standalone module.

    The file only imports prometheus_client and typing, so the ``pycti``
    package (and its many dependencies) is never imported.  The module is not
    put in ``sys.modules``.
    """
    spec = importlib.util.spec_from_file_location("_fastmetrics_bench_pycti_metric_handler", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "OpenCTIMetricHandler"):
        raise ImportError(f"{path} defines no OpenCTIMetricHandler")
    return module


def find_pycti_handler_file() -> Optional[str]:
    """Path of the installed pycti's handler module, found without importing pycti."""
    try:
        spec = importlib.util.find_spec("pycti")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for base in spec.submodule_search_locations:
        path = os.path.join(base, *PYCTI_HANDLER_PATH)
        if os.path.isfile(path):
            return path
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# Activated handlers start an HTTP server that is never stopped (as pycti's
# does), so each process builds at most one per candidate and reuses it.
_ACTIVE_HANDLERS: Dict[str, Any] = {}
_ACTIVE_LOCK = threading.Lock()


@dataclass
class ScrapeTarget:
    """A private registry holding ``counters`` (each incremented once)."""

    registry: CollectorRegistry
    counters: List[Any]


@dataclass
class Subjects:
    """Builds, per candidate, the object an operation is called on.

    ``pycti_module`` is pycti's loaded handler module, or None with the reason
    in ``pycti_reason``; or ``pycti_loader`` returns ``(module or None,
    where or reason)`` the first time a pycti subject is asked for (so runs
    without pycti cases never fetch it).  Every metric lives in a fresh
    private ``CollectorRegistry``; only the handlers use the default one, as
    in production.
    """

    pycti_module: Optional[ModuleType] = None
    pycti_reason: str = PYCTI_NOT_INSTALLED
    pycti_loader: Optional[Callable[[], Tuple[Optional[ModuleType], str]]] = None
    _cores: Dict[str, Any] = field(default_factory=dict)

    # -- cores ---------------------------------------------------------------

    def core(self, candidate: str) -> Any:
        """The core module behind a fastmetrics candidate (Unavailable if not built)."""
        if candidate not in self._cores:
            if candidate == FM_PY:
                self._cores[candidate] = _core_py
            elif candidate == FM_C:
                try:
                    self._cores[candidate] = importlib.import_module("fastmetrics._core_c")
                except ImportError as exc:
                    raise Unavailable(f"Cython extension not built ({exc})") from None
            else:
                raise Unavailable(f"{candidate} is not a fastmetrics candidate")
        return self._cores[candidate]

    def classes(self, candidate: str) -> Tuple[type, type]:
        """``(Counter, Enum)`` of a metric candidate."""
        if candidate == PROM:
            return PromCounter, PromEnum
        if candidate in (FM_C, FM_PY):
            return metrics.classes_for(self.core(candidate))
        raise Unavailable(f"{candidate} has no Counter/Enum")

    # -- metric subjects -----------------------------------------------------

    def counter(self, candidate: str) -> Any:
        """An unlabelled counter (floor: :class:`FloorMetric`)."""
        if candidate == FLOOR:
            return FloorMetric()
        counter_cls, _ = self.classes(candidate)
        return counter_cls("bench_events", "Events.", registry=CollectorRegistry())

    def parent(self, candidate: str) -> Any:
        """A counter with one label whose child ``'x'`` already exists."""
        if candidate == FLOOR:
            return FloorMetric()
        counter_cls, _ = self.classes(candidate)
        parent = counter_cls("bench_events", "Events.", ["kind"], registry=CollectorRegistry())
        parent.labels("x")
        return parent

    def child(self, candidate: str) -> Any:
        """The ``'x'`` child of :meth:`parent`."""
        if candidate == FLOOR:
            return FloorMetric()
        return self.parent(candidate).labels("x")

    def enum(self, candidate: str) -> Any:
        """An unlabelled enum over idle/running/stopped."""
        if candidate == FLOOR:
            return FloorMetric()
        _, enum_cls = self.classes(candidate)
        return enum_cls("bench_state", "State.", states=list(STATES), registry=CollectorRegistry())

    def scrape_target(self, candidate: str, metrics_count: int) -> ScrapeTarget:
        """``metrics_count`` unlabelled counters in a private registry."""
        if candidate not in (FM_C, FM_PY, PROM):
            raise Unavailable(f"{candidate} has no scrape")
        counter_cls, _ = self.classes(candidate)
        registry = CollectorRegistry()
        counters = [counter_cls(f"bench_m{i}", f"Metric {i}.", registry=registry) for i in range(metrics_count)]
        for counter in counters:
            counter.inc()
        return ScrapeTarget(registry, counters)

    # -- handler subjects ------------------------------------------------------

    def handler(self, candidate: str, activated: bool) -> Any:
        """An ``OpenCTIMetricHandler``; activated ones are built once per process.

        All handlers register in the default REGISTRY, as in production.  Two
        handlers with identical metric names cannot both do that (pycti's
        duplicate-timeseries error), so each candidate gets its own namespace
        (``bench_<candidate>``): names change nothing on the hot path, which
        is a dict lookup plus the metric's own ``inc``/``state``.
        """
        if candidate == FLOOR:
            return FloorHandler()
        cls = self._handler_class(candidate)
        if not activated:
            return self._construct(candidate, cls, False)
        with _ACTIVE_LOCK:
            key = f"{candidate}:{cls.__module__}:{cls.__qualname__}"
            if key not in _ACTIVE_HANDLERS:
                _ACTIVE_HANDLERS[key] = self._construct(candidate, cls, True)
            return _ACTIVE_HANDLERS[key]

    def _handler_class(self, candidate: str) -> type:
        if candidate == PYCTI:
            if self.pycti_module is None and self.pycti_loader is not None:
                loader, self.pycti_loader = self.pycti_loader, None
                self.pycti_module, self.pycti_reason = loader()
            if self.pycti_module is None:
                raise Unavailable(self.pycti_reason)
            return self.pycti_module.OpenCTIMetricHandler  # type: ignore[no-any-return]
        if candidate in (FM_C, FM_PY):
            core = self.core(candidate)
            try:
                opencti = importlib.import_module("fastmetrics.opencti")
            except ImportError as exc:
                raise Unavailable(f"fastmetrics.opencti not importable ({exc})") from None
            return opencti.handler_class_for(core)  # type: ignore[no-any-return]
        raise Unavailable(f"{candidate} has no OpenCTIMetricHandler")

    @staticmethod
    def _construct(candidate: str, cls: type, activated: bool) -> Any:
        namespace, subsystem = f"bench_{candidate}", "connector"
        if candidate == PYCTI:
            # pycti's own signature; port 0 lets the OS pick a free port for
            # the 0.0.0.0 server its constructor starts.
            return cls(NullLogger(), activated, namespace, subsystem, 0)
        port = free_port() if activated else 9095
        return cls(NullLogger(), activated, namespace, subsystem, port, addr="127.0.0.1")


# ---------------------------------------------------------------------------
# The operations.
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """One measured operation.

    ``subject(subjects, candidate)`` builds what ``stmt`` calls (bound to
    ``o``); ``extra`` adds other bindings; ``threads > 0`` runs it on that
    many threads at once (:class:`ThreadedLoop`).
    """

    key: str
    title: str
    stmt: str
    subject: Callable[[Subjects, str], Any]
    candidates: Tuple[str, ...]
    unroll: int = 20
    threads: int = 0
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def family(self) -> str:
        """The key without its thread-count suffix: cases of one family run back to back."""
        return self.key.rsplit(".t", 1)[0] if self.threads else self.key

    def workload(self, subjects: Subjects, candidate: str) -> Workload:
        """The timed workload for ``candidate`` (Unavailable if it has none)."""
        if candidate not in self.candidates:
            raise Unavailable(f"{candidate} has no {self.title}")
        target = self.subject(subjects, candidate)
        bindings = dict(self.extra)
        bindings["o"] = target.registry if isinstance(target, ScrapeTarget) else target
        loop = compile_loop(self.stmt, bindings, self.unroll)
        return ThreadedLoop(loop, self.threads) if self.threads else loop


METRIC_CANDIDATES = (FLOOR, FM_C, FM_PY, PROM)
HANDLER_CANDIDATES = (FLOOR, FM_C, FM_PY, PYCTI)
SCRAPE_CANDIDATES = (FM_C, FM_PY, PROM)


def _on(subjects: Subjects, candidate: str) -> Any:
    return subjects.handler(candidate, True)


def _off(subjects: Subjects, candidate: str) -> Any:
    return subjects.handler(candidate, False)


def metric_ops() -> List[Op]:
    """Counter / Enum hot paths, one thread."""
    return [
        Op("counter.inc", "Counter.inc()", "o.inc()", Subjects.counter, METRIC_CANDIDATES),
        Op("counter.inc_n", "Counter.inc(5)", "o.inc(5)", Subjects.counter, METRIC_CANDIDATES),
        Op("child.inc", "child.inc()", "o.inc()", Subjects.child, METRIC_CANDIDATES),
        Op("labels.inc", "labels('x').inc()", "o.labels('x').inc()", Subjects.parent, METRIC_CANDIDATES),
        Op("enum.state", "Enum.state(s)", "o.state('running')", Subjects.enum, METRIC_CANDIDATES),
    ]


def handler_ops(activated: bool) -> List[Op]:
    """The handler's ``inc(name)``, ``inc(name, n)``, ``state(s)``."""
    prefix, suffix, subject = ("handler", "", _on) if activated else ("handler_off", " [off]", _off)
    return [
        Op(f"{prefix}.inc", f"handler.inc(name){suffix}", "o.inc('bundle_send')", subject, HANDLER_CANDIDATES),
        Op(f"{prefix}.inc_n", f"handler.inc(name, n){suffix}", "o.inc('record_send', 5)", subject,
           HANDLER_CANDIDATES),
        Op(f"{prefix}.state", f"handler.state(s){suffix}", "o.state('running')", subject, HANDLER_CANDIDATES),
    ]


def thread_ops(kind: str, threads: int) -> Op:
    """``Counter.inc()`` (kind ``counter``) or ``Enum.state(s)`` (``enum``) on N threads."""
    if kind == "counter":
        return Op(f"threads.counter.inc.t{threads}", f"Counter.inc() {threads} thr", "o.inc()",
                  Subjects.counter, METRIC_CANDIDATES, threads=threads)
    if kind == "enum":
        return Op(f"threads.enum.state.t{threads}", f"Enum.state(s) {threads} thr", "o.state('running')",
                  Subjects.enum, METRIC_CANDIDATES, threads=threads)
    raise ValueError(kind)


def scrape_op(fmt: str, metrics_count: int) -> Op:
    """One ``generate_latest`` of ``metrics_count`` counters (``fmt``: text / openmetrics)."""
    generate = {"text": text_generate_latest, "openmetrics": openmetrics_generate_latest}[fmt]

    def subject(subjects: Subjects, candidate: str) -> ScrapeTarget:
        return subjects.scrape_target(candidate, metrics_count)

    return Op(f"scrape.{fmt}.m{metrics_count}", f"scrape {metrics_count} ctr ({fmt})", "g(o)", subject,
              SCRAPE_CANDIDATES, unroll=1, extra={"g": generate})


def cli_ops() -> List[Op]:
    """The operations ``python -m fastmetrics bench`` measures, in table order."""
    return [
        *metric_ops(),
        *handler_ops(True),
        *handler_ops(False),
        thread_ops("enum", 1),
        thread_ops("enum", 2),
        scrape_op("text", 10),
        scrape_op("openmetrics", 10),
    ]


# ---------------------------------------------------------------------------
# The interleaved run.
# ---------------------------------------------------------------------------


@dataclass
class Case:
    op: Op
    candidate: str
    workload: Workload
    n: int = 1
    samples: List[float] = field(default_factory=list)  # ns per op, one per round

    @property
    def median_ns(self) -> float:
        return statistics.median(self.samples)


@dataclass
class Settings:
    rounds: int
    target_s: float
    thread_target_s: float


QUICK = Settings(rounds=7, target_s=0.0005, thread_target_s=0.015)
DEFAULT = Settings(rounds=21, target_s=0.002, thread_target_s=0.025)


class Progress:
    """``[k/N]`` on one line of stderr, only when stderr is a terminal."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = total
        self.stream = stream
        self.done = 0
        self.enabled = bool(getattr(stream, "isatty", lambda: False)())

    def step(self, what: str) -> None:
        self.done += 1
        if self.enabled:
            self.stream.write(f"\r{PROG}: [{self.done:4d}/{self.total}] {what[:50]:<50}")
            self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\r" + " " * 80 + "\r")
            self.stream.flush()


def run_cases(
    ops: Sequence[Op],
    subjects: Subjects,
    settings: Settings,
    stderr: TextIO = sys.stderr,
    seed: int = 0,
) -> Tuple[List[Case], Dict[Tuple[str, str], str]]:
    """Measure every available (op, candidate), interleaved; returns the cases
    (one ns/op sample per round each) and, for unavailable pairs, why.

    Each round visits the op *families* (an op and its thread-count variants)
    in a fresh random order and, inside a family, its cases in random order,
    back to back: the ratios between them are then taken round by round.
    """
    cases: List[Case] = []
    missing: Dict[Tuple[str, str], str] = {}
    for op in ops:
        for candidate in op.candidates:
            try:
                cases.append(Case(op, candidate, op.workload(subjects, candidate)))
            except Unavailable as exc:
                missing[(op.key, candidate)] = str(exc)
    families: Dict[str, List[Case]] = {}
    for case in cases:
        families.setdefault(case.op.family, []).append(case)
    groups = list(families.values())
    progress = Progress(len(cases) * (settings.rounds + 1), stderr)
    rng = random.Random(seed)
    try:
        for case in cases:
            target = settings.thread_target_s if case.op.threads else settings.target_s
            case.n = calibrate(case.workload, target)
            progress.step(f"calibrate {case.op.title} {LABELS[case.candidate]}")
        for round_no in range(settings.rounds):
            rng.shuffle(groups)
            for group in groups:
                rng.shuffle(group)
                for case in group:
                    elapsed = time_batch(case.workload, case.n)
                    case.samples.append(elapsed * 1e9 / case.workload.ops(case.n))
                    progress.step(f"round {round_no + 1}/{settings.rounds} {case.op.title} "
                                  f"{LABELS[case.candidate]}")
    finally:
        progress.finish()
        for case in cases:
            case.workload.close()
    return cases, missing


def paired_ratio(numerator: Optional[Case], denominator: Optional[Case]) -> Optional[float]:
    """Median over rounds of numerator / denominator (both measured in each round,
    back to back), or None if either is missing."""
    if numerator is None or denominator is None:
        return None
    ratios = [a / b for a, b in zip(numerator.samples, denominator.samples) if b > 0]
    return statistics.median(ratios) if ratios else None


def summarize(cases: Sequence[Case], ops: Sequence[Op]) -> List[Dict[str, Any]]:
    """One row per measured (op, candidate): median ns/op, and the median per-round
    ratios x floor (ours / floor) and x faster (peer / ours)."""
    by_key: Dict[Tuple[str, str], Case] = {(c.op.key, c.candidate): c for c in cases}
    rows: List[Dict[str, Any]] = []
    for op in ops:
        floor = by_key.get((op.key, FLOOR))
        prom = by_key.get((op.key, PROM))
        pycti = by_key.get((op.key, PYCTI))
        for candidate in (FM_C, FM_PY, FLOOR, PROM, PYCTI):
            case = by_key.get((op.key, candidate))
            if case is None:
                continue
            ours = candidate in (FM_C, FM_PY)
            rows.append({
                "op": op.key,
                "title": op.title,
                "impl": LABELS[candidate],
                "candidate": candidate,
                "ns_per_op": case.median_ns,
                "x_floor": paired_ratio(case, floor),
                "x_faster_than_prometheus_client": paired_ratio(prom, case) if ours else None,
                "x_faster_than_pycti": paired_ratio(pycti, case) if ours else None,
                "pycti_applicable": PYCTI in op.candidates,
            })
    return rows


def thread_scaling(cases: Sequence[Case]) -> Dict[str, Optional[float]]:
    """Per candidate: Enum.state throughput on 2 threads / on 1 thread (per-round ratio)."""
    by_key = {(c.op.key, c.candidate): c for c in cases}
    out: Dict[str, Optional[float]] = {}
    for candidate in METRIC_CANDIDATES:
        one = by_key.get(("threads.enum.state.t1", candidate))
        two = by_key.get(("threads.enum.state.t2", candidate))
        if one is not None and two is not None:
            out[LABELS[candidate]] = paired_ratio(one, two)
    return out


def _fmt_x(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_table(rows: Sequence[Dict[str, Any]], pycti_available: bool) -> str:
    """The human table (one line per row, a blank line between operations)."""
    head = ("op", "impl", "ns/op", "x floor", "x faster than prometheus_client", "x faster than pycti")
    lines = [head]
    previous = None
    for row in rows:
        if previous is not None and row["op"] != previous:
            lines.append(None)  # type: ignore[arg-type]
        previous = row["op"]
        ours = row["candidate"] in (FM_C, FM_PY)
        if not ours or not row["pycti_applicable"]:
            pycti = "-"
        elif not pycti_available:
            pycti = "n/a"
        else:
            pycti = _fmt_x(row["x_faster_than_pycti"])
        lines.append((
            row["title"],
            row["impl"],
            f"{row['ns_per_op']:.1f}",
            _fmt_x(row["x_floor"]),
            _fmt_x(row["x_faster_than_prometheus_client"]) if ours else "-",
            pycti,
        ))
    widths = [max(len(line[i]) for line in lines if line is not None) for i in range(len(head))]
    out = []
    for line in lines:
        if line is None:
            out.append("")
            continue
        cells = [line[0].ljust(widths[0]), line[1].ljust(widths[1])]
        cells += [cell.rjust(width) for cell, width in zip(line[2:], widths[2:])]
        out.append("  ".join(cells).rstrip())
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def plot(rows: Sequence[Dict[str, Any]], path: str, title: str) -> None:
    """Horizontal bars of ns/op per operation and candidate (log scale), the
    scrapes in a second panel (µs per scrape); needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"floor": "#9e9e9e", "cython": "#1b5e20", "python": "#81c784",
              "prometheus_client": "#e65100", "pycti": "#1565c0"}
    order = [LABELS[c] for c in (FLOOR, FM_C, FM_PY, PROM, PYCTI)]
    panels: List[List[str]] = [[], []]  # op titles: calls, scrapes
    for row in rows:
        panel = panels[1 if row["op"].startswith("scrape.") else 0]
        if row["title"] not in panel:
            panel.append(row["title"])
    values = {(row["title"], row["impl"]): row["ns_per_op"] for row in rows}
    sizes = [sum(1 for op in ops for impl in order if (op, impl) in values) + len(ops) for ops in panels]
    panels_present = [(ops, size) for ops, size in zip(panels, sizes) if ops]
    fig, axes = plt.subplots(len(panels_present), 1, squeeze=False,
                             figsize=(9, 0.19 * sum(size for _, size in panels_present) + 1.6),
                             gridspec_kw={"height_ratios": [size for _, size in panels_present]})
    seen = set()
    for ax, (ops, _) in zip(axes[:, 0], panels_present):
        scrape = ops is panels[1]
        scale = 1e-3 if scrape else 1.0
        y, ticks = 0.0, []
        for op in ops:
            impls = [impl for impl in order if (op, impl) in values]
            ticks.append(y + (len(impls) - 1) / 2)
            for impl in impls:
                label = None if impl in seen else impl
                seen.add(impl)
                ax.barh(y, values[(op, impl)] * scale, height=0.85, color=colors[impl], label=label)
                y += 1
            y += 1
        ax.set_yticks(ticks)
        ax.set_yticklabels(ops)
        ax.invert_yaxis()
        if scrape:
            ax.set_xlabel("µs per scrape (lower is better)")
        else:
            ax.set_xscale("log")
            ax.set_xlabel("ns per call (log scale; lower is better)")
        ax.grid(axis="x", which="both", alpha=0.3)
    axes[0, 0].set_title(title)
    axes[0, 0].legend(loc="lower right", fontsize="small", framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------------
# CLI.
# ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds (a few seconds)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (median over them)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--plot", metavar="FILE.png", help="also draw the comparison (needs matplotlib)")
    parser.add_argument("--pycti", metavar="FILE",
                        help="pycti's connector/opencti_metric_handler.py (default: the installed pycti's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-round shuffle")
    return parser


def _pycti(path: Optional[str]) -> Tuple[Optional[ModuleType], str]:
    path = path or find_pycti_handler_file()
    if path is None:
        return None, PYCTI_NOT_INSTALLED
    return load_pycti_handler_module(path), path


def main(argv: Optional[Sequence[str]] = None, stdout: Optional[TextIO] = None,
         stderr: Optional[TextIO] = None) -> int:
    """Run the benchmark and print the table (or JSON); see the module docstring."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    parser = _parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    settings = QUICK if args.quick else DEFAULT
    if args.rounds is not None:
        if args.rounds < 1:
            err.write(f"{PROG}: --rounds must be >= 1\n")
            return 2
        settings = Settings(args.rounds, settings.target_s, settings.thread_target_s)
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        err.write(f"{PROG}: --plot needs matplotlib, which is not installed "
                  "(pip install 'fastmetrics[plot]')\n")
        return 2
    try:
        pycti_module, pycti_where = _pycti(args.pycti)
    except (ImportError, OSError, SyntaxError) as exc:
        err.write(f"{PROG}: cannot load pycti's handler from {args.pycti}: {exc}\n")
        return 2
    subjects = Subjects(pycti_module=pycti_module)
    ops = cli_ops()
    try:
        cases, missing = run_cases(ops, subjects, settings, stderr=err, seed=args.seed)
    except KeyboardInterrupt:
        err.write(f"{PROG}: interrupted\n")
        return 130
    rows = summarize(cases, ops)
    scaling = thread_scaling(cases)
    env = {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "rounds": settings.rounds,
        "pycti": pycti_where,
    }
    if args.json:
        unavailable = [{"op": k[0], "candidate": k[1], "reason": r} for k, r in sorted(missing.items())]
        json.dump({"environment": env, "rows": rows, "enum_state_2_threads_vs_1": scaling,
                   "unavailable": unavailable}, out, indent=2)
        out.write("\n")
    else:
        out.write(f"{PROG}: CPython {env['python']} on {env['machine']} ({env['cpus']} CPUs), "
                  f"median of {settings.rounds} interleaved rounds; ns per call\n")
        hint = "" if pycti_module is not None else " (pass --pycti FILE: pycti's connector/opencti_metric_handler.py)"
        out.write(f"pycti: {pycti_where}{hint}\n\n")
        out.write(format_table(rows, pycti_module is not None) + "\n\n")
        out.write("Enum.state(s) throughput, 2 threads vs 1: "
                  + ", ".join(f"{impl} {_fmt_x(v)}x" for impl, v in scaling.items()) + "\n")
        out.write("x floor: ns/op over the no-op method's; x faster: the peer's ns/op over ours; "
                  "thread rows: wall time / total ops.\n")
        reasons = sorted({reason for (_, cand), reason in missing.items()
                          if cand in (FM_C, FM_PY) or (cand == PYCTI and pycti_module is not None)})
        for reason in reasons:
            out.write(f"not measured: {reason}\n")
    if args.plot:
        plot(rows, args.plot, f"fastmetrics bench (CPython {env['python']}, median ns/op)")
        err.write(f"{PROG}: wrote {args.plot}\n")
    return 0
