"""Helpers of the bench suite (imported by ``conftest.py`` and the bench files).

* :class:`Settings`: batch targets and round counts (normal / quick).
* :class:`Measure`: calibrate a batch, time it with pytest-benchmark, store
  seconds per operation and the benchmark's ``key`` (``<candidate>.<op>``).
* :func:`record_value`: store a measured value that is not a time (memory)
  under a key, for a ratio gate between two such keys.
* :func:`pycti_module`: pycti's real ``OpenCTIMetricHandler`` module from the
  published wheel, downloaded once into a cache dir.
* :func:`unavailable`: skip a case that cannot run here (fail for pycti in CI).
* :class:`PerThreadLoops`: a workload whose every thread runs its own loop over
  its own subject (the no-shared-state control of the thread-scaling gates).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import pytest

from fastmetrics._cli.bench.subjects import PYCTI, load_pycti_handler_module
from fastmetrics._core import _env_flag as env_flag
from fastmetrics._cli.bench.timing import Workload, calibrate, gc_paused

PYCTI_VERSION = "7.261026.0"   # = tests/_support.py's (tests/test_support.py checks)
PYCTI_MEMBER = "pycti/connector/opencti_metric_handler.py"


class PerThreadLoops(Workload):
    """``run(n)`` runs, in the calling thread, that thread's own loop (made by
    ``factory()`` on its first call), so threads share no subject: under a
    :class:`~fastmetrics._cli.bench.timing.ThreadedLoop` this is the control of
    a thread-scaling gate."""

    def __init__(self, factory: Callable[[], Workload]) -> None:
        self._factory = factory
        self._local = threading.local()
        self._prototype = factory()  # for ops(); never run

    def run(self, n: int) -> None:
        loop = getattr(self._local, "loop", None)
        if loop is None:
            loop = self._local.loop = self._factory()
        loop.run(n)

    def ops(self, n: int) -> int:
        return self._prototype.ops(n)


def in_ci() -> bool:
    return env_flag("CI")


@dataclass(frozen=True)
class Settings:
    """How long to measure: per-round batch targets (seconds) and round counts."""

    quick: bool
    reps: int
    rounds: int
    target_s: float
    thread_rounds: int
    thread_target_s: float

    @classmethod
    def make(cls, quick: bool, reps: Optional[int] = None) -> Settings:
        base = cls(True, 5, 5, 0.001, 5, 0.015) if quick else cls(False, 10, 10, 0.002, 7, 0.025)
        if reps is None:
            return base
        if reps < 1:
            raise ValueError("--bench-reps must be >= 1")
        return cls(base.quick, reps, base.rounds, base.target_s, base.thread_rounds, base.thread_target_s)


def unavailable(candidate: str, reason: str) -> None:
    """Skip a case whose candidate cannot run here; pycti must run under CI."""
    if candidate == PYCTI and in_ci():
        pytest.fail(f"CI=true: {reason}")
    pytest.skip(reason)


def _per_op(benchmark: Any, ops: int) -> None:
    """Turn the rounds pytest-benchmark just stored into seconds per operation
    (as pytest-benchmark itself divides by ``iterations``)."""
    meta = getattr(benchmark, "stats", None)
    if not meta:  # --benchmark-disable: nothing was timed
        return
    stats = meta.stats
    stats.data[:] = [d / ops for d in stats.data]
    for cached in tuple(stats.__dict__):  # drop any derived statistic already cached
        if cached != "data":
            del stats.__dict__[cached]
    meta.iterations = ops


@dataclass
class Measure:
    """``measure(workload, candidate, op, threads=False, n=None, **extra)``.

    Calibrates ``n`` (unless given) so one ``workload.run(n)`` lasts about the
    settings' target (once per key and session: later repetitions reuse it), times
    ``rounds`` such batches (after one warm-up) with ``benchmark.pedantic``,
    and stores per-operation times, ``group = op`` and ``extra_info``
    (``key``, ``candidate``, ``op``, ``rep``, ``ops_per_round`` and
    ``extra``).  Closes the workload.
    """

    benchmark: Any
    settings: Settings
    rep: int
    calibration: Dict[str, int] = field(default_factory=dict)

    def __call__(self, workload: Workload, candidate: str, op: str, *,
                 threads: bool = False, n: Optional[int] = None, **extra: Any) -> None:
        try:
            target = self.settings.thread_target_s if threads else self.settings.target_s
            rounds = self.settings.thread_rounds if threads else self.settings.rounds
            key = f"{candidate}.{op}"
            if n is None:  # a given n skips calibration
                n = self.calibration.get(key) or calibrate(workload, target)
                self.calibration[key] = n
            ops = workload.ops(n)
            self.benchmark.group = op
            self.benchmark.extra_info.update(key=key, candidate=candidate, op=op,
                                             rep=self.rep, ops_per_round=ops, **extra)
            self.benchmark.pedantic(_gc_off(workload.run), args=(n,), rounds=rounds, warmup_rounds=1, iterations=1)
            _per_op(self.benchmark, ops)
        finally:
            workload.close()


def record_value(benchmark: Any, candidate: str, op: str, value: float, unit: str, **extra: Any) -> None:
    """Store one measured ``value`` that is not a time (e.g. KiB of memory) as
    the benchmark of key ``<candidate>.<op>``, for ratio gates between two
    such keys (``unit`` is recorded in ``extra_info``; a gate must never
    divide keys of different units).  Repetition 0: measured once."""
    key = f"{candidate}.{op}"
    benchmark.group = op
    benchmark.extra_info.update(key=key, candidate=candidate, op=op, rep=0, ops_per_round=1, unit=unit, **extra)
    benchmark.pedantic(lambda: None, rounds=1, warmup_rounds=0, iterations=1)
    meta = getattr(benchmark, "stats", None)
    if not meta:  # --benchmark-disable
        return
    stats = meta.stats
    stats.data[:] = [value]
    for cached in tuple(stats.__dict__):  # drop any derived statistic already cached
        if cached != "data":
            del stats.__dict__[cached]


def _gc_off(run: Callable[[int], None]) -> Callable[[int], None]:
    """``run`` with the cyclic GC off while it runs (:func:`gc_paused`)."""

    def batch(n: int) -> None:
        with gc_paused():
            run(n)

    return batch


def _download_pycti_file(cache_dir: Path) -> Path:
    """pycti's handler module, extracted from the pinned wheel (downloaded once)."""
    target = cache_dir / f"pycti-{PYCTI_VERSION}-opencti_metric_handler.py"
    if target.is_file():
        return target
    wheels = sorted(cache_dir.glob(f"pycti-{PYCTI_VERSION}-*.whl"))
    if not wheels:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               f"pycti=={PYCTI_VERSION}", "-d", str(cache_dir)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeError(f"`{' '.join(cmd)}` failed: {exc}") from None
        wheels = sorted(cache_dir.glob(f"pycti-{PYCTI_VERSION}-*.whl"))
        if proc.returncode != 0 or not wheels:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"`{' '.join(cmd)}` failed: {' | '.join(tail)}")
    with zipfile.ZipFile(wheels[-1]) as wheel:
        source = wheel.read(PYCTI_MEMBER)
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(source)
    tmp.replace(target)
    return target


def pycti_cache_dir(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where pycti's handler is downloaded once: pytest's cache (kept between
    runs), or a temporary directory under ``-p no:cacheprovider``."""
    cache = getattr(pytestconfig, "cache", None)
    return Path(cache.mkdir("fastmetrics-bench-pycti")) if cache else tmp_path_factory.mktemp("pycti")


def pycti_module(cache_dir: Path) -> Tuple[Any, str]:
    """``(module, path)`` of pycti's real handler module, or ``(None, reason)``.

    ``FASTMETRICS_BENCH_PYCTI_FILE`` names the file directly (offline use);
    otherwise it is extracted from ``pycti==PYCTI_VERSION``'s wheel, fetched
    with ``pip download --no-deps`` into ``cache_dir`` once.
    """
    explicit = os.environ.get("FASTMETRICS_BENCH_PYCTI_FILE")
    try:
        path = Path(explicit) if explicit else _download_pycti_file(cache_dir)
        return load_pycti_handler_module(str(path)), str(path)
    except Exception as exc:  # network, pip, zip, import: all mean "no pycti here"
        return None, f"pycti {PYCTI_VERSION}'s OpenCTIMetricHandler unavailable: {exc}"
