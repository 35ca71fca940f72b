"""Fixtures of the multiprocess tests (the top-level ``conftest.py`` still
applies: ``impl`` runs a test on both implementations).

``mp`` is the :class:`~_cluster.Cluster` of a test's workers, every one running
``impl`` (``mp.impl``).  This process never enables multiprocess mode itself:
it reads and folds the directory, as a separate exporter would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from _cluster import Cluster
from _support import Impl

from fastmetrics import multiprocess


@pytest.fixture(autouse=True)
def _pytest_process_stays_out_of_multiprocess_mode() -> Iterator[None]:
    assert multiprocess.directory() is None
    yield
    assert multiprocess.directory() is None


@pytest.fixture
def mp(impl: Impl, tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(impl, tmp_path)
    try:
        yield cluster
    finally:
        cluster.close()
