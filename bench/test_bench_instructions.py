"""Instruction-count gates (``bench/instructions.toml``) on every interpreter
listed in ``FASTMETRICS_BENCH_IR_PYTHONS`` (``os.pathsep``-separated paths of
interpreters with fastmetrics installed; default: this one).  callgrind
counts are deterministic, so the gates hold exactly, whatever the load; the
measurement is :mod:`fastmetrics._cli.bench.instructions`.  Needs valgrind
(skipped without it, failed under ``CI=true``), and pycti's handler file for
the pycti gate (as the timing benchmarks get it).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Dict, List

import _gates  # type: ignore[import-not-found]
import pytest
from _harness import in_ci, pycti_cache_dir, pycti_module  # type: ignore[import-not-found]

from fastmetrics._cli.bench import instructions

GATES = Path(__file__).resolve().parent / "instructions.toml"
pytestmark = pytest.mark.bench_phase(40)


def _pythons() -> List[str]:
    listed = os.environ.get("FASTMETRICS_BENCH_IR_PYTHONS", "")
    return [p for p in listed.split(os.pathsep) if p] or [sys.executable]


def _samples(results: Dict[str, float]) -> Dict[str, Dict[int, List[float]]]:
    return {key: {0: [value]} for key, value in results.items()}


@pytest.mark.parametrize("python", _pythons())
def test_instruction_gates(python: str, pytestconfig: pytest.Config,
                           tmp_path_factory: pytest.TempPathFactory) -> None:
    if shutil.which("valgrind") is None:
        if in_ci():
            pytest.fail("CI=true: valgrind is needed for the instruction-count gates")
        pytest.skip("valgrind not installed")
    module, where = pycti_module(pycti_cache_dir(pytestconfig, tmp_path_factory))
    pycti_file = where if module is not None else None
    if pycti_file is None and in_ci():
        pytest.fail(f"CI=true: {where}")
    version = instructions.version_of(python)
    results = instructions.measure(python, pycti_file=pycti_file)
    gates = _gates.load(str(GATES))
    outcomes = _gates.evaluate(gates, _samples(results))
    report = "\n".join([f"CPython {version} ({python}):", *instructions.table({version: results}),
                        *_gates.format_table(outcomes)])
    print(report)
    missed = [o for o in outcomes if o.result == _gates.MISS]
    not_run = [o for o in outcomes if o.result == _gates.NOT_RUN and not o.gate.numerator.startswith("pycti.")]
    assert not missed and not not_run, report
