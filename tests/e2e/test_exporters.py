"""prometheus_client's three serving paths give the same bytes for fastmetrics
metrics: ``start_http_server``, ``make_wsgi_app`` under wsgiref, and
``make_asgi_app`` driven by a minimal ASGI call."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Dict, Iterator, List, Mapping, Tuple
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest
from prometheus_client import CollectorRegistry, make_asgi_app, make_wsgi_app, start_http_server
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from _registry import EXPECTED, fixed_registry, samples_of
from _servers import http_get

pytestmark = pytest.mark.e2e

Response = Tuple[int, str, bytes]  # status, Content-Type, body

#: Accept headers: none, plain text, OpenMetrics, and what Prometheus 2.x sends.
ACCEPTS = {
    "none": {},
    "text": {"Accept": "text/plain"},
    "openmetrics": {"Accept": "application/openmetrics-text; version=1.0.0"},
    "prometheus": {"Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
                             "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"},
}
QUERIES = {"all": "", "filtered": "name[]=app_jobs_total&name[]=opencti_connector_state"}


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def registry() -> CollectorRegistry:
    return fixed_registry()


@pytest.fixture(scope="module")
def http_server_url(registry: CollectorRegistry) -> Iterator[str]:
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield f"http://127.0.0.1:{server.server_port}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture(scope="module")
def wsgi_url(registry: CollectorRegistry) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, make_wsgi_app(registry), handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="wsgiref", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def get(url: str, query: str, headers: Mapping[str, str]) -> Response:
    status, response_headers, body = http_get(url + ("?" + query if query else ""), headers)
    return status, response_headers["Content-Type"], body


def call_asgi(app: Any, query: str, headers: Mapping[str, str]) -> Response:
    """One GET /metrics through ``app``, as an ASGI 3 server would make it."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": "/metrics", "raw_path": b"/metrics", "root_path": "",
        "query_string": query.encode("ascii"),
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80),
    }
    sent: List[Dict[str, Any]] = []

    async def receive() -> Dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = [m for m in sent if m["type"] == "http.response.start"]
    assert len(start) == 1, sent
    content_types = [v.decode("latin-1") for k, v in start[0]["headers"] if k.lower() == b"content-type"]
    assert len(content_types) == 1, start
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start[0]["status"], content_types[0], body


@pytest.mark.parametrize("query", list(QUERIES.values()), ids=list(QUERIES))
@pytest.mark.parametrize("accept", list(ACCEPTS.values()), ids=list(ACCEPTS))
def test_all_exporters_serve_the_same_bytes(registry: CollectorRegistry, http_server_url: str, wsgi_url: str,
                                            accept: Dict[str, str], query: str) -> None:
    from_http_server = get(http_server_url, query, accept)
    from_wsgi = get(wsgi_url, query, accept)
    from_asgi = call_asgi(make_asgi_app(registry), query, accept)

    assert from_http_server[0] == 200
    assert from_wsgi == from_http_server
    assert from_asgi == from_http_server

    # Non-vacuous: the body is the fixed registry's exposition in the negotiated format.
    _, content_type, body = from_http_server
    text = body.decode("utf-8")
    if content_type.startswith("application/openmetrics-text"):
        assert text.endswith("# EOF\n")
        seen = samples_of(parse_openmetrics(text))
    else:
        assert content_type.startswith("text/plain")
        seen = samples_of(parse_text(text))
    wanted = {k: v for k, v in EXPECTED.items() if not query or k[0] in ("app_jobs_total", "opencti_connector_state")}
    assert {k: v for k, v in seen.items() if k in EXPECTED} == wanted
