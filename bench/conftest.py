"""pytest-benchmark suite of fastmetrics, with ratio gates checked in the same run.

Run: ``PYTHONPATH=src python -m pytest bench/`` (add ``--bench-quick`` for CI).

* Every benchmark measures one *candidate* (``floor``, ``fastmetrics_c``,
  ``fastmetrics_py``, ``prometheus_client``, ``pycti``) on one operation and
  stores ``extra_info["key"] = "<candidate>.<op>"``; ``benchmark.group`` is the
  op, so pytest-benchmark's table puts the candidates of an op side by side.
* Times are per operation: each round runs a calibrated batch of calls from a
  compiled, unrolled loop (``fastmetrics._cli.bench.timing``), and the stored
  round times are divided by the batch's operation count, exactly as
  pytest-benchmark divides by ``iterations``.
* Interleaving: each benchmark is repeated ``--bench-reps`` times (parameter
  ``rep0``, ``rep1``...) and the run goes repetition by repetition through
  all benchmarks (odd repetitions in reverse order), so noise from the rest
  of the machine hits every candidate alike.  A gate's measured ratio is
  the median, over repetitions, of each repetition's ratio of medians
  (``_gates.py``), so load that changes between repetitions cancels out.
* Ordering phases (``@pytest.mark.bench_phase(n)``, default 10): lower
  phases run first.  Scrapes by thread count run first, in increasing thread
  count: shards are pooled, never freed (though bounded by the CPUs), so a
  process's earlier threads could colour a later scrape.  The many-threads
  scrape and memory benchmarks run in worker subprocesses of their own.
* Gates (``--bench-gates``, default ``bench/gates.toml``) are evaluated at the
  end of the session; any MISS makes the run fail (exit 1) and the table of
  every gate is printed.  A gate whose benchmarks did not run is NOT RUN:
  a failure with ``--bench-strict`` or under ``CI=true``, else a note.  A
  thread-scaling gate is normalised by its control (a loop with no shared
  state, candidate ``private``, measured in the same repetitions) and is
  INCONCLUSIVE, never a failure, when the control shows no free core or
  unsteady load (``_gates.py``).  A session with no benchmark data at all
  (``--benchmark-disable``, only the CLI smoke test) evaluates no gate.
* After pytest-benchmark's tables: scrape cost by (format, metrics, threads)
  and memory after thread churn (``_report.py``), then the gate table.
* ``--bench-quick`` (or ``FASTMETRICS_BENCH_QUICK=1``): 5 reps x 5 rounds of
  ~1 ms batches (thread rows 5 x ~15 ms); default 10 reps x 10 rounds of ~2 ms
  (thread rows 7 x ~25 ms).
* pycti's real ``OpenCTIMetricHandler`` comes from the published wheel
  (``pip download --no-deps pycti==PYCTI_VERSION``), cached in pytest's cache
  dir, or from ``FASTMETRICS_BENCH_PYCTI_FILE``; if unavailable its cases
  are skipped, except under ``CI=true`` where they fail.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from fastmetrics._cli.bench.ops import Op
from fastmetrics._cli.bench.subjects import Subjects, Unavailable

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # so the helper modules import under any --import-mode
    sys.path.insert(0, str(HERE))

import _gates  # noqa: E402
import _report  # noqa: E402
from _harness import Measure, Settings, env_flag, in_ci, pycti_cache_dir, pycti_module, unavailable  # noqa: E402

DEFAULT_PHASE = 10


# ---------------------------------------------------------------------------
# Options and settings.
# ---------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fastmetrics-bench", "fastmetrics benchmark gates")
    group.addoption("--bench-quick", action="store_true", default=False,
                    help="short run for CI (also FASTMETRICS_BENCH_QUICK=1)")
    group.addoption("--bench-gates", metavar="FILE", default=str(HERE / "gates.toml"),
                    help="ratio gates to check at the end of the run (default: bench/gates.toml)")
    group.addoption("--bench-reps", type=int, default=None, metavar="N",
                    help="interleaved repetitions of every benchmark (default 10; quick 5)")
    group.addoption("--bench-strict", action="store_true", default=False,
                    help="a gate whose benchmarks did not run fails the run (always so under CI=true)")


def _settings(config: pytest.Config) -> Settings:
    quick = config.getoption("--bench-quick") or env_flag("FASTMETRICS_BENCH_QUICK")
    try:
        return Settings.make(bool(quick), config.getoption("--bench-reps"))
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "bench_phase(n): run this benchmark in ordering phase n (lower first)")
    config._fm_bench_settings = _settings(config)  # type: ignore[attr-defined]
    gates_path = config.getoption("--bench-gates")
    try:
        config._fm_bench_gates = _gates.load(gates_path)  # type: ignore[attr-defined]
    except _gates.GateFileError as exc:
        raise pytest.UsageError(str(exc)) from None


@pytest.fixture(scope="session")
def settings(pytestconfig: pytest.Config) -> Settings:
    return pytestconfig._fm_bench_settings  # type: ignore[attr-defined,no-any-return]


# ---------------------------------------------------------------------------
# Repetitions and interleaved order.
# ---------------------------------------------------------------------------


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "bench_rep" in metafunc.fixturenames:
        reps = metafunc.config._fm_bench_settings.reps  # type: ignore[attr-defined]
        metafunc.parametrize("bench_rep", range(reps), ids=[f"rep{i}" for i in range(reps)])


def _phase(item: pytest.Item) -> int:
    marker = item.get_closest_marker("bench_phase")
    return int(marker.args[0]) if marker else DEFAULT_PHASE


def _rep(item: pytest.Item) -> int:
    callspec = getattr(item, "callspec", None)
    return int(callspec.params.get("bench_rep", 0)) if callspec else 0


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    """Bench items phase by phase; inside a phase, repetition by repetition, odd
    ones reversed.  Items from outside ``bench/`` keep their order, first."""
    position = {id(item): i for i, item in enumerate(items)}

    def key(item: pytest.Item) -> Tuple[int, int, int, int]:
        pos = position[id(item)]
        if HERE not in Path(str(item.path)).resolve().parents:
            return (0, 0, 0, pos)
        rep = _rep(item)
        return (1, _phase(item), rep, -pos if rep % 2 else pos)

    items.sort(key=key)


# ---------------------------------------------------------------------------
# Subjects: what each candidate's operation is called on.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def subjects(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Subjects:
    """Builds each candidate's subjects (one per session: at most one activated
    handler per candidate, see ``fastmetrics._cli.bench.subjects.Subjects.handler``)."""

    def load_pycti() -> Tuple[Any, str]:  # only when a pycti case runs
        return pycti_module(pycti_cache_dir(pytestconfig, tmp_path_factory))

    return Subjects(pycti_loader=load_pycti)


@pytest.fixture(scope="session")
def calibration() -> Dict[str, int]:
    """Batch size per benchmark key, calibrated at its first repetition."""
    return {}


@pytest.fixture
def measure(benchmark: Any, settings: Settings, bench_rep: int, calibration: Dict[str, int]) -> Measure:
    return Measure(benchmark, settings, bench_rep, calibration)


@pytest.fixture
def run_op(measure: Measure, subjects: Subjects) -> Any:
    """``run_op(op, candidate)``: measure a :class:`fastmetrics._cli.bench.ops.Op`."""

    def run(op: Op, candidate: str) -> None:
        try:
            workload = op.workload(subjects, candidate)
        except Unavailable as exc:
            unavailable(candidate, str(exc))
        measure(workload, candidate, op.key, threads=bool(op.threads))

    return run


# ---------------------------------------------------------------------------
# Gates.
# ---------------------------------------------------------------------------


def _records(config: pytest.Config) -> List[Tuple[Dict[str, Any], List[float]]]:
    """(extra_info, per-op times) of every benchmark of this session that ran."""
    session = getattr(config, "_benchmarksession", None)
    return [(dict(meta.extra_info or {}), list(meta.stats.data))
            for meta in getattr(session, "benchmarks", ()) if meta and not meta.has_error]


def _samples(config: pytest.Config) -> Dict[str, Dict[int, List[float]]]:
    """key -> repetition -> per-op times."""
    pooled: Dict[str, Dict[int, List[float]]] = {}
    for info, data in _records(config):
        if info.get("key"):
            pooled.setdefault(info["key"], {}).setdefault(int(info.get("rep", 0)), []).extend(data)
    return pooled


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    gates = getattr(config, "_fm_bench_gates", None)
    if not gates or getattr(config, "workerinput", None) is not None:  # xdist workers: no gating
        return
    samples = _samples(config)
    if not samples:  # not a benchmark run (e.g. only the CLI smoke test, or --benchmark-disable)
        config._fm_bench_outcomes = None  # type: ignore[attr-defined]
        return
    outcomes = _gates.evaluate(gates, samples)
    strict = config.getoption("--bench-strict") or in_ci()
    failed = [o for o in outcomes if o.result == _gates.MISS or (strict and o.result == _gates.NOT_RUN)]
    config._fm_bench_outcomes = (outcomes, failed, strict)  # type: ignore[attr-defined]
    if failed and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(trylast=True)  # after pytest-benchmark's tables
def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    tr = terminalreporter
    records = _records(config)
    for title, lines in (("scrape cost as metrics and threads grow (median per scrape)",
                          _report.scrape_growth(records)),
                         ("multiprocess scrape as process files grow (median per scrape)",
                          _report.mp_scrape(records)),
                         ("memory after thread churn", _report.churn_memory(records))):
        if lines:
            tr.section(title)
            for line in lines:
                tr.write_line(line)
    if not hasattr(config, "_fm_bench_outcomes"):
        return
    result = config._fm_bench_outcomes  # type: ignore[attr-defined]
    if result is None:
        tr.write_line("fastmetrics bench gates: no benchmark data in this run, gates not evaluated")
        return
    outcomes, failed, strict = result
    settings: Settings = config._fm_bench_settings  # type: ignore[attr-defined]
    tr.section("fastmetrics bench gates")
    tr.write_line(f"gates: {config.getoption('--bench-gates')}; measured = median over the "
                  f"{settings.reps} interleaved reps{' (quick)' if settings.quick else ''} of "
                  "each rep's ratio of medians (s/op)")
    for line in _gates.format_table(outcomes):
        tr.write_line(line)
    counts = {r: sum(1 for o in outcomes if o.result == r) for r in _gates.RESULTS}
    summary = ", ".join(f"{n} {r}" for r, n in counts.items() if n)
    if counts[_gates.INCONCLUSIVE]:
        tr.write_line(f"{counts[_gates.INCONCLUSIVE]} gate(s) INCONCLUSIVE: their no-shared-state control did not "
                      "scale (no free core) or was unsteady in this run; they do not fail it: rerun on an idle "
                      "machine to measure them", yellow=True)
    if failed:
        why = "MISS" if counts[_gates.MISS] else "NOT RUN under --bench-strict / CI"
        tr.write_line(f"bench gates FAILED ({summary}): {len(failed)} gate(s) {why}", red=True, bold=True)
    else:
        note = "" if not counts[_gates.NOT_RUN] or strict else " (NOT RUN gates do not fail without --bench-strict)"
        tr.write_line(f"bench gates passed ({summary}){note}", green=True, bold=True)
