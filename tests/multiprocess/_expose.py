"""What an exporter serves from a multiprocess directory, and how the tests
read it: scrapes (plain, or bounded in time with both exposition formats),
samples, enum states, the directory listing, expected totals."""

from __future__ import annotations

import contextlib
import os
import stat
import threading
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from fastmetrics.multiprocess import MultiProcessCollector

STATES = ["idle", "busy", "done"]
LOGGER = "fastmetrics.multiprocess"
DEADLINE = 60.0   # seconds; every bounded operation takes milliseconds

Labels = Tuple[Tuple[str, str], ...]


def scrape(path: Path, **kwargs) -> Tuple[MultiProcessCollector, str]:
    """What an exporter serves: a fresh registry holding only the collector."""
    registry = CollectorRegistry()
    collector = MultiProcessCollector(registry, str(path), **kwargs)
    return collector, generate_latest(registry).decode()


def bounded(call: Callable[[], Any], fifo_dir: Optional[Path] = None) -> Any:
    """``call()`` in a daemon thread: its result, or its exception re-raised;
    the test fails if it has not returned within DEADLINE.  A reader stuck
    opening a FIFO is then released (each FIFO in ``fifo_dir`` is opened for
    writing), so the thread ends."""
    box: Dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = call()
        except BaseException as e:  # noqa: BLE001 - re-raised below
            box["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(DEADLINE)
    if thread.is_alive():
        for _ in range(20):
            for entry in (fifo_dir.iterdir() if fifo_dir else ()):
                if stat.S_ISFIFO(entry.lstat().st_mode):
                    with contextlib.suppress(OSError):
                        os.close(os.open(entry, os.O_WRONLY | os.O_NONBLOCK))
            thread.join(0.5)
        pytest.fail(f"{call} did not return within {DEADLINE} s")
    if "error" in box:
        raise box["error"]
    return box["result"]


def serve(path: Path, **kwargs) -> tuple:
    """(collector, text exposition, OpenMetrics exposition), each step bounded."""
    registry = CollectorRegistry()
    collector = MultiProcessCollector(registry, str(path), **kwargs)
    text = bounded(lambda: generate_latest(registry).decode(), path)
    openmetrics = bounded(lambda: generate_openmetrics(registry).decode(), path)
    return collector, text, openmetrics


def samples(text: str) -> Dict[Tuple[str, Labels], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(text: str, name: str, **labels: str) -> Optional[float]:
    return samples(text).get((name, tuple(sorted(labels.items()))))


def enum_states(text: str, name: str) -> Dict[Labels, str]:
    """Series of an enum -> its current state; each series must have exactly
    one state at 1 and every other state at 0."""
    series: Dict[Labels, Dict[str, float]] = {}
    for (sample, labels), v in samples(text).items():
        if sample == name:
            key = tuple((k, x) for k, x in labels if k != name)
            series.setdefault(key, {})[dict(labels)[name]] = v
    current = {}
    for key, states in series.items():
        assert sorted(states) == sorted(STATES), (key, states)
        on = [s for s, v in states.items() if v == 1]
        assert len(on) == 1 and sum(states.values()) == 1, (key, states)
        current[key] = on[0]
    return current


def fm_files(path: Path) -> List[str]:
    return sorted(p.name for p in path.iterdir() if p.name.endswith(".fm"))


def only_file(path: Path) -> Path:
    [name] = [n for n in fm_files(path) if n != "archive.fm"]
    return path / name


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def expected_count_totals(workers: Dict[str, int]) -> Dict[Tuple[str, Labels], float]:
    """Totals of ``count`` workers (label -> n), as the worker defines them."""
    expected = {("mp_ops_total", ()): float(sum(workers.values())),
                ("mp_bytes_total", (("code", "200"), ("direction", "in"))): 3.0 * len(workers),
                ("mp_bytes_total", (("code", "500"), ("direction", "out"))): 0.5 * len(workers)}
    for label, n in workers.items():
        expected[("mp_work_total", (("worker", label),))] = float(n)
    return expected


def assert_counters(text: str, expected: Dict[Tuple[str, Labels], float]) -> None:
    got = {k: v for k, v in samples(text).items() if k[0].endswith("_total")}
    assert got == expected


def skipped_paths(skipped) -> List[str]:
    return sorted({p for p, _ in skipped})


def reasons(skipped, path) -> str:
    return " | ".join(reason for p, reason in skipped if p == str(path))

