"""The bench suite's ratio gates fail the run, with a readable table, when a bound
does not hold (``bench/conftest.py``, ``bench/_gates.py``).

Runs pytest in a subprocess on one tiny benchmark (the floor's ``inc()``, one
repetition) with a temporary gates file.  The gates compare that benchmark
with itself, so the measured ratio is exactly 1.0 whatever the machine's
speed: ``<= 0.5`` can never pass and ``<= 1`` always does.  No timing is
asserted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import fastmetrics

pytest.importorskip("pytest_benchmark")

ROOT = Path(__file__).resolve().parents[1]
NODE = "bench/test_bench_counter.py::test_counter_inc[rep0-floor]"
KEY = "floor.counter.inc"


def _run_bench(tmp_path: Path, check: str) -> subprocess.CompletedProcess:
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
