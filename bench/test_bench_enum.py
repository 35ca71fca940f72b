"""``Enum.state(s)``, one thread (key ``<candidate>.enum.state``).

The state set is idle/running/stopped and the call is ``state('running')``:
prometheus_client does ``list.index`` under a lock, fastmetrics a dict lookup
and one word store.
"""

from __future__ import annotations

from typing import Any

import pytest

from fastmetrics import _bench

OPS = {op.key: op for op in _bench.metric_ops()}


@pytest.mark.parametrize("candidate", _bench.METRIC_CANDIDATES)
def test_enum_state(run_op: Any, candidate: str) -> None:
    run_op(OPS["enum.state"], candidate)
