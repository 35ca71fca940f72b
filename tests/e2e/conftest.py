"""Fixtures starting real servers for the end-to-end tests (see ``_servers``).

A missing binary skips the test with the reason, except when ``CI=true``:
there it fails, since CI installs them (``.ci/servers.sh``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, List, Mapping

import pytest

from _servers import Prometheus, Pushgateway, require_binary


@pytest.fixture
def start_prometheus(tmp_path: Path) -> Iterator[Callable[[Mapping[str, int]], Prometheus]]:
    """Factory: ``start_prometheus({"job": port, ...})`` -> a ready :class:`Prometheus`,
    scraping 127.0.0.1:port for each job every second; killed after the test."""
    binary = require_binary("prometheus")
    started: List[Prometheus] = []

    def start(jobs: Mapping[str, int]) -> Prometheus:
        workdir = tmp_path / f"prometheus{len(started)}"
        workdir.mkdir()
        server = Prometheus(binary, workdir, jobs)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def pushgateway(tmp_path: Path) -> Iterator[Pushgateway]:
    """A ready Pushgateway on a free port; killed after the test."""
    server = Pushgateway(require_binary("prometheus-pushgateway"), tmp_path)
    try:
        yield server
    finally:
        server.stop()
