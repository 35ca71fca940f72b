"""The WSGI app ``tests/e2e/test_gunicorn.py`` runs under gunicorn.

Set up as the README's "Multiprocess mode" section says: the metrics are
module globals (created in the master with ``--preload``, in each worker
without), and ``/metrics`` serves a registry holding only the
``MultiProcessCollector`` (one per worker, kept: it remembers the files it has
read).  ``/work`` counts a request and answers this worker's pid; with
``?hold=SECONDS`` (at most 5) it keeps the worker busy that long first, so
concurrent requests must go to other workers (the test spreads requests that
way until every worker has served one).
"""

from __future__ import annotations

import os
import time
from typing import Callable, Iterable, List, Optional, Tuple
from urllib.parse import parse_qs

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

import fastmetrics
from fastmetrics.multiprocess import MultiProcessCollector

REQUESTS = fastmetrics.Counter("app_requests", "Requests served by a worker.", labelnames=["path"])
PHASE = fastmetrics.Enum("app_phase", "What the worker is doing.", states=["starting", "serving"])

_registry: Optional[CollectorRegistry] = None

StartResponse = Callable[[str, List[Tuple[str, str]]], object]


def _metrics_registry() -> CollectorRegistry:
    global _registry
    if _registry is None:
        _registry = CollectorRegistry()
        MultiProcessCollector(_registry)
    return _registry


def app(environ: dict, start_response: StartResponse) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/metrics":
        body = generate_latest(_metrics_registry())
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
        return [body]
    if path == "/work":
        hold = parse_qs(environ.get("QUERY_STRING", "")).get("hold")
        if hold:
            time.sleep(min(float(hold[0]), 5.0))
        REQUESTS.labels(path).inc()
        PHASE.state("serving")
        body = str(os.getpid()).encode()
    else:
        body = b"ok"
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]
