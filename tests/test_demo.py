"""``python -m fastmetrics demo`` as a user runs it (a child process): clean
exits, ``--json`` counts equal to what its endpoint exposes, argparse errors
with exit code 2, and Ctrl-C (SIGINT) stopping it with the state ``stopped``.
The command line itself, in process: ``tests/test_cli.py``."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO, Any, Dict, Iterator, List, Optional, Tuple

import pytest
from _support import free_port, package_env
from prometheus_client.parser import text_string_to_metric_families

TIMEOUT = 60.0  # bound on any wait for the demo
PREFIX = "opencti_connector_"
COUNTERS = ["bundles_sent_total", "records_sent_total", "runs_total", "ping_api_total",
            "ping_api_errors_total", "errors_total", "client_errors_total"]


def demo_command(*args: str) -> List[str]:
    return [sys.executable, "-m", "fastmetrics", "demo", *args]


def run_demo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(demo_command(*args), env=package_env(), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=TIMEOUT)


@pytest.fixture
def start_demo(tmp_path: Path) -> Iterator[Any]:
    """Factory: ``start_demo(*args)`` -> a running demo ``Popen`` with its stdout /
    stderr in the files ``proc.out_path`` / ``proc.err_path``; every one is
    killed after the test."""
    procs: List[subprocess.Popen] = []
    files: List[IO[str]] = []

    def start(*args: str) -> subprocess.Popen:
        n = len(procs)
        out_path, err_path = tmp_path / f"demo{n}.out", tmp_path / f"demo{n}.err"
        files.extend([open(out_path, "w"), open(err_path, "w")])  # noqa: SIM115 - closed after the test
        proc = subprocess.Popen(demo_command(*args), env=package_env(), stdin=subprocess.DEVNULL,
                                stdout=files[-2], stderr=files[-1])
        proc.out_path, proc.err_path = out_path, err_path  # type: ignore[attr-defined]
        procs.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(TIMEOUT)
        for f in files:
            f.close()


def wait_for(check: Any, what: str, timeout: float = TIMEOUT) -> Any:
    """Poll ``check()`` (errors count as "not yet") until truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (OSError, ValueError) as exc:
            last = exc
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}; last: {last!r}")


def scrape(port: int) -> Tuple[Dict[str, float], Optional[str]]:
    """The demo's exposition: ({counter sample: value}, current state)."""
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # ignore any http_proxy
    with direct.open(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    counters: Dict[str, float] = {}
    state = None
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith(PREFIX) and s.name[len(PREFIX):] in COUNTERS:
                counters[s.name] = s.value
            elif s.name == PREFIX + "state" and s.value == 1:
                state = s.labels[PREFIX + "state"]
    return counters, state


def check_report(report: Dict[str, Any]) -> None:
    """The ``--json`` document is consistent with itself and the handler's semantics."""
    metrics = report["metrics"]
    assert sorted(metrics) == sorted(PREFIX + c for c in COUNTERS)
    assert report["state"] == "stopped"
    assert report["objects"] > 0 and report["runs"] > 0
    for key in ("objects", "bundles", "runs", "client_errors"):
        assert sum(t[key] for t in report["per_thread"]) == report[key]
    assert metrics[PREFIX + "bundles_sent_total"] == report["objects"]  # one inc per object
    assert metrics[PREFIX + "records_sent_total"] == report["objects"]  # inc(len(bundle)) per bundle
    assert metrics[PREFIX + "runs_total"] == report["runs"]
    assert metrics[PREFIX + "client_errors_total"] == report["client_errors"]
    assert metrics[PREFIX + "ping_api_total"] == metrics[PREFIX + "errors_total"] == 0


def test_duration_run_exits_0_with_its_counts() -> None:
    done = run_demo("--duration", "1", "--port", str(free_port()), "--threads", "2", "--rate", "20000",
                    "--json", "-")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    check_report(report)
    assert len(report["per_thread"]) == 2
    # The summary (on stderr with --json -) shows the same numbers.
    for name, value in report["metrics"].items():
        assert re.search(rf"^ +{name} +{value}$", done.stderr, re.M), (name, done.stderr)


def test_json_counts_are_what_its_endpoint_exposes(start_demo: Any, tmp_path: Path) -> None:
    port = free_port()
    report_path = tmp_path / "counts.json"
    demo = start_demo("--duration", "2", "--port", str(port), "--rate", "20000", "--json", str(report_path),
                      "--linger", "120")
    report = wait_for(lambda: report_path.exists() and json.loads(report_path.read_text()), "the --json report")
    check_report(report)
    counters, state = scrape(port)  # the demo lingers, serving its final values
    assert counters == report["metrics"]
    assert state == "stopped"
    demo.send_signal(signal.SIGINT)  # ends --linger
    assert demo.wait(TIMEOUT) == 0, demo.err_path.read_text()


@pytest.mark.parametrize(
    "args",
    [
        ["--bogus"],
        ["--threads", "0"],
        ["--threads", "many"],
        ["--port", "70000"],
        ["--rate", "-5"],
        ["--duration", "0"],
        ["--duration", "nan"],
        ["stray"],
        ["--json", "/nonexistent-dir/counts.json"],
    ],
    ids=lambda a: " ".join(a),
)
def test_bad_flag_is_an_argparse_error_and_exit_2(args: List[str]) -> None:
    done = run_demo("--port", str(free_port()), *args)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert lines[0].startswith("usage: fastmetrics demo "), done.stderr
    assert lines[-1].startswith("fastmetrics demo: error: "), done.stderr
    assert "Traceback" not in done.stderr


def test_busy_port_is_one_line_and_exit_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_demo("--port", str(port), "--duration", "1")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"fastmetrics demo: error: cannot serve metrics on 127.0.0.1:{port}: Address already in use"
    ]


def test_sigint_stops_cleanly_with_state_stopped(start_demo: Any, tmp_path: Path) -> None:
    port = free_port()
    report_path = tmp_path / "counts.json"
    demo = start_demo("--port", str(port), "--threads", "3", "--rate", "20000", "--json", str(report_path),
                      "--linger", "120")
    wait_for(lambda: scrape(port)[0].get(PREFIX + "runs_total", 0) > 0, "the demo to start sending")
    assert scrape(port)[1] in ("idle", "running")

    demo.send_signal(signal.SIGINT)  # stop: workers finish their bundle, the state becomes stopped
    report = wait_for(lambda: report_path.exists() and json.loads(report_path.read_text()), "the --json report")
    check_report(report)
    assert scrape(port) == (report["metrics"], "stopped")
    assert demo.poll() is None  # still lingering

    demo.send_signal(signal.SIGINT)  # a second Ctrl-C ends --linger
    assert demo.wait(TIMEOUT) == 0
    out = demo.out_path.read_text()
    assert out.startswith("stopped after ")
    assert re.search(rf"^ +{PREFIX}state +stopped$", out, re.M), out
    assert "Traceback" not in demo.err_path.read_text()
