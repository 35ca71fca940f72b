"""Every core test runs against the Cython extension and the pure-Python twin.

``impl`` is parametrized over both (ids ``c`` and ``python``); the ``c`` cases
carry the ``c_extension`` marker and are skipped under ``--no-c-extensions``
or ``FASTMETRICS_NO_EXTENSIONS=1`` (as aio-libs' propcache and multidict do).
Outside those switches a missing extension is an error, not a skip.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any, Callable

import pytest
from prometheus_client import CollectorRegistry

from fastmetrics import _core_py, metrics


def _extensions_disabled() -> bool:
    return os.environ.get("FASTMETRICS_NO_EXTENSIONS", "").strip().lower() in ("1", "true", "yes", "on")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--no-c-extensions",
        action="store_true",
        default=False,
        help="run only the pure-Python implementation's cases",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:
    if not (config.getoption("--no-c-extensions") or _extensions_disabled()):
        return
    skip = pytest.mark.skip(reason="C extension disabled (--no-c-extensions / FASTMETRICS_NO_EXTENSIONS)")
    for item in items:
        if "c_extension" in item.keywords:
            item.add_marker(skip)


@dataclass(frozen=True)
class Impl:
    """One implementation: its core module and the public classes built on it."""

    name: str
    core: Any
    Counter: type
    Enum: type

    def stats(self) -> dict:
        return self.core.stats()  # type: ignore[no-any-return]


def _load(name: str) -> Impl:
    core = _core_py if name == "python" else importlib.import_module("fastmetrics._core_c")
    counter, enum = metrics.classes_for(core)
    return Impl(name, core, counter, enum)


@pytest.fixture(
    params=[
        pytest.param("c", marks=pytest.mark.c_extension),
        pytest.param("python"),
    ]
)
def impl(request: pytest.FixtureRequest) -> Impl:
    return _load(request.param)


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
