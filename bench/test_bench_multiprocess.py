"""Multiprocess mode: the increment in a worker process, and the scrape as files grow.

**inc.** Multiprocess mode must be enabled before any metric exists, so it is
measured in worker subprocesses (``bench/_mp_worker.py loop``), each running the
same compiled, unrolled ``c.inc()`` loop as the in-process bench, driven batch by
batch over a pipe (the pipe round trip, ~0.1 ms, is under 1% of a thread-sized
batch, and the same for every candidate).  Keys: ``<candidate>.worker.inc`` for
a worker in the usual single-process mode, ``<candidate>.mp.inc`` for one in
multiprocess mode (``FASTMETRICS_MULTIPROC_DIR`` / ``PROMETHEUS_MULTIPROC_DIR``
set before the import, as in production), ``fastmetrics_c.pmp.inc`` for
fastmetrics in the prometheus_client-compatible mode (``PROMETHEUS_MULTIPROC_DIR``
set: it writes prometheus_client's files).  ``floor.worker.inc`` is the no-op
method call, in a worker too.

**scrape.** ``bench/_mp_worker.py populate`` leaves F files of exited processes
(F in 1, 16, 64, 256), each with the same 10 counters incremented once, for
fastmetrics and for prometheus_client's multiprocess mode.  This process, which
never enabled either mode, registers each library's ``MultiProcessCollector``
in a fresh registry and times ``generate_latest`` (text format) on it,
repeatedly, as a long-lived exporter would.  Keys:
``fastmetrics_c.mp.scrape.f<F>`` (``compact=False``: all F files read on every
scrape), ``fastmetrics_c.mp.scrape.compacted.f<F>`` (the default
``compact=True`` after the F files were folded into the archive), and
``prometheus_client.mp.scrape.f<F>``.

**a new collector per scrape** (prometheus_client's documented per-request
pattern): 64 exited processes' files of 1,000 counters each, a new registry
and collector for every scrape (fastmetrics' with ``compact=False``, so both
read the 64 files each time).  Keys:
``<candidate>.mp.per_request.scrape.f64.s1000``.

**the first scrape of a cold directory**: an exporter process that starts
after 64 workers (1,000 counters each) exited scrapes their directory for the
first time (``bench/_mp_worker.py cold``: a fresh subprocess per scrape, on a
fresh sparse copy of the directory; fastmetrics' collector with compaction
on, so that scrape also folds the 64 files into the archive).  Rounds
alternate the two libraries; the key's value is the median of the rounds, in
seconds: ``<candidate>.mp.cold.first_scrape.f64.s1000``.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest
from _harness import Measure, unavailable  # type: ignore[import-not-found]
from prometheus_client import CollectorRegistry, generate_latest

import fastmetrics
from fastmetrics._cli.bench.subjects import FM_C
from fastmetrics._cli.bench.timing import Workload, compile_loop

pytestmark = [pytest.mark.bench_phase(40),
              pytest.mark.skipif(not hasattr(os, "fork"), reason="multiprocess mode needs POSIX")]

WORKER = Path(__file__).resolve().with_name("_mp_worker.py")
TIMEOUT = 120.0
FILES = (1, 16, 64, 256)
METRICS_PER_FILE = 10
MODE_ENV = {"fastmetrics_c": "FASTMETRICS_MULTIPROC_DIR", "prometheus_client": "PROMETHEUS_MULTIPROC_DIR"}


def _env(candidate: str, directory: Optional[Path], mode: str = "mp") -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("FASTMETRICS_MULTIPROC_DIR", "FASTMETRICS_MULTIPROC_CAPACITY",
                        "PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir", "FASTMETRICS_NO_EXTENSIONS")}
    if directory is not None:
        env["PROMETHEUS_MULTIPROC_DIR" if mode == "pmp" else MODE_ENV[candidate]] = str(directory)
    return env


def _need_extension(candidate: str) -> None:
    if candidate == FM_C and fastmetrics.implementation != "cython":
        unavailable(candidate, f"needs the Cython extension (implementation: {fastmetrics.implementation})")


class LoopWorker:
    """A ``_mp_worker.py loop`` subprocess: one ``inc()`` loop, run on demand."""

    def __init__(self, candidate: str, mode: str, directory: Optional[Path]) -> None:
        self.proc = subprocess.Popen([sys.executable, str(WORKER), "loop", candidate, mode],
                                     env=_env(candidate, directory, mode), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        self.unroll = int(self._reply("ready"))

    def _reply(self, word: str) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()   # the worker answers or exits (EOF): never blocks forever
        if not line.startswith(word):
            self.proc.wait(timeout=TIMEOUT)
            raise RuntimeError(f"bench worker exited with {self.proc.returncode} instead of {word!r}")
        return line[len(word):].strip()

    def run(self, n: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{n}\n")
        self._reply("ok")

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class RemoteLoop(Workload):
    """``run(n)``: the worker runs ``n * unroll`` increments; the worker outlives
    the measurement (``close`` is a no-op: the session fixture stops it)."""

    def __init__(self, worker: LoopWorker) -> None:
        self.worker = worker

    def run(self, n: int) -> None:
        self.worker.run(n)

    def ops(self, n: int) -> int:
        return n * self.worker.unroll


@pytest.fixture(scope="session")
def loop_workers() -> Iterator[Dict[Tuple[str, str], LoopWorker]]:
    """(candidate, mode) -> its worker, started on first use."""
    workers: Dict[Tuple[str, str], LoopWorker] = {}
    yield workers
    for worker in workers.values():
        worker.close()


INC_CASES = [("floor", "worker"), ("fastmetrics_c", "worker"), ("fastmetrics_c", "mp"), ("fastmetrics_c", "pmp"),
             ("prometheus_client", "worker"), ("prometheus_client", "mp")]


@pytest.mark.parametrize(("candidate", "mode"), INC_CASES, ids=[f"{c}-{m}" for c, m in INC_CASES])
def test_mp_inc(measure: Measure, loop_workers: Dict[Tuple[str, str], LoopWorker],
                tmp_path_factory: pytest.TempPathFactory, candidate: str, mode: str) -> None:
    _need_extension(candidate)
    worker = loop_workers.get((candidate, mode))
    if worker is None:
        directory = tmp_path_factory.mktemp(f"inc-{candidate}-{mode}") if mode != "worker" else None
        worker = loop_workers[(candidate, mode)] = LoopWorker(candidate, "local" if mode == "worker" else mode,
                                                              directory)
    measure(RemoteLoop(worker), candidate, f"{mode}.inc", threads=True)


# -- scrape as the number of files grows -----------------------------------------------

def _populate(candidate: str, directory: Path, files: int) -> None:
    directory.mkdir()
    subprocess.run([sys.executable, str(WORKER), "populate", candidate, str(files), str(METRICS_PER_FILE)],
                   env=_env(candidate, directory), check=True, timeout=TIMEOUT, stdout=subprocess.DEVNULL)


@pytest.fixture(scope="session")
def scrape_registries() -> Dict[Tuple[str, int], CollectorRegistry]:
    """(variant, files) -> a registry holding that directory's collector, built on first use."""
    return {}


