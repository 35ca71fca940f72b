"""The measured operations: what ``fastmetrics bench`` and ``bench/`` time.

An :class:`Op` is one statement called on a candidate's subject; its ``key``
is the ``<op>`` part of a benchmark key ``<candidate>.<op>`` (as the gates in
``bench/gates.toml`` name them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Tuple

from prometheus_client import generate_latest as text_generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_generate_latest

from .subjects import HANDLER_CANDIDATES, METRIC_CANDIDATES, SCRAPE_CANDIDATES, ScrapeTarget, Subjects, Unavailable
from .timing import ThreadedLoop, Workload, compile_loop

#: ``generate_latest`` of each exposition format, by name.
SCRAPE_FORMATS: Dict[str, Callable[[Any], bytes]] = {
    "text": text_generate_latest,
    "openmetrics": openmetrics_generate_latest,
}


@dataclass(frozen=True)
class Op:
    """One measured operation.

    ``subject(subjects, candidate)`` builds what ``stmt`` calls (bound to
    ``o``; a :class:`ScrapeTarget` binds its registry); ``extra`` adds other
    bindings; ``threads > 0`` runs it on that many threads at once
    (:class:`ThreadedLoop`).
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
    """One ``generate_latest`` of ``metrics_count`` counters (``fmt``: a key of :data:`SCRAPE_FORMATS`)."""

    def subject(subjects: Subjects, candidate: str) -> ScrapeTarget:
        return subjects.scrape_target(candidate, metrics_count)

    return Op(f"scrape.{fmt}.m{metrics_count}", f"scrape {metrics_count} ctr ({fmt})", "g(o)", subject,
              SCRAPE_CANDIDATES, unroll=1, extra={"g": SCRAPE_FORMATS[fmt]})


#: The thread-scaling rows of the CLI: ``Enum.state(s)`` on 1 and on 2 threads.
ENUM_T1 = thread_ops("enum", 1)
ENUM_T2 = thread_ops("enum", 2)


def cli_ops() -> List[Op]:
    """The operations ``fastmetrics bench`` measures, in table order."""
    return [
        *metric_ops(),
        *handler_ops(True),
        *handler_ops(False),
        ENUM_T1,
        ENUM_T2,
        scrape_op("text", 10),
        scrape_op("openmetrics", 10),
    ]
