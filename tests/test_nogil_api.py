"""The public nogil C API (``fastmetrics/_core_c.pxd``), exercised from a
downstream Cython module compiled exactly as a user would (``_downstream.py``):
``cythonize(..., include_path=[fastmetrics.get_include()])``, built once per
session in a subprocess, then imported.

Every counting test runs while a scraper thread reads the metric through
``registry.get_sample_value`` in a loop and checks readings never go backwards.
"""

from __future__ import annotations

import gc
import threading
import time
from typing import Any, Dict, Iterator, List, Optional

import pytest
from prometheus_client import CollectorRegistry, generate_latest

import _downstream
import fastmetrics

pytestmark = pytest.mark.c_extension

N = 10_000_000  # increments per thread in the big loops


@pytest.fixture(scope="session")
def ds(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The compiled downstream module (one build per session)."""
    if fastmetrics.implementation != "cython":
        pytest.skip(f"the nogil C API needs the Cython extension (implementation: {fastmetrics.implementation})")
    return _downstream.build(tmp_path_factory.mktemp("downstream"))


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


class Scraper:
    """Reads ``name{labels}`` in a loop on its own thread; ``stop()`` returns the
    readings count and raises if any reading was lower than the one before."""

    def __init__(self, registry: CollectorRegistry, name: str, labels: Optional[Dict[str, str]] = None) -> None:
        self.registry, self.name, self.labels = registry, name, labels
        self.readings = 0
        self.errors: List[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scraper", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = -1.0
        while not self._stop.is_set():
            value = self.registry.get_sample_value(self.name, self.labels)
            if value is not None:
                if value < last:
                    self.errors.append(f"reading went backwards: {last} -> {value}")
                last = value
                self.readings += 1
            time.sleep(0.0005)  # 2 shared cores: leave them to the counting threads

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        assert not self.errors, self.errors[:5]
        return self.readings


@pytest.fixture
def scraping(registry: CollectorRegistry) -> Iterator[Any]:
    """``scraping(name, labels=None)`` starts a :class:`Scraper`; all are stopped
    (and checked) at teardown."""
    started: List[Scraper] = []

    def start(name: str, labels: Optional[Dict[str, str]] = None) -> Scraper:
        scraper = Scraper(registry, name, labels)
        started.append(scraper)
        return scraper

    yield start
    for scraper in started:
        scraper.stop()


def run_threads(target: Any, args: tuple, count: int) -> List[Any]:
    """Run ``target(*args)`` on ``count`` threads at once; their return values."""
    results: List[Any] = [None] * count
    errors: List[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = target(*args)
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


# ---------------------------------------------------------------------------
# get_include()
# ---------------------------------------------------------------------------


def test_get_include_contains_the_package_pxd() -> None:
    import os

    root = fastmetrics.get_include()
    assert os.path.isfile(os.path.join(root, "fastmetrics", "_core_c.pxd"))
    assert os.path.isfile(os.path.join(root, "fastmetrics", "__init__.py"))


# ---------------------------------------------------------------------------
# counter_add without the GIL
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("threads", [1, 2, 4], ids=lambda n: f"t{n}")
def test_counter_add_totals_exact(ds: Any, registry: CollectorRegistry, scraping: Any, threads: int) -> None:
    c = fastmetrics.Counter("nogil", "Nogil increments.", registry=registry)
    scraper = scraping("nogil_total")
    failed = run_threads(ds.hammer, (c, N, 1.0), threads)
    assert failed == [0] * threads
    assert scraper.stop() > 0
    assert c._value.get() == threads * N
    assert registry.get_sample_value("nogil_total") == threads * N


def test_counter_add_labelled_child(ds: Any, registry: CollectorRegistry, scraping: Any) -> None:
    c = fastmetrics.Counter("jobs", "Jobs.", ["kind"], registry=registry)
    child = c.labels("parsed")
    scraper = scraping("jobs_total", {"kind": "parsed"})
    assert run_threads(ds.hammer, (child, 1_000_000, 0.5), 2) == [0, 0]
    assert scraper.stop() > 0
    assert registry.get_sample_value("jobs_total", {"kind": "parsed"}) == 1_000_000.0


def test_counter_add_thread_waves(ds: Any, registry: CollectorRegistry, scraping: Any) -> None:
    """Threads that start, count without the GIL and exit, in waves: nothing is
    lost and the shard store does not grow with the waves (shards are pooled)."""
    waves, per_wave, n = 200, 4, 10_000
    c = fastmetrics.Counter("waves", "Waves.", registry=registry)
    scraper = scraping("waves_total")
    run_threads(ds.hammer, (c, n, 1.0), per_wave)  # warm the pool to this many threads
    before = fastmetrics.shard_stats()
    peak = before["shards_total"]
    for _ in range(waves - 1):
        assert run_threads(ds.hammer, (c, n, 1.0), per_wave) == [0] * per_wave
        peak = max(peak, fastmetrics.shard_stats()["shards_total"])
    assert scraper.stop() > 0
    assert c._value.get() == waves * per_wave * n
    after = fastmetrics.shard_stats()
    # 199 more waves of 4 fresh threads reuse the pooled shards (a little slack:
    # a wave's exiting threads may hand theirs back just after the next starts).
    assert peak <= before["shards_total"] + per_wave, (before, after)
    assert after["shards_live"] <= before["shards_live"], (before, after)


def test_counter_add_rejects_bad_amounts_and_parents(ds: Any, registry: CollectorRegistry) -> None:
    c = fastmetrics.Counter("amounts", "Amounts.", registry=registry)
    assert ds.hammer(c, 10, -1.0) == 10
    assert ds.hammer(c, 10, float("nan")) == 10
    assert c._value.get() == 0
    parent = fastmetrics.Counter("parent", "Parent.", ["k"], registry=registry)
    assert ds.hammer(parent, 10, 1.0) == 10  # a labelled parent has no value
    assert registry.get_sample_value("parent_total", {"k": "x"}) is None
    with pytest.raises(TypeError):
        ds.hammer(None, 1, 1.0)
    with pytest.raises(TypeError):
        ds.hammer(object(), 1, 1.0)


# ---------------------------------------------------------------------------
# A handle to a removed child
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["remove", "clear"])
def test_handle_to_removed_child(ds: Any, registry: CollectorRegistry, scraping: Any, how: str) -> None:
    c = fastmetrics.Counter("handled", "Handled.", ["k"], registry=registry)
    handle = c.labels("x")
    sibling = c.labels("y")
    scraper = scraping("handled_total", {"k": "y"})
    assert ds.hammer(handle, 1000, 1.0) == 0
    if how == "remove":
        c.remove("x")
    else:
        c.clear()
        sibling = c.labels("y")  # cleared too: a fresh child
    gc.collect()
    assert registry.get_sample_value("handled_total", {"k": "x"}) is None  # no longer exported
    # Counting through the kept handle is safe, on threads and without the GIL,
    # while the sibling keeps counting and is scraped.
    results = run_threads(lambda o: ds.hammer(o, 200_000, 1.0), (handle,), 2)
    assert results == [0, 0]
    assert ds.hammer(sibling, 500, 1.0) == 0
    assert scraper.stop() > 0
    # The counts landed on the removed child...
    assert handle._value.get() == 1000 + 400_000
    assert registry.get_sample_value("handled_total", {"k": "x"}) is None
    # ...not on a new child for the same labels, which starts at zero.
    fresh = c.labels("x")
    assert fresh is not handle
    assert fresh._value.get() == 0
    assert registry.get_sample_value("handled_total", {"k": "x"}) == 0.0
    assert registry.get_sample_value("handled_total", {"k": "y"}) == 500.0


def test_handle_outlives_its_counter(ds: Any) -> None:
    """The handle alone keeps the child (and its slot) alive."""
    registry = CollectorRegistry()
    c = fastmetrics.Counter("gone", "Gone.", ["k"], registry=registry)
    handle = c.labels("x")
    registry.unregister(c)
    del c, registry
    gc.collect()
    assert ds.hammer(handle, 100_000, 1.0) == 0
    assert handle._value.get() == 100_000


# ---------------------------------------------------------------------------
# enum_set without the GIL
# ---------------------------------------------------------------------------


def _state(registry: CollectorRegistry, name: str, labels: Optional[Dict[str, str]] = None) -> List[str]:
    """The states whose sample is 1 (exactly one for a consistent enum)."""
    on = []
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == name and sample.value == 1 and all(
                    sample.labels.get(k) == v for k, v in (labels or {}).items()):
                on.append(sample.labels[name])
    return on


def test_enum_set(ds: Any, registry: CollectorRegistry) -> None:
    e = fastmetrics.Enum("phase", "Phase.", states=["a", "b", "c"], registry=registry)
    assert _state(registry, "phase") == ["a"]
    assert ds.set_state(e, 2) == 0
    assert _state(registry, "phase") == ["c"]
    assert ds.set_states(e, 1_000_001, 3) == 0  # last index set: 1_000_000 % 3 == 1
    assert _state(registry, "phase") == ["b"]


@pytest.mark.parametrize("index", [-1, 3, 1 << 40], ids=["neg", "nstates", "huge"])
def test_enum_set_out_of_range(ds: Any, registry: CollectorRegistry, index: int) -> None:
    e = fastmetrics.Enum("phase", "Phase.", states=["a", "b", "c"], registry=registry)
    e.state("b")
    assert ds.set_state(e, index) == -1
    assert _state(registry, "phase") == ["b"]
    assert ds.set_states(e, 10, 4) == 2  # i % 4 == 3 (i = 3, 7) fails; the rest land
    assert _state(registry, "phase") == ["b"]  # last index set: 9 % 4 == 1


def test_enum_set_labelled_parent(ds: Any, registry: CollectorRegistry) -> None:
    e = fastmetrics.Enum("task", "Task.", ["k"], states=["a", "b"], registry=registry)
    assert ds.set_state(e, 0) == -1
    assert ds.set_state(e, 1) == -1
    assert _state(registry, "task") == []
    child = e.labels("x")
    assert ds.set_state(child, 1) == 0
    assert _state(registry, "task", {"k": "x"}) == ["b"]


def test_unset_handles_are_refused_and_touch_nothing(ds: Any, registry: CollectorRegistry) -> None:
    # Audit item 10: a `cdef CounterCore` that is still None made counter_add
    # report success and add into slot 0 (another metric), and enum_set crash.
    counters = [fastmetrics.Counter(f"bystander{i}", "B.", registry=registry) for i in range(4)]
    e = fastmetrics.Enum("bystander_state", "B.", states=["a", "b"], registry=registry)
    e.state("b")
    before = generate_latest(registry)
    assert ds.add_to_unset(1.0) == -1
    assert ds.set_unset(0) == -1
    assert ds.set_unset(1) == -1
    assert generate_latest(registry) == before
    assert all(c._value.get() == 0 for c in counters)


def test_enum_set_while_scraped(ds: Any, registry: CollectorRegistry) -> None:
    """Readers always see exactly one state on while two threads set states nogil."""
    e = fastmetrics.Enum("flip", "Flip.", states=["a", "b", "c", "d"], registry=registry)
    stop = threading.Event()
    bad: List[List[str]] = []

    def read() -> None:
        while not stop.is_set():
            on = _state(registry, "flip")
            if len(on) != 1:
                bad.append(on)
            time.sleep(0.0005)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        assert run_threads(ds.set_states, (e, 2_000_000, 4), 2) == [0, 0]
    finally:
        stop.set()
        reader.join()
    assert not bad, bad[:5]
    assert _state(registry, "flip") == ["d"]  # both threads end on (2_000_000 - 1) % 4 == 3


# ---------------------------------------------------------------------------
# counter_add in the prometheus_client-compatible multiprocess mode
# ---------------------------------------------------------------------------


def test_counter_add_writes_prometheus_client_files(ds: Any, tmp_path: Any) -> None:
    """``counter_add`` takes the same add path as ``inc()``: with
    ``PROMETHEUS_MULTIPROC_DIR`` set its counts (4 threads, without the GIL)
    are in prometheus_client's files, exactly, for its own collector; and
    ``enum_set`` writes the enum's gauges."""
    import os
    import subprocess
    import sys
    import textwrap

    from _support import load

    code = textwrap.dedent("""
        import threading
        import fm_downstream as ds
        from fastmetrics import Counter, Enum
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector
        c = Counter("nogil", "Nogil increments.")
        failed = []
        ts = [threading.Thread(target=lambda: failed.append(ds.hammer(c, 1_000_000, 1.0))) for _ in range(4)]
        for t in ts: t.start()
        for t in ts: t.join()
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        print(failed, registry.get_sample_value("nogil_total"), c._value.get())
        e = Enum("phase", "Phase.", states=["a", "b"])
        ds.set_state(e, 1)   # enum_set: the files are written too (under the GIL, in this mode)
        print(registry.get_sample_value("phase", {"phase": "a"}), registry.get_sample_value("phase", {"phase": "b"}))
        """)
    env = load("c").env(PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(ds.__file__), *sys.path])
    proc = subprocess.run([sys.executable, "-c", load("c").prologue + code], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["[0,", "0,", "0,", "0]", "4000000.0", "4000000.0", "0.0", "1.0"]
