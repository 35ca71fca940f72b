"""Counter hot paths, one thread: ``inc()``, ``inc(n)``, child ``inc()``, ``labels('x').inc()``.

Candidates: the floor (no-op methods with the same signatures), fastmetrics'
Cython core and pure-Python twin, and prometheus_client.  Keys:
``<candidate>.counter.inc``, ``.counter.inc_n``, ``.child.inc``, ``.labels.inc``.
"""

from __future__ import annotations

from typing import Any

import pytest

from fastmetrics._cli.bench.ops import metric_ops
from fastmetrics._cli.bench.subjects import METRIC_CANDIDATES

OPS = {op.key: op for op in metric_ops()}
CANDIDATES = pytest.mark.parametrize("candidate", METRIC_CANDIDATES)


@CANDIDATES
def test_counter_inc(run_op: Any, candidate: str) -> None:
    run_op(OPS["counter.inc"], candidate)


@CANDIDATES
def test_counter_inc_amount(run_op: Any, candidate: str) -> None:
    run_op(OPS["counter.inc_n"], candidate)


@CANDIDATES
def test_child_inc(run_op: Any, candidate: str) -> None:
    run_op(OPS["child.inc"], candidate)


@CANDIDATES
def test_labels_then_inc(run_op: Any, candidate: str) -> None:
    run_op(OPS["labels.inc"], candidate)
