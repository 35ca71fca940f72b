"""The instruction-count tooling (``fastmetrics._cli.bench.instructions``,
``bench/instructions.toml``): the gates name only measured keys, the callgrind
dumps are read in order, and, where valgrind is installed, a real run of two
cases gives the per-operation counts the gates compare.  No count is asserted
beyond what holds on any machine (the gates themselves are the bench command's)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
from _support import bench_gates, under_asan

from fastmetrics._cli.bench import instructions

ROOT = Path(__file__).resolve().parents[1]


def test_gates_name_only_measured_keys():
    measured = {f"{c}.{op.key}" for op in instructions.IR_OPS for c in op.candidates}
    measured |= {f"{c}.child.bytes" for c in (instructions.FM_C, instructions.PROM)}
    gates = bench_gates().load(str(ROOT / "bench" / "instructions.toml"))
    assert gates
    for gate in gates:
        assert gate.numerator in measured and gate.denominator in measured, gate.check


def test_dump_totals_are_read_in_numeric_order(tmp_path):
    for n, total in ((1, 100), (2, 200), (10, 1000), (3, 300)):
        (tmp_path / f"cg.{n}").write_text(f"events: Ir\nsummary: {total}\ntotals: {total}\n")
    (tmp_path / "cg").write_text("totals: 5\n")   # the final dump at exit: not a segment
    assert instructions._dump_totals(str(tmp_path / "cg")) == [100, 200, 300, 1000]
    (tmp_path / "cg.11").write_text("nothing\n")
    with pytest.raises(instructions.ProbeError):
        instructions._dump_totals(str(tmp_path / "cg"))


def test_cases_cover_every_op_of_the_candidates():
    cases = instructions.cases_for((instructions.FLOOR, instructions.FM_C))
    assert ("floor", "counter.inc") in cases and ("fastmetrics_c", "labels_kw.inc") in cases
    assert all(c in ("floor", "fastmetrics_c") for c, _ in cases)
    assert ("floor", "child.create") not in cases   # creation has no floor


@pytest.mark.c_extension
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="valgrind not installed")
@pytest.mark.skipif(under_asan(),
                    reason="under AddressSanitizer (.ci/sanitizers.sh): "
                           "valgrind cannot run a process with ASan preloaded")
def test_a_real_run_counts_per_operation(monkeypatch):
    """Two cases in one callgrind run: counts per operation are positive, the
    floor's no-op call costs less than prometheus_client's inc(), and the run
    is deterministic (the same counts twice)."""
    cases = [("floor", "counter.inc"), ("prometheus_client", "counter.inc")]
    monkeypatch.setattr(instructions, "cases_for", lambda candidates: cases)
    first = instructions.measure(sys.executable, ("floor",))
    second = instructions.measure(sys.executable, ("floor",))
    assert first == second
    assert 0 < first["floor.counter.inc"] < first["prometheus_client.counter.inc"]
