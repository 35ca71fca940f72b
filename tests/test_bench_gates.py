"""The bench suite's ratio gates fail the run, with a readable table, when a bound
does not hold (``bench/conftest.py``, ``bench/_gates.py``); a thread-scaling
gate is normalised by its no-shared-state control, and is INCONCLUSIVE, not a
failure, when the control shows no free core or unsteady load.

The end-to-end cases run pytest in a subprocess on one tiny benchmark (the
floor's ``inc()``, one repetition) with a temporary gates file.  The gates
compare that benchmark with itself, so the measured ratio is exactly 1.0
whatever the machine's speed: ``<= 0.5`` can never pass and ``<= 1`` always
does.  The control's arithmetic is checked on made-up samples.  No timing is
asserted: this file is the README test command's check of the gate machinery
(the gates themselves are ``bash scripts/bench.sh``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import pytest
from _support import bench_gates

import fastmetrics

pytest.importorskip("pytest_benchmark")

ROOT = Path(__file__).resolve().parents[1]
NODE = "bench/test_bench_counter.py::test_counter_inc[rep0-floor]"
KEY = "floor.counter.inc"


def _run_bench(tmp_path: Path, check: str = "", gates: Optional[Path] = None) -> subprocess.CompletedProcess:
    if gates is None:
        gates = tmp_path / "gates.toml"
        gates.write_text(f'[[gate]]\ncheck = "{check}"\nwhy = "self-comparison"\n')
    env = dict(os.environ)
    # The subprocess imports the same fastmetrics as this process (installed, or src/).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(fastmetrics.__file__).parents[1]),
                                                      env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "pytest", NODE, "--bench-quick", "--bench-reps", "1",
           "--bench-gates", str(gates), "-p", "no:cacheprovider", "-q", "--benchmark-disable-gc"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_impossible_gate_fails_the_run_with_a_table(tmp_path: Path) -> None:
    proc = _run_bench(tmp_path, f"{KEY} / {KEY} <= 0.5")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "1 passed" in out, out  # the benchmark itself ran fine; only the gate failed
    assert "fastmetrics bench gates" in out, out
    line = next(line for line in out.splitlines() if line.startswith(f"{KEY} / {KEY}"))
    assert "1.000" in line and "<= 0.5" in line and "MISS" in line, line
    assert "bench gates FAILED (1 MISS)" in out, out


def test_gate_that_holds_passes(tmp_path: Path) -> None:
    proc = _run_bench(tmp_path, f"{KEY} / {KEY} <= 1")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    line = next(line for line in out.splitlines() if line.startswith(f"{KEY} / {KEY}"))
    assert "1.000" in line and "PASS" in line, line
    assert "bench gates passed (1 PASS)" in out, out


def test_malformed_gates_file_is_a_usage_error(tmp_path: Path) -> None:
    proc = _run_bench(tmp_path, f"{KEY} < 2")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 4, out  # pytest's usage-error exit code
    assert "bad check" in out and "KEY / KEY <= NUMBER" in out, out


def test_control_gate_with_no_free_core_is_inconclusive_and_passes_the_run(tmp_path: Path) -> None:
    # The control is the benchmark over itself (1.0): below inconclusive_below = 1.5.
    gates = tmp_path / "gates.toml"
    gates.write_text(f'[[gate]]\ncheck = "{KEY} / {KEY} >= 5"\ncontrol = "{KEY} / {KEY}"\n'
                     'expect = 2\ninconclusive_below = 1.5\nwhy = "self-comparison"\n')
    proc = _run_bench(tmp_path, gates=gates)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out  # >= 5 cannot hold, yet the run passes: the machine had no free core
    line = next(line for line in out.splitlines() if line.startswith(f"{KEY} / {KEY}"))
    assert "INCONCLUSIVE" in line and "raw 1.000, control 1.000 (expect 2)" in line, line
    assert "no free core" in line, line
    assert "bench gates passed (1 INCONCLUSIVE)" in out, out


# -- the control's arithmetic, on made-up samples ------------------------------------


def _samples(**ratios_per_rep: list) -> dict:
    """``name=[t1/t2 per rep]`` -> samples of ``name.t1`` and ``name.t2`` (t2 = 1 s/op)."""
    samples: dict = {}
    for name, ratios in ratios_per_rep.items():
        samples[f"{name}.t1"] = {rep: [ratio] for rep, ratio in enumerate(ratios)}
        samples[f"{name}.t2"] = {rep: [1.0] for rep in range(len(ratios))}
    return samples


SCALES = ('[[gate]]\ncheck = "fm.t1 / fm.t2 >= 1.4"\ncontrol = "ctl.t1 / ctl.t2"\n'
          'expect = 2\ninconclusive_below = 1.3\nwhy = "scales"\n')
CONTENDS = ('[[gate]]\ncheck = "shared.t1 / shared.t2 <= 1.3"\ncontrol = "ctl.t1 / ctl.t2"\n'
            'expect = 2\ninconclusive_below = 1.7\nwhy = "does not scale"\n')


def _evaluate(tmp_path: Path, text: str, samples: dict):
    g = bench_gates()
    path = tmp_path / "gates.toml"
    path.write_text(text)
    (outcome,) = g.evaluate(g.load(str(path)), samples)
    return g, outcome


@pytest.mark.parametrize(
    ("fm", "ctl", "result", "measured"),
    [
        # a free core per thread: the bound as written
        ([1.9, 1.8, 1.85], [2.0, 1.95, 2.0], "PASS", 1.85),
        # a real regression on an idle machine still misses
        ([1.0, 1.05, 0.95], [2.0, 1.95, 1.98], "MISS", 1.0),
        # a loaded machine gives the control 1.5x: the shards' 1.2x is 1.6x of a free core's
        ([1.2, 1.2, 1.2], [1.5, 1.5, 1.5], "PASS", 1.6),
        # a control above expect earns nothing
        ([1.3, 1.3, 1.3], [2.4, 2.4, 2.4], "MISS", 1.3),
        # no free core: 0.91 is not a MISS (issue 16's busy-machine failure)
        ([0.91, 0.9, 0.95], [1.0, 1.02, 0.98], "INCONCLUSIVE", None),
        # a control that moved with the load: inconclusive too
        ([1.5, 1.0, 2.0, 1.2], [2.0, 1.3, 2.0, 1.4], "INCONCLUSIVE", None),
    ],
)
def test_scaling_gate_is_normalised_by_its_control(tmp_path: Path, fm, ctl, result, measured) -> None:
    g, outcome = _evaluate(tmp_path, SCALES, _samples(fm=fm, ctl=ctl))
    assert outcome.result == result, outcome
    if measured is not None:
        assert outcome.ratio == pytest.approx(measured)
    line = g.format_table([outcome])[-1]
    assert result in line and "control" in line and "raw" in line, line


def test_contention_gate_is_not_normalised_only_made_inconclusive(tmp_path: Path) -> None:
    _, idle = _evaluate(tmp_path, CONTENDS, _samples(shared=[0.6, 0.5, 0.55], ctl=[2.0, 1.9, 1.95]))
    assert (idle.result, idle.ratio) == ("PASS", pytest.approx(0.55))
    _, contended_less = _evaluate(tmp_path, CONTENDS, _samples(shared=[1.5, 1.4, 1.45], ctl=[1.8, 1.8, 1.8]))
    assert (contended_less.result, contended_less.ratio) == ("MISS", pytest.approx(1.45))
    _, busy = _evaluate(tmp_path, CONTENDS, _samples(shared=[1.5, 1.48, 1.45], ctl=[1.5, 1.5, 1.49]))
    assert busy.result == "INCONCLUSIVE" and "no free core" in busy.inconclusive


def test_gate_without_control_data_is_not_run(tmp_path: Path) -> None:
    _, outcome = _evaluate(tmp_path, SCALES, _samples(fm=[1.9, 1.9]))
    assert outcome.result == "NOT RUN" and outcome.missing == ["ctl.t1", "ctl.t2"], outcome


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('control = "ctl.t1"\nexpect = 2\ninconclusive_below = 1.3\n', "bad control"),
        ('control = "ctl.t1 / ctl.t2"\ninconclusive_below = 1.3\n', "positive number expect"),
        ('control = "ctl.t1 / ctl.t2"\nexpect = 2\ninconclusive_below = 3\n', "must not exceed expect"),
        ("expect = 2\n", "without a control"),
    ],
)
def test_malformed_control_is_a_gate_file_error(tmp_path: Path, extra: str, message: str) -> None:
    g = bench_gates()
    path = tmp_path / "gates.toml"
    path.write_text(f'[[gate]]\ncheck = "fm.t1 / fm.t2 >= 1.4"\n{extra}')
    with pytest.raises(g.GateFileError, match=message):
        g.load(str(path))


def test_shipped_gates_normalise_every_thread_scaling_gate() -> None:
    g = bench_gates()
    gates = g.load(str(ROOT / "bench" / "gates.toml"))
    scaling = [gate for gate in gates if gate.numerator.endswith(".t1") and gate.denominator.endswith(".t2")]
    assert len(scaling) == 3, scaling  # Enum.state on 2 threads, nogil counter_add, the shared-word contrast
    assert all(gate.control is not None for gate in scaling), scaling


# -- the docs' gates table is gates.toml ------------------------------------------------


def test_docs_gates_table_is_every_gate_of_gates_toml() -> None:
    docs_path = ROOT / "docs" / "benchmarks.md"
    if not docs_path.exists():
        pytest.skip("docs/ is not in the sdist")
    from fastmetrics._cli.bench.docs import block_content

    g = bench_gates()
    gates = g.load(str(ROOT / "bench" / "gates.toml"))
    expected = g.markdown_table(gates)
    shown = block_content(docs_path.read_text(encoding="utf-8"), g.DOCS_BLOCK, g.DOCS_PREFIX, str(docs_path))
    assert shown == expected, ("docs/benchmarks.md's gates table differs from bench/gates.toml; regenerate it: "
                               "python bench/_gates.py --update-docs docs/benchmarks.md")
    assert len(shown.splitlines()) == 2 + len(gates)
    for gate in gates:
        assert f"| `{gate.numerator} / {gate.denominator}` | {gate.op} {gate.bound:g} |" in shown, gate
        assert gate.why and gate.why in shown, gate


def test_gates_update_docs_writes_the_table_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    g = bench_gates()
    gates = tmp_path / "gates.toml"
    gates.write_text(SCALES + '[[gate]]\ncheck = "a.x / b.x <= 1.5"\nwhy = "a | b"\n')
    doc = tmp_path / "doc.md"
    doc.write_text("before\n<!-- gates:table -->\nstale\n<!-- /gates:table -->\nafter\n")
    assert g.main(["--gates", str(gates), "--update-docs", str(doc)]) == 0
    first = doc.read_text()
    assert first == ("before\n<!-- gates:table -->\n| ratio | bound | control | why |\n|---|---|---|---|\n"
                     "| `fm.t1 / fm.t2` | >= 1.4 | `ctl.t1 / ctl.t2`: expect 2, INCONCLUSIVE below 1.3 | scales |\n"
                     "| `a.x / b.x` | <= 1.5 |  | a \\| b |\n<!-- /gates:table -->\nafter\n")
    assert g.main(["--gates", str(gates), "--update-docs", str(doc)]) == 0
    assert doc.read_text() == first
    assert capsys.readouterr().out.splitlines() == [f"updated {doc}", f"unchanged {doc}"]
    doc.write_text("<!-- gates:table -->\n")
    with pytest.raises(SystemExit) as info:
        g.main(["--gates", str(gates), "--update-docs", str(doc)])
    assert info.value.code == 2
    assert "has no end marker <!-- /gates:table -->" in capsys.readouterr().err
