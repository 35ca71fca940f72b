"""A registry holding only fastmetrics metrics with fixed values, so its
exposition is the same on every scrape (``_created`` is fixed at creation)."""

from __future__ import annotations

from typing import Dict, Tuple

from prometheus_client import CollectorRegistry

import fastmetrics

#: ``{(sample name, sorted label items): value}`` that :func:`fixed_registry` exposes.
EXPECTED: Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float] = {
    ("opencti_connector_bundles_sent_total", ()): 12345.0,
    ("opencti_connector_records_sent_total", ()): 12345.0,
    ("app_jobs_total", (("kind", "import"),)): 3.0,
    ("app_jobs_total", (("kind", "export"),)): 1.5,
    ("app_jobs_total", (("kind", 'quote " and \\ backslash'),)): 7.0,
    ("opencti_connector_state", (("opencti_connector_state", "idle"),)): 0.0,
    ("opencti_connector_state", (("opencti_connector_state", "running"),)): 1.0,
    ("opencti_connector_state", (("opencti_connector_state", "stopped"),)): 0.0,
    ("app_phase", (("app_phase", "load"), ("worker", "w1"))): 0.0,
    ("app_phase", (("app_phase", "save"), ("worker", "w1"))): 1.0,
}


def fixed_registry() -> CollectorRegistry:
    """A fresh registry: unlabelled and labelled ``fastmetrics.Counter`` and ``Enum``
    (OpenCTI handler names among them), holding the values in :data:`EXPECTED`."""
    registry = CollectorRegistry()
    for name, doc in (("bundles_sent_total", "Number of bundles sent"),
                      ("records_sent_total", "Number of records (objects per bundle) sent")):
        fastmetrics.Counter(name, doc, namespace="opencti", subsystem="connector", registry=registry).inc(12345)
    jobs = fastmetrics.Counter("jobs", "Jobs done, by kind.", ["kind"], namespace="app", registry=registry)
    jobs.labels("import").inc(3)
    jobs.labels(kind="export").inc(1.5)
    jobs.labels('quote " and \\ backslash').inc(7)
    state = fastmetrics.Enum("state", "State of connector", namespace="opencti", subsystem="connector",
                             states=["idle", "running", "stopped"], registry=registry)
    state.state("running")
    phase = fastmetrics.Enum("phase", "Phase per worker.", ["worker"], namespace="app",
                             states=["load", "save"], registry=registry)
    phase.labels("w1").state("save")
    return registry


def samples_of(families) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:  # type: ignore[no-untyped-def]
    """``{(sample name, sorted label items): value}`` of parsed metric families."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}
