"""Helpers for the end-to-end tests: real Prometheus / Pushgateway processes,
bounded polling, HTTP and the demo as a child process.

Every server is started by the test itself (never the system services): a temp
config and storage dir, ``--web.listen-address=127.0.0.1:<free port>``, a 1 s
scrape interval.  Every wait is bounded; a server whose start fails is killed
before the failure is raised, and :meth:`ServerProcess.stop` always ends the
process (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar

import pytest

from _support import free_port, package_env, skip_or_fail

T = TypeVar("T")

HTTP_TIMEOUT = 5.0
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def require_binary(name: str) -> str:
    """Path of ``name`` on PATH; if it is absent, skip (fail under ``CI=true``)."""
    path = shutil.which(name)
    if path:
        return path
    skip_or_fail(f"{name} not found on PATH; install the Debian packages prometheus and "
                 "prometheus-pushgateway (see .ci/servers.sh)")


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # ignore any http_proxy


def http_get(url: str, headers: Optional[Mapping[str, str]] = None,
             timeout: float = HTTP_TIMEOUT) -> Tuple[int, Dict[str, str], bytes]:
    """GET ``url``: ``(status, headers, body)``; HTTP error statuses are returned, not raised."""
    request = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with _DIRECT.open(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def wait_until(check: Callable[[], Optional[T]], timeout: float, what: str, interval: float = 0.25) -> T:
    """Poll ``check`` until it returns something truthy, and return that.

    Connection errors and the like from ``check`` count as "not yet".  After
    ``timeout`` seconds the test fails, naming ``what`` and the last result.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            result = check()
            if result:
                return result
            last = result
        except (OSError, ValueError, KeyError, IndexError) as exc:
            last = exc
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}; last result: {last!r}")
        time.sleep(interval)


class ServerProcess:
    """A child process with its output in a log file."""

    def __init__(self, argv: Sequence[str], log: Path, env: Optional[Mapping[str, str]] = None) -> None:
        self.argv = list(argv)
        self.log = log
        self._log_file = open(log, "wb")  # noqa: SIM115 - the child's output until stop() closes it
        self.proc = subprocess.Popen(self.argv, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=None if env is None else dict(env))

    def output(self) -> str:
        self._log_file.flush()
        return self.log.read_text(errors="replace")

    def wait_ready(self, url: str, timeout: float = START_TIMEOUT) -> None:
        """Wait until ``url`` answers 200; on failure (or exit) stop the process, then fail."""
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.argv[0]} exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            return http_get(url, timeout=1.0)[0] == 200

        try:
            wait_until(ready, timeout, f"{url} to answer 200")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """End the process (SIGTERM, then SIGKILL after a bounded wait); idempotent."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        self._log_file.close()


def prometheus_config(jobs: Mapping[str, int]) -> str:
    """A config scraping each ``job: port`` at 127.0.0.1 every second."""
    lines = ["global:", "  scrape_interval: 1s", "  scrape_timeout: 1s", "  evaluation_interval: 1s",
             "scrape_configs:"]
    for job, port in jobs.items():
        lines += [f"  - job_name: {job}", "    honor_labels: true",
                  "    static_configs:", f"      - targets: ['127.0.0.1:{port}']"]
    return "\n".join(lines) + "\n"


class Prometheus(ServerProcess):
    """A Prometheus server on a free 127.0.0.1 port, scraping ``jobs``; ready when constructed."""

    def __init__(self, binary: str, workdir: Path, jobs: Mapping[str, int]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        config.write_text(prometheus_config(jobs))
        super().__init__(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            workdir / "prometheus.log",
        )
        self.wait_ready(self.url + "/-/ready")

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>``; returns its ``data`` (fails the test on an API error)."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        status, _, body = http_get(url)
        doc = json.loads(body)
        if status != 200 or doc.get("status") != "success":
            pytest.fail(f"Prometheus API {url}: {status} {body[:500]!r}")
        return doc["data"]

    def query(self, promql: str) -> List[Tuple[Dict[str, str], float]]:
        """Instant query at "now": ``[(labels, value), ...]``."""
        data = self.api("query", query=promql)
        assert data["resultType"] == "vector", data
        return [(r["metric"], float(r["value"][1])) for r in data["result"]]

    def value(self, promql: str) -> Optional[float]:
        """The one value ``promql`` returns, or None for an empty result."""
        result = self.query(promql)
        if not result:
            return None
        assert len(result) == 1, f"{promql} returned {len(result)} series: {result}"
        return result[0][1]

    def target(self, job: str) -> Dict[str, Any]:
        """The active target of ``job`` as /api/v1/targets reports it (health, lastError, ...)."""
        targets = [t for t in self.api("targets", state="active")["activeTargets"] if t["labels"]["job"] == job]
        assert len(targets) == 1, targets
        return targets[0]  # type: ignore[no-any-return]

    def metadata(self, job: str) -> Dict[str, str]:
        """``{metric family: type}`` as Prometheus parsed it from ``job``'s scrapes."""
        rows = self.api("targets/metadata", match_target=f'{{job="{job}"}}')
        return {row["metric"]: row["type"] for row in rows}


class Pushgateway(ServerProcess):
    """A Pushgateway on a free 127.0.0.1 port (no persistence); ready when constructed."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.address}"
        super().__init__([binary, f"--web.listen-address={self.address}", "--log.level=warn"],
                         workdir / "pushgateway.log")
        self.wait_ready(self.url + "/-/ready")


class DemoProcess(ServerProcess):
    """``python -m fastmetrics demo ARGS`` as a child; stdout and stderr go to
    separate files (:meth:`stdout`, :meth:`stderr`)."""

    def __init__(self, args: Sequence[str], workdir: Path) -> None:
        self.stdout_path = workdir / "demo.stdout"
        self._stdout_file = open(self.stdout_path, "wb")  # noqa: SIM115 - closed by stop()
        self.log = workdir / "demo.stderr"
        self._log_file = open(self.log, "wb")  # noqa: SIM115 - closed by stop()
        self.argv = [sys.executable, "-m", "fastmetrics", "demo", *args]
        self.proc = subprocess.Popen(self.argv, stdout=self._stdout_file, stderr=self._log_file,
                                     stdin=subprocess.DEVNULL, env=package_env())

    def stdout(self) -> str:
        self._stdout_file.flush()
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.output()

    def interrupt_and_wait(self, timeout: float = 20.0) -> int:
        """SIGINT, then wait (bounded) for the exit code."""
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        super().stop()
        self._stdout_file.close()
