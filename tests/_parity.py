"""Helpers to compare fastmetrics' exposition with prometheus_client's."""

from __future__ import annotations

import re
from typing import Any, Callable, Optional, Tuple

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

_CREATED = re.compile(r"^([^\s{]+_created(?:\{.*\})?) \S+$", re.M)
_EXEMPLAR_TS = re.compile(r"( # \{.*\} \S+) \S+$", re.M)


def normalise(text: bytes) -> str:
    """Exposition with ``_created`` values and exemplar timestamps blanked
    (they are wall-clock times, the only bytes allowed to differ)."""
    out = _CREATED.sub(r"\1 <created>", text.decode("utf-8"))
    return _EXEMPLAR_TS.sub(r"\1 <ts>", out)


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
