"""prometheus_client's helpers that :mod:`fastmetrics.metrics` reuses, so that
names, validation and error messages stay exactly upstream's, imported in one
place with the types they have.

Upstream leaves them unannotated (or does not re-export them), which would
make every call site untyped; here each gets its precise signature, and the
rest of the package calls these names.  ``prometheus_client.metrics`` holds
them in every supported release, 0.20 to the latest (0.22 moved the
validators to ``prometheus_client.validation``, which ``metrics`` imports them
from), except ``_validate_metric_name``: 0.22 added it (UTF-8 names unless
``PROMETHEUS_LEGACY_NAME_VALIDATION`` is on); 0.20 and 0.21 check the name
inline, which :func:`_validate_metric_name_0_20` copies.  ``.ci/run`` tests
the declared minimum and the latest release.
"""

from __future__ import annotations

import functools
import re
from typing import Callable, Dict, Iterable, Tuple

from prometheus_client import metrics as _pm

__all__ = ["build_full_name", "disable_created_metrics", "enable_created_metrics", "removing_absent_raises",
           "use_created", "validate_exemplar", "validate_labelnames", "validate_metric_name"]

# (metric type, name, namespace, subsystem, unit) -> the full metric name.
build_full_name: Callable[[str, str, str, str, str], str] = _pm._build_full_name

# The three validators are imported into prometheus_client.metrics without an
# explicit re-export, which mypy --strict reports; the attribute is there.
# (metric, label names) -> the names as a tuple; the metric's
# ``_reserved_labelnames`` are refused.
validate_labelnames: Callable[[object, Iterable[str]], Tuple[str, ...]] = (
    _pm._validate_labelnames)  # type: ignore[attr-defined]  # imported there, not re-exported


def _validate_metric_name_0_20(name: str) -> None:
    from prometheus_client import metrics_core

    pattern = metrics_core.METRIC_NAME_RE  # type: ignore[attr-defined]  # 0.20/0.21 only (removed in 0.22)
    if not pattern.match(name):
        raise ValueError("Invalid metric name: " + name)


validate_metric_name: Callable[[str], None] = getattr(_pm, "_validate_metric_name", _validate_metric_name_0_20)
validate_exemplar: Callable[[Dict[str, str]], None] = (
    _pm._validate_exemplar)  # type: ignore[attr-defined]  # imported there, not re-exported

disable_created_metrics: Callable[[], None] = _pm.disable_created_metrics
enable_created_metrics: Callable[[], None] = _pm.enable_created_metrics


def use_created() -> bool:
    """Whether counters expose ``_created`` samples: upstream's switch, read
    at each call (``disable_created_metrics`` rebinds it), as its own
    metrics read it at each scrape."""
    return bool(_pm._use_created)


@functools.cache
def _version() -> Tuple[int, ...]:
    """(major, minor) of the installed prometheus_client, read once, on a cold
    path; a copy without metadata (vendored) counts as the newest."""
    try:
        from importlib.metadata import version

        found = re.match(r"(\d+)\.(\d+)", version("prometheus_client"))
    except Exception:  # noqa: BLE001 - PackageNotFoundError, or no importlib.metadata
        found = None
    return (int(found[1]), int(found[2])) if found else (1 << 30,)


def removing_absent_raises() -> bool:
    """prometheus_client < 0.22 raises ``KeyError`` from ``remove()`` of a
    labelset it does not hold; 0.22 and later ignore it.  fastmetrics does
    what the installed one does."""
    return _version() < (0, 22)
