"""A real Prometheus scrapes fastmetrics: the demo (as a child process) and a
plain ``fastmetrics.Counter`` app; PromQL returns exactly the counts they
report, over OpenMetrics, with the targets healthy throughout.  ``promtool
check metrics`` finds nothing in the text exposition."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Tuple

import pytest
from prometheus_client import CollectorRegistry, generate_latest, start_http_server

import fastmetrics
from _registry import fixed_registry
from _servers import DemoProcess, Prometheus, http_get, require_binary, wait_until
from _support import free_port

pytestmark = pytest.mark.e2e

StartPrometheus = Callable[[Mapping[str, int]], Prometheus]

SCRAPE_WAIT = 30.0  # bound for "Prometheus has scraped X" (scrape interval: 1 s)
STATES = ("idle", "running", "stopped")


def promtool_check_metrics(exposition: bytes) -> Tuple[int, str]:
    """``promtool check metrics`` on ``exposition``: (exit code, all output)."""
    done = subprocess.run([require_binary("promtool"), "check", "metrics"], input=exposition,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
    return done.returncode, done.stdout.decode("utf-8", "replace")


def read_report(path: Path) -> Optional[Dict[str, Any]]:
    """The demo's ``--json`` document once it exists (it is written atomically)."""
    if not path.exists():
        return None
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def assert_healthy_since(prom: Prometheus, job: str, since: float, scrapes: int = 3) -> None:
    """Every scrape of ``job`` after the wall-clock time ``since`` succeeded (waiting,
    bounded, until there are at least ``scrapes`` of them), and the target is up
    with no error now."""
    def window() -> str:
        return f"{int(time.time() - since)}s"  # whole seconds: the range starts after ``since``

    wait_until(lambda: int(time.time() - since) >= 1
               and (prom.value(f'count_over_time(up{{job="{job}"}}[{window()}])') or 0) >= scrapes,
               SCRAPE_WAIT, f"{scrapes} scrapes of {job}")
    assert prom.value(f'min_over_time(up{{job="{job}"}}[{window()}])') == 1
    target = prom.target(job)
    assert (target["health"], target["lastError"]) == ("up", "")


def assert_scraped_as_openmetrics(prom: Prometheus, job: str, counter: str, stateset: Optional[str]) -> None:
    """Prometheus parsed ``job``'s scrapes as OpenMetrics: a counter family is
    named without ``_total`` and an Enum is a ``stateset`` (the 0.0.4 text
    format would give ``<name>_total`` / ``gauge``)."""
    types = prom.metadata(job)
    assert types.get(counter) == "counter", types
    assert counter + "_total" not in types, types
    if stateset is not None:
        assert types.get(stateset) == "stateset", types


def test_prometheus_records_exactly_what_the_demo_reports(start_prometheus: StartPrometheus,
                                                          tmp_path: Path) -> None:
    demo_port = free_port()
    prom = start_prometheus({"demo": demo_port})
    # Prometheus takes a few seconds to start scraping a new target: wait for
    # that (the scrapes fail, the demo is not running yet) before starting it.
    wait_until(lambda: prom.value('up{job="demo"}') == 0, SCRAPE_WAIT, "Prometheus to try the demo's port")
    report_path = tmp_path / "counts.json"
    demo = DemoProcess(["--duration", "4", "--port", str(demo_port), "--threads", "2", "--rate", "20000",
                        "--json", str(report_path), "--linger", "120"], tmp_path)
    try:
        wait_until(lambda: prom.value('up{job="demo"}') == 1, SCRAPE_WAIT, "Prometheus to scrape the demo")
        up_since = time.time()

        report = wait_until(lambda: read_report(report_path), 60, "the demo's --json report")
        expected: Dict[str, int] = report["metrics"]
        assert report["state"] == "stopped"
        assert expected["opencti_connector_bundles_sent_total"] == report["objects"] > 0
        assert expected["opencti_connector_runs_total"] == report["runs"] > 0

        def final_values_scraped() -> bool:
            # The demo lingers, serving its final values, until Prometheus has them.
            stopped = prom.value('opencti_connector_state{job="demo",opencti_connector_state="stopped"}')
            return stopped == 1 and all(prom.value(f'{name}{{job="demo"}}') == value
                                        for name, value in expected.items())

        wait_until(final_values_scraped, SCRAPE_WAIT, f"Prometheus to scrape the final counts {expected}")
        assert_healthy_since(prom, "demo", up_since)
        assert_scraped_as_openmetrics(prom, "demo", "opencti_connector_bundles_sent", "opencti_connector_state")

        status, _, exposition = http_get(f"http://127.0.0.1:{demo_port}/metrics")
        assert status == 200
        assert promtool_check_metrics(exposition) == (0, "")

        assert demo.interrupt_and_wait() == 0, demo.stderr()
    finally:
        demo.stop()

    # The demo is gone: its target goes down, and PromQL still answers with the
    # last sample, which is exactly what the demo reported at exit.
    wait_until(lambda: prom.value('up{job="demo"}') == 0, SCRAPE_WAIT, "the demo's target to go down")
    for name, value in expected.items():
        assert prom.value(f'last_over_time({name}{{job="demo"}}[10m])') == value, name
    states = {labels["opencti_connector_state"]: value
              for labels, value in prom.query('last_over_time(opencti_connector_state{job="demo"}[10m])')}
    assert states == {"idle": 0, "running": 0, "stopped": 1}


@pytest.fixture
def counter_app() -> Iterator[Tuple[int, CollectorRegistry]]:
    """A plain app: fastmetrics metrics in a registry served by ``start_http_server``
    on a free 127.0.0.1 port; yields ``(port, registry)``."""
    registry = fixed_registry()
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield server.server_port, registry
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_prometheus_scrapes_a_counter_app(start_prometheus: StartPrometheus,
                                          counter_app: Tuple[int, CollectorRegistry]) -> None:
    port, registry = counter_app
    requests = fastmetrics.Counter("requests", "Requests handled.", ["path"], registry=registry)
    requests.labels("/api/0")
    prom = start_prometheus({"app": port})
    wait_until(lambda: prom.value('up{job="app"}') == 1, SCRAPE_WAIT, "Prometheus to scrape the app")
    up_since = time.time()

    def series(promql: str) -> Dict[str, float]:
        return {labels.get("kind", labels.get("path", "")): value for labels, value in prom.query(promql)}

    wait_until(lambda: series('app_jobs_total{job="app"}') == {"import": 3, "export": 1.5,
                                                                 'quote " and \\ backslash': 7},
               SCRAPE_WAIT, "the app's fixed values")

    # Increment from several threads while Prometheus keeps scraping.
    def work(i: int) -> None:
        child = requests.labels(f"/api/{i % 2}")
        for _ in range(2500):
            child.inc()

    workers = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wait_until(lambda: series('requests_total{job="app"}') == {"/api/0": 5000, "/api/1": 5000},
               SCRAPE_WAIT, "the app's increments")
    assert prom.value('sum(last_over_time(requests_total{job="app"}[10m]))') == 10000

    assert_healthy_since(prom, "app", up_since)
    assert_scraped_as_openmetrics(prom, "app", "requests", "app_phase")


def test_promtool_finds_nothing_in_the_text_exposition() -> None:
    code, output = promtool_check_metrics(generate_latest(fixed_registry()))
    assert (code, output) == (0, "")


def test_promtool_lint_reports_problems() -> None:
    """Control for the check above: promtool's verdict is visible to the tests."""
    code, output = promtool_check_metrics(b"# HELP jobs Jobs.\n# TYPE jobs counter\njobs 1\n")
    assert code != 0
    assert '"_total" suffix' in output
