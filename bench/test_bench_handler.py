"""``OpenCTIMetricHandler``: ``inc(name)``, ``inc(name, n)``, ``state(s)``, activated or not.

Candidates: the floor (``def inc(self, name, n=1)`` / ``def state(self, state,
name="state")`` doing nothing), fastmetrics' handler over each core, and pycti's
real handler (7.261026.0, loaded from the published wheel by ``conftest``).
Keys: ``<candidate>.handler.inc`` / ``.inc_n`` / ``.state``, and
``<candidate>.handler_off.*`` for handlers built with ``activated=False``.

All activated handlers register in the default REGISTRY as in production;
each candidate uses its own namespace so their names do not collide (see
``fastmetrics._cli.bench.subjects.Subjects.handler``).
"""

from __future__ import annotations

from typing import Any

import pytest

from fastmetrics._cli.bench.ops import handler_ops
from fastmetrics._cli.bench.subjects import HANDLER_CANDIDATES

ON = {op.key: op for op in handler_ops(activated=True)}
OFF = {op.key: op for op in handler_ops(activated=False)}
CANDIDATES = pytest.mark.parametrize("candidate", HANDLER_CANDIDATES)


@CANDIDATES
def test_handler_inc_name(run_op: Any, candidate: str) -> None:
    run_op(ON["handler.inc"], candidate)


@CANDIDATES
def test_handler_inc_name_n(run_op: Any, candidate: str) -> None:
    run_op(ON["handler.inc_n"], candidate)


@CANDIDATES
def test_handler_state(run_op: Any, candidate: str) -> None:
    run_op(ON["handler.state"], candidate)


@CANDIDATES
def test_handler_off_inc_name(run_op: Any, candidate: str) -> None:
    run_op(OFF["handler_off.inc"], candidate)


@CANDIDATES
def test_handler_off_inc_name_n(run_op: Any, candidate: str) -> None:
    run_op(OFF["handler_off.inc_n"], candidate)


@CANDIDATES
def test_handler_off_state(run_op: Any, candidate: str) -> None:
    run_op(OFF["handler_off.state"], candidate)
