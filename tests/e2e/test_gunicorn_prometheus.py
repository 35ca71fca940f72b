"""prometheus_client's multiprocess recipe under a real gunicorn, differential.

The same app (``_prom_gunicorn_app.py``), the same ``gunicorn.conf.py``
(``child_exit`` calling prometheus_client's ``mark_process_dead``), the same
``--preload`` and ``PROMETHEUS_MULTIPROC_DIR``, and the same requests run
twice: with prometheus_client's ``Counter`` and with fastmetrics'.  Between
the two batches of requests a worker that has served is SIGKILLed (gunicorn
replaces it).  ``/metrics`` (prometheus_client's own ``MultiProcessCollector``
in the app) must serve the same families, help, types and values in both runs,
with every request counted exactly.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Set

import pytest

from _servers import ServerProcess, http_get, wait_until
from _parity import canonical
from _support import Impl, free_port, package_env
from test_gunicorn import alive, require_gunicorn

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not hasattr(os, "fork"), reason="gunicorn needs POSIX")]

APP = Path(__file__).with_name("_prom_gunicorn_app.py")
WORKERS = 2
CONF = """\
from prometheus_client import multiprocess


def child_exit(server, worker):
    multiprocess.mark_process_dead(worker.pid)
"""


def run(lib: str, impl: Impl, tmp_path: Path) -> str:
    """The scrape after 60 requests, a SIGKILLed worker and 30 more requests."""
    workdir = tmp_path / lib
    directory = workdir / "metrics"
    directory.mkdir(parents=True)
    (workdir / "gunicorn.conf.py").write_text(CONF)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = package_env(impl.env(PROMETHEUS_MULTIPROC_DIR=str(directory), FM_GUNICORN_LIB=lib))
    env["PYTHONPATH"] = os.pathsep.join([str(APP.parent), env["PYTHONPATH"]])
    server = ServerProcess([sys.executable, "-m", "gunicorn", "--workers", str(WORKERS), "--bind",
                            f"127.0.0.1:{port}", "--graceful-timeout", "5", "--chdir", str(workdir),
                            "--config", str(workdir / "gunicorn.conf.py"), "--preload", "_prom_gunicorn_app:app"],
                           workdir / "gunicorn.log", env)
    try:
        server.wait_ready(url + "/ping")

        def work(n: int) -> Set[int]:
            pids = set()
            for _ in range(n):
                status, _, body = http_get(url + "/work")
                assert status == 200, (status, body)
                pids.add(int(body))
            return pids

        victim = sorted(work(60))[0]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: not alive(victim) or None, 30, f"worker {victim} to die")
        assert victim not in work(30)
        status, _, body = http_get(url + "/metrics")
        assert status == 200
        return body.decode()
    finally:
        server.stop()


def test_gunicorn_preload_scrapes_are_identical_to_prometheus_client(impl: Impl, tmp_path: Path) -> None:
    require_gunicorn()
    upstream = canonical(run("prometheus_client", impl, tmp_path))
    ours = canonical(run("fastmetrics", impl, tmp_path))
    assert ours == upstream
    assert ("app_requests", "Requests served.", "counter",
            [("app_requests_total", (("path", "/work"),), 90.0)]) in ours
    assert ("app_response_bytes", "Bytes answered.", "counter",
            [("app_response_bytes_total", (), 135.0)]) in ours
