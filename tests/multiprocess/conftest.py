"""Fixtures of the multiprocess tests (the top-level ``conftest.py`` still
applies: ``impl`` runs a test on both implementations in this process).

``implementation`` is what every worker process of a test runs ("cython" or
"python"); ``mp`` is the :class:`~_cluster.Cluster` of a test's workers.  This
process never enables multiprocess mode itself: it reads and folds the
directory, as a separate exporter would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from _cluster import Cluster

from fastmetrics import multiprocess


@pytest.fixture(params=[pytest.param("cython", id="c", marks=pytest.mark.c_extension),
                        pytest.param("python", id="python")])
def implementation(request: pytest.FixtureRequest) -> str:
    """The ``fastmetrics.implementation`` every worker of the test must run."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def _pytest_process_stays_out_of_multiprocess_mode() -> Iterator[None]:
    assert multiprocess.directory() is None
    yield
    assert multiprocess.directory() is None


@pytest.fixture
def mp(implementation: str, tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(implementation, tmp_path)
    try:
        yield cluster
    finally:
        cluster.close()
