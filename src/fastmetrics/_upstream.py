"""prometheus_client's helpers that :mod:`fastmetrics.metrics` reuses, so that
names, validation and error messages stay exactly upstream's, imported in one
place with the types they have.

Upstream leaves them unannotated (or does not re-export them), which would
make every call site untyped; here each gets its precise signature, and the
rest of the package calls these names.  ``prometheus_client.metrics`` holds
all of them in every supported release (newer ones import the validators
there from ``prometheus_client.validation``), hence the one import.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, Tuple

from prometheus_client import metrics as _pm

__all__ = ["build_full_name", "disable_created_metrics", "enable_created_metrics", "use_created",
           "validate_exemplar", "validate_labelnames", "validate_metric_name"]

# (metric type, name, namespace, subsystem, unit) -> the full metric name.
build_full_name: Callable[[str, str, str, str, str], str] = _pm._build_full_name

# The three validators are imported into prometheus_client.metrics without an
# explicit re-export, which mypy --strict reports; the attribute is there.
# (metric, label names) -> the names as a tuple; the metric's
# ``_reserved_labelnames`` are refused.
validate_labelnames: Callable[[object, Iterable[str]], Tuple[str, ...]] = (
    _pm._validate_labelnames)  # type: ignore[attr-defined]  # imported there, not re-exported
validate_metric_name: Callable[[str], None] = (
    _pm._validate_metric_name)  # type: ignore[attr-defined]  # imported there, not re-exported
validate_exemplar: Callable[[Dict[str, str]], None] = (
    _pm._validate_exemplar)  # type: ignore[attr-defined]  # imported there, not re-exported

disable_created_metrics: Callable[[], None] = _pm.disable_created_metrics
enable_created_metrics: Callable[[], None] = _pm.enable_created_metrics


def use_created() -> bool:
    """Whether counters expose ``_created`` samples: upstream's switch, read
    at each call (``disable_created_metrics`` rebinds it), as its own
    metrics read it at each scrape."""
    return bool(_pm._use_created)
