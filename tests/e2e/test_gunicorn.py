"""Multiprocess mode under a real gunicorn, set up as the README says.

gunicorn (3 sync workers, on 127.0.0.1) serves a small WSGI app
(``_gunicorn_app.py``) that counts each ``/work`` request in a labelled
``fastmetrics.Counter`` and sets an ``Enum``, and serves ``/metrics`` from a
``MultiProcessCollector`` registry.  The mode is on either by
``FASTMETRICS_MULTIPROC_DIR`` exported before gunicorn starts (with
``--preload``, the master imports the app and creates the metrics before
forking) or by ``enable(path)`` in ``gunicorn.conf.py``.  Requests come from 8 client threads.
A sync worker that has just answered is first back in ``accept()``, so on a
busy machine one worker can serve most or all of them; the test then spreads
more requests, each holding its worker for a while (``/work?hold=``, longer
each round, bounded in rounds and time), until every worker has served one.
A worker killed with SIGKILL is replaced by gunicorn and its counts stay in
every later scrape, exactly; after gunicorn stops, this process compacts the
directory into the archive alone.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from _registry import samples_of
from _servers import ServerProcess, http_get, wait_until
from _support import clean_env, free_port, package_env, skip_or_fail

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not hasattr(os, "fork"), reason="gunicorn needs POSIX")]

APP = Path(__file__).with_name("_gunicorn_app.py")
CLIENTS = 8
WORKERS = 3
SPREAD_ROUNDS = 6  # holds of 0.05, 0.1, ... 1.6 s
SPREAD_DEADLINE = 60.0  # seconds


def require_gunicorn() -> None:
    """Skip without gunicorn (it is in the ``test`` extra), fail under ``CI=true``."""
    if importlib.util.find_spec("gunicorn") is not None:
        return
    skip_or_fail("gunicorn is not installed (pip install '.[test]' installs it on POSIX)")


class Gunicorn(ServerProcess):
    """gunicorn with multiprocess mode on: by the exported variable
    (``setup="env"``, optionally ``--preload``) or by ``enable()`` in
    ``gunicorn.conf.py`` (``setup="conf"``)."""

    def __init__(self, workdir: Path, directory: Path, setup: str, preload: bool) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = package_env(clean_env())
        env["PYTHONPATH"] = os.pathsep.join([str(APP.parent), env["PYTHONPATH"]])
        argv = [sys.executable, "-m", "gunicorn", "--workers", str(WORKERS), "--bind", f"127.0.0.1:{self.port}",
                "--graceful-timeout", "5", "--chdir", str(workdir)]
        if setup == "env":
            env["FASTMETRICS_MULTIPROC_DIR"] = str(directory)
        else:
            conf = workdir / "gunicorn.conf.py"
            conf.write_text(f"import fastmetrics.multiprocess\nfastmetrics.multiprocess.enable({str(directory)!r})\n")
            argv += ["--config", str(conf)]
        super().__init__(argv + (["--preload"] if preload else []) + ["_gunicorn_app:app"],
                         workdir / "gunicorn.log", env)
        self.wait_ready(self.url + "/ping")

    def get(self, path: str) -> str:
        status, _, body = http_get(self.url + path)
        assert status == 200, (path, status, body)
        return body.decode()


def work(server: Gunicorn, requests: int, hold: float = 0.0) -> Dict[int, int]:
    """``requests`` GETs of /work from CLIENTS threads (each holding its worker
    ``hold`` seconds); served count per worker pid."""
    served: Dict[int, int] = {}
    errors: List[BaseException] = []
    lock = threading.Lock()
    path = f"/work?hold={hold:g}" if hold else "/work"

    def client(n: int) -> None:
        try:
            for _ in range(n):
                pid = int(server.get(path))
                with lock:
                    served[pid] = served.get(pid, 0) + 1
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    share = [requests // CLIENTS + (i < requests % CLIENTS) for i in range(CLIENTS)]
    threads = [threading.Thread(target=client, args=(n,)) for n in share]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sum(served.values()) == requests
    return served


def spread(server: Gunicorn, served: Dict[int, int]) -> int:
    """Rounds of CLIENTS concurrent requests, each holding its worker (0.05 s,
    doubling each round), until every worker has served one: a busy worker
    cannot accept, so an idle one must.  Adds to ``served``; returns how many
    requests it sent.  Fails after SPREAD_ROUNDS rounds or SPREAD_DEADLINE s."""
    sent, hold = 0, 0.05
    deadline = time.monotonic() + SPREAD_DEADLINE
    for _ in range(SPREAD_ROUNDS):
        if len(served) >= WORKERS or time.monotonic() > deadline:
            break
        for pid, n in work(server, CLIENTS, hold).items():
            served[pid] = served.get(pid, 0) + n
        sent += CLIENTS
        hold *= 2
    assert len(served) >= WORKERS, f"{len(served)} of {WORKERS} workers served after {sent} spread requests: {served}"
    return sent


def samples(text: str) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
    return samples_of(text_string_to_metric_families(text))


def requests_total(text: str) -> Optional[float]:
    return samples(text).get(("app_requests_total", (("path", "/work"),)))


def phase_pids(text: str) -> Dict[str, str]:
    """pid label -> the state at 1, per live process with the enum."""
    current: Dict[str, str] = {}
    for (name, labels), value in samples(text).items():
        if name == "app_phase" and value == 1:
            label = dict(labels)
            assert label["pid"] not in current
            current[label["pid"]] = label["app_phase"]
    return current


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize(("setup", "preload"), [("env", False), ("env", True), ("conf", False)],
                         ids=["env", "env-preload", "conf-enable"])
def test_gunicorn_workers_count_exactly_through_a_sigkill(tmp_path: Path, setup: str, preload: bool) -> None:
    require_gunicorn()
    directory = tmp_path / "metrics"
    directory.mkdir()
    server = Gunicorn(tmp_path, directory, setup, preload)
    try:
        served = work(server, 300)
        total = 300 + spread(server, served)   # every worker has served (and so counted) one
        text = server.get("/metrics")
        assert requests_total(text) == total
        assert "# HELP app_requests_total Requests served by a worker." in text
        phases = phase_pids(text)
        assert {str(pid) for pid in served} <= set(phases)
        assert all(phases[str(pid)] == "serving" for pid in served)

        victim = max(served, key=lambda pid: served[pid])
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: not alive(victim) or None, 30, f"worker {victim} to die")
        served_after = work(server, 100)   # gunicorn has replaced the worker meanwhile
        total += 100
        assert victim not in served_after
        text = server.get("/metrics")
        assert requests_total(text) == total
        assert str(victim) not in phase_pids(text)
    finally:
        server.stop()
    assert server.proc.returncode == 0, server.output()[-3000:]

    from fastmetrics.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    collector = MultiProcessCollector(registry, str(directory))
    text = generate_latest(registry).decode()
    assert collector.skipped == []
    assert requests_total(text) == total
    assert phase_pids(text) == {}   # no live process left
    assert sorted(p.name for p in directory.iterdir()) == [".lock", "archive.fm"]

