"""Helpers to compare fastmetrics' exposition with prometheus_client's."""

from __future__ import annotations

import re
from typing import Any, Callable, List, Optional, Tuple

import prometheus_client
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.parser import text_string_to_metric_families

_CREATED = re.compile(r"^([^\s{]+_created(?:\{.*\})?) \S+$", re.M)
_EXEMPLAR_TS = re.compile(r"( # \{.*\} \S+) \S+$", re.M)


def normalise(text: bytes) -> str:
    """Exposition with ``_created`` values and exemplar timestamps blanked
    (they are wall-clock times, the only bytes allowed to differ)."""
    out = _CREATED.sub(r"\1 <created>", text.decode("utf-8"))
    return _EXEMPLAR_TS.sub(r"\1 <ts>", out)


def canonical(text: str) -> List[Tuple[str, str, str, List[Tuple[str, Tuple[Tuple[str, str], ...], float]]]]:
    """The families of an exposition, order-free: prometheus_client's
    multiprocess collector orders them (and their samples) by the files
    ``glob`` returns."""
    families = []
    for f in text_string_to_metric_families(text):
        samples = sorted((s.name, tuple(sorted(s.labels.items())), s.value) for s in f.samples)
        families.append((f.name, f.documentation, f.type, samples))
    return sorted(families)


def expositions(registry: CollectorRegistry) -> Tuple[str, str]:
    """(text format 0.0.4, OpenMetrics), normalised."""
    return normalise(generate_latest(registry)), normalise(generate_openmetrics(registry))


def outcome(fn: Callable[[], Any]) -> Tuple[str, Optional[str]]:
    """What calling ``fn`` did: ("ok", None) or (exception type name, message)."""
    try:
        fn()
    except Exception as exc:  # compared, never swallowed silently
        return type(exc).__name__, str(exc)
    return "ok", None


# -- what the installed prometheus_client does where its releases differ ------------
# (.ci/run tests the declared minimum, 0.20, and the latest.)  fastmetrics
# follows the installed version where that is behaviour (remove() of an absent
# labelset: KeyError before 0.22) and keeps the newest API otherwise.

#: ``remove_by_labels`` exists (0.24+); fastmetrics has it with any version.
PC_HAS_REMOVE_BY_LABELS = hasattr(prometheus_client.Counter, "remove_by_labels")
#: ``clear()`` of an unlabelled metric is a no-op (0.26+); earlier versions
#: raise AttributeError (no ``_lock``), fastmetrics does nothing with any version.
PC_CLEAR_UNLABELLED_OK = outcome(lambda: prometheus_client.Counter("probe", "d", registry=None).clear()) == ("ok", None)
def _enum_validates_first() -> bool:
    registry = CollectorRegistry()
    outcome(lambda: prometheus_client.Enum("probe", "d", ["l"], states=[], registry=registry))
    return not list(registry.collect())


#: An invalid ``Enum`` (no states) raises before registering anything (0.26+);
#: earlier versions register it first (then raise, or fail in ``register()``
#: with AttributeError), leaving a broken collector behind.  fastmetrics
#: validates first with any version.
PC_ENUM_VALIDATES_FIRST = _enum_validates_first()
