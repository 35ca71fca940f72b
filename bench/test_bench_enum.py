"""``Enum.state(s)``, one thread (key ``<candidate>.enum.state``).

The state set is idle/running/stopped and the call is ``state('running')``:
prometheus_client does ``list.index`` under a lock, fastmetrics a dict lookup
and one word store.
"""

from __future__ import annotations

from typing import Any

import pytest

from fastmetrics._cli.bench.ops import metric_ops
from fastmetrics._cli.bench.subjects import METRIC_CANDIDATES

OPS = {op.key: op for op in metric_ops()}


@pytest.mark.parametrize("candidate", METRIC_CANDIDATES)
def test_enum_state(run_op: Any, candidate: str) -> None:
    run_op(OPS["enum.state"], candidate)