def _registry(variant: str, files: int, root: Path) -> CollectorRegistry:
    from prometheus_client import multiprocess as prom_mp

    from fastmetrics import multiprocess as fm_mp

    registry = CollectorRegistry()
    directory = root / f"{variant}-f{files}"
    if variant == "prometheus_client":
        _populate("prometheus_client", directory, files)
        prom_mp.MultiProcessCollector(registry, path=str(directory))
        return registry
    _populate("fastmetrics_c", directory, files)
    if variant == "compacted":
        assert fm_mp.compact(str(directory)).absorbed == files
        fm_mp.MultiProcessCollector(registry, str(directory))
    else:
        fm_mp.MultiProcessCollector(registry, str(directory), compact=False)
    return registry


SCRAPE_CASES = [("fastmetrics_c", "uncompacted"), ("fastmetrics_c", "compacted"),
                ("prometheus_client", "prometheus_client")]


@pytest.mark.parametrize("files", FILES, ids=[f"f{n}" for n in FILES])
@pytest.mark.parametrize(("candidate", "variant"), SCRAPE_CASES, ids=[v for _, v in SCRAPE_CASES])
def test_mp_scrape(measure: Measure, scrape_registries: Dict[Tuple[str, int], CollectorRegistry],
                   tmp_path_factory: pytest.TempPathFactory, candidate: str, variant: str, files: int) -> None:
    _need_extension(candidate)
    registry = scrape_registries.get((variant, files))
    if registry is None:
        registry = scrape_registries[(variant, files)] = _registry(variant, files, tmp_path_factory.mktemp("mp"))
    expected = f"bench_mp_c{METRICS_PER_FILE - 1}_total {float(files)}"
    assert expected in generate_latest(registry).decode()   # every file was read
    op = f"mp.scrape.compacted.f{files}" if variant == "compacted" else f"mp.scrape.f{files}"
    workload = compile_loop("g(r)", {"g": generate_latest, "r": registry}, unroll=1)
    measure(workload, candidate, op, files=files, variant=variant)


