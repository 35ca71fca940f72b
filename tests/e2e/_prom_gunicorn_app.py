"""The WSGI app ``tests/e2e/test_gunicorn_prometheus.py`` runs under gunicorn,
written as prometheus_client's documentation sets up its multiprocess mode:
``PROMETHEUS_MULTIPROC_DIR`` exported, metrics as module globals (created in
the master with ``--preload``), ``/metrics`` serving a fresh registry holding
only prometheus_client's ``MultiProcessCollector`` on each request, and
``mark_process_dead`` in ``gunicorn.conf.py``.  The only line that differs
between the two runs is the import of ``Counter``: from the library named by
``FM_GUNICORN_LIB`` (``prometheus_client`` or ``fastmetrics``).
``/work`` counts a request and answers this worker's pid.
"""

from __future__ import annotations

import importlib
import os
from typing import Callable, Iterable, List, Tuple

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

Counter = importlib.import_module(os.environ["FM_GUNICORN_LIB"]).Counter

REQUESTS = Counter("app_requests", "Requests served.", labelnames=["path"])
BYTES = Counter("app_response_bytes", "Bytes answered.")

StartResponse = Callable[[str, List[Tuple[str, str]]], object]


def app(environ: dict, start_response: StartResponse) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    if path == "/metrics":
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        body = generate_latest(registry)
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
        return [body]
    if path == "/work":
        REQUESTS.labels(path).inc()
        body = str(os.getpid()).encode()
        BYTES.inc(1.5)
    else:
        body = b"ok"
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]
