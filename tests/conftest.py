"""Every core test runs against the Cython extension and the pure-Python twin.

``impl`` is parametrized over both (ids ``c`` and ``python``); the ``c`` cases
carry the ``c_extension`` marker and are skipped under ``--no-c-extensions``
or ``FASTMETRICS_NO_EXTENSIONS=1`` (as aio-libs' propcache and multidict do).
Outside those switches a missing extension is an error, not a skip.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from _support import IMPL_PARAMS, Impl, extensions_disabled, load, skip_or_fail
from prometheus_client import CollectorRegistry


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--no-c-extensions",
        action="store_true",
        default=False,
        help="run only the pure-Python implementation's cases",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    if not (config.getoption("--no-c-extensions") or extensions_disabled()):
        return
    skip = pytest.mark.skip(reason="C extension disabled (--no-c-extensions / FASTMETRICS_NO_EXTENSIONS)")
    for item in items:
        if "c_extension" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=IMPL_PARAMS)
def impl(request: pytest.FixtureRequest) -> Impl:
    """One implementation (``_support.Impl``): its classes for this process and
    the environment of a child process that must run it."""
    return load(request.param)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs (root only; Linux): a file system that fills up."""
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mountpoint)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        skip_or_fail(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def counter(impl: Impl, registry: CollectorRegistry) -> Callable[..., Any]:
    """Factory: ``counter(name, doc, labelnames=..., ...)`` in a fresh registry."""

    def make(name: str = "events_total", documentation: str = "Events.", **kwargs: Any) -> Any:
        kwargs.setdefault("registry", registry)
        return impl.Counter(name, documentation, **kwargs)

    return make