# -- a new collector per scrape, and the scrape that compacts (issue 14) -----------------

PER_REQUEST_FILES, PER_REQUEST_SERIES = 64, 1000


@pytest.fixture(scope="session")
def per_request_dirs(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """candidate -> a directory of 64 exited processes' files, 1,000 counters each."""
    _need_extension(FM_C)   # its workers run the extension: unavailable, not a failed populate
    root = tmp_path_factory.mktemp("per-request")
    dirs = {}
    for candidate in ("fastmetrics_c", "prometheus_client"):
        directory = root / candidate
        directory.mkdir()
        subprocess.run([sys.executable, str(WORKER), "populate", candidate, str(PER_REQUEST_FILES),
                        str(PER_REQUEST_SERIES)], env=_env(candidate, directory), check=True, timeout=TIMEOUT * 5,
                       stdout=subprocess.DEVNULL)
        dirs[candidate] = directory
    return dirs


def _scrape_with_a_new_collector(candidate: str, directory: Path) -> bytes:
    """prometheus_client's documented per-request pattern: a new registry and
    collector for each scrape (fastmetrics' with compact=False, so both read
    the same 64 files every time)."""
    from prometheus_client import multiprocess as prom_mp

    from fastmetrics import multiprocess as fm_mp

    registry = CollectorRegistry()
    if candidate == "prometheus_client":
        prom_mp.MultiProcessCollector(registry, path=str(directory))
    else:
        fm_mp.MultiProcessCollector(registry, str(directory), compact=False)
    return generate_latest(registry)


@pytest.mark.parametrize("candidate", ["fastmetrics_c", "prometheus_client"])
def test_mp_scrape_with_a_new_collector_per_scrape(measure: Measure, per_request_dirs: Dict[str, Path],
                                                    candidate: str) -> None:
    _need_extension(candidate)
    directory = per_request_dirs[candidate]
    text = _scrape_with_a_new_collector(candidate, directory).decode()
    assert f"bench_mp_c{PER_REQUEST_SERIES - 1}_total {float(PER_REQUEST_FILES)}" in text   # every file was read
    workload = compile_loop("s(c, d)", {"s": _scrape_with_a_new_collector, "c": candidate, "d": directory}, unroll=1)
    measure(workload, candidate, f"mp.per_request.scrape.f{PER_REQUEST_FILES}.s{PER_REQUEST_SERIES}",
            files=PER_REQUEST_FILES, series=PER_REQUEST_SERIES)


def test_mp_worst_scrape_while_exited_workers_are_compacted(benchmark: object, per_request_dirs: Dict[str, Path],
                                                            tmp_path: Path) -> None:
    """The slowest single scrape of a long-lived collector (compaction on)
    from the moment 64 workers (1,000 counters each) have exited until their
    files are folded: the exporter had read their files while they lived (one
    scrape with ``compact=False`` first).  Seconds, measured once (the
    directory is consumed): ``fastmetrics_c.mp.compacting.worst_scrape.f64.s1000``,
    to compare with prometheus_client's per-request scrape of such a directory.
    The workers' files are copied as they are, sparse (``_sparse_copytree``:
    ``shutil.copytree`` would write 64 MiB of zeros per file, 4 GB whose
    writeback and block freeing then land in the measured scrapes), and
    flushed before the first scrape."""
    import time

    from _harness import record_value  # type: ignore[import-not-found]

    from fastmetrics import multiprocess as fm_mp

    _need_extension(FM_C)
    directory = tmp_path / "exited"
    _sparse_copytree(per_request_dirs[FM_C], directory)
    os.sync()
    warm = CollectorRegistry()
    fm_mp.MultiProcessCollector(warm, str(directory), compact=False)
    generate_latest(warm)
    registry = CollectorRegistry()
    fm_mp.MultiProcessCollector(registry, str(directory))
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        text = generate_latest(registry).decode()
        times.append(time.perf_counter() - t0)
        assert f"bench_mp_c{PER_REQUEST_SERIES - 1}_total {float(PER_REQUEST_FILES)}" in text
    assert sorted(p.name for p in directory.glob("*.fm")) == ["archive.fm"]   # all folded
    record_value(benchmark, FM_C, f"mp.compacting.worst_scrape.f{PER_REQUEST_FILES}.s{PER_REQUEST_SERIES}",
                 max(times), unit="s", scrapes=times)


# -- the first scrape of a directory no collector has read (issue 14) ------------------

COLD_ROUNDS = 5


def _sparse_copytree(source: Path, target: Path) -> None:
    """Copy the files of ``source`` keeping their holes (process files are
    64 MiB, mostly holes; ``shutil.copytree`` would write every zero)."""
    target.mkdir()
    for entry in source.iterdir():
        with open(entry, "rb") as src, open(target / entry.name, "wb") as dst:
            size = os.fstat(src.fileno()).st_size
            os.ftruncate(dst.fileno(), size)
            offset = 0
            while offset < size:
                try:
                    offset = os.lseek(src.fileno(), offset, os.SEEK_DATA)
                except OSError:   # ENXIO: only a hole is left
                    break
                end = os.lseek(src.fileno(), offset, os.SEEK_HOLE)
                os.pwrite(dst.fileno(), os.pread(src.fileno(), end - offset, offset), offset)
                offset = end


@pytest.fixture(scope="session")
def cold_first_scrapes(per_request_dirs: Dict[str, Path], tmp_path_factory: pytest.TempPathFactory
                       ) -> Dict[str, List[float]]:
    """candidate -> seconds of the first scrape of a fresh exporter process
    on a fresh copy of the 64 exited workers' directory, COLD_ROUNDS rounds,
    the libraries alternating within each round."""
    root = tmp_path_factory.mktemp("cold")
    name = f"bench_mp_c{PER_REQUEST_SERIES - 1}_total"
    seconds: Dict[str, List[float]] = {FM_C: [], "prometheus_client": []}
    for round_ in range(COLD_ROUNDS):
        order = sorted(seconds, reverse=bool(round_ % 2))
        for candidate in order:
            directory = root / f"{candidate}-{round_}"
            _sparse_copytree(per_request_dirs[candidate], directory)
            proc = subprocess.run([sys.executable, str(WORKER), "cold", candidate, str(directory), name],
                                  env=_env(candidate, None), capture_output=True, text=True, timeout=TIMEOUT)
            assert proc.returncode == 0, proc.stderr[-2000:]
            result = json.loads(proc.stdout)
            assert result["sample"] == f"{name} {float(PER_REQUEST_FILES)}"   # every file was read
            if candidate == FM_C:   # and that scrape compacted them
                assert sorted(p.name for p in directory.glob("*.fm")) == ["archive.fm"]
            seconds[candidate].append(result["seconds"])
            shutil.rmtree(directory)
    return seconds


@pytest.mark.parametrize("candidate", [FM_C, "prometheus_client"])
def test_mp_first_scrape_of_a_cold_directory(benchmark: object, cold_first_scrapes: Dict[str, List[float]],
                                             candidate: str) -> None:
    from _harness import record_value  # type: ignore[import-not-found]

    _need_extension(FM_C)
    rounds = cold_first_scrapes[candidate]
    record_value(benchmark, candidate, f"mp.cold.first_scrape.f{PER_REQUEST_FILES}.s{PER_REQUEST_SERIES}",
                 statistics.median(rounds), unit="s", scrapes=rounds)
