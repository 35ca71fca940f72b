"""``push_to_gateway`` with fastmetrics metrics lands in a real Pushgateway and
is scraped back from the gateway's /metrics with the pushed values."""

from __future__ import annotations

from typing import Dict, Tuple

import pytest
from prometheus_client import CollectorRegistry, push_to_gateway, pushadd_to_gateway
from prometheus_client.parser import text_string_to_metric_families

import fastmetrics
from _registry import EXPECTED, fixed_registry
from _servers import Pushgateway, http_get

pytestmark = pytest.mark.e2e

Key = Tuple[str, Tuple[Tuple[str, str], ...]]


def scrape_group(gateway: Pushgateway, job: str, instance: str) -> Dict[Key, float]:
    """Samples of one push group as the gateway exposes them, grouping labels removed."""
    status, _, body = http_get(gateway.url + "/metrics")
    assert status == 200
    out: Dict[Key, float] = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for s in family.samples:
            if s.labels.get("job") == job and s.labels.get("instance") == instance:
                labels = {k: v for k, v in s.labels.items() if k not in ("job", "instance")}
                out[(s.name, tuple(sorted(labels.items())))] = s.value
    return out


def test_pushed_fastmetrics_are_scraped_from_the_gateway(pushgateway: Pushgateway) -> None:
    registry = fixed_registry()
    push_to_gateway(pushgateway.address, job="fastmetrics_e2e", registry=registry,
                    grouping_key={"instance": "box1"}, timeout=10)

    seen = scrape_group(pushgateway, "fastmetrics_e2e", "box1")
    assert {k: v for k, v in seen.items() if k in EXPECTED} == EXPECTED
    # The gateway records a successful push for the group.
    assert seen[("push_time_seconds", ())] > 0
    assert seen[("push_failure_time_seconds", ())] == 0


def test_a_second_push_replaces_the_values(pushgateway: Pushgateway) -> None:
    registry = CollectorRegistry()
    sent = fastmetrics.Counter("objects", "Objects sent.", ["source"], registry=registry)
    sent.labels("feed-a").inc(10)
    push_to_gateway(pushgateway.address, job="fastmetrics_e2e", registry=registry,
                    grouping_key={"instance": "box2"}, timeout=10)
    assert scrape_group(pushgateway, "fastmetrics_e2e", "box2")[("objects_total", (("source", "feed-a"),))] == 10

    sent.labels("feed-a").inc(5)
    sent.labels("feed-b").inc(2)
    pushadd_to_gateway(pushgateway.address, job="fastmetrics_e2e", registry=registry,
                       grouping_key={"instance": "box2"}, timeout=10)
    seen = scrape_group(pushgateway, "fastmetrics_e2e", "box2")
    assert seen[("objects_total", (("source", "feed-a"),))] == 15
    assert seen[("objects_total", (("source", "feed-b"),))] == 2
