"""Reading the demo's exposition back and comparing it with the workers' counts."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any, Dict, List, Mapping, Tuple

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from .connector import ExposedNames

SCRAPE_TIMEOUT = 10.0


def metrics_url(host: str, port: int) -> str:
    """A URL that reaches the metrics server bound to ``host``:``port``."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "[::1]"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}/metrics"


def parse_exposition(text: str, names: ExposedNames) -> Dict[str, Any]:
    """The handler's samples in a text exposition: ``{sample name: value}`` for
    the counters, plus ``{names.state: current state or None}``."""
    found: Dict[str, Any] = {names.state: None}
    wanted = set(names.counters.values())
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted and not sample.labels:
                found[sample.name] = sample.value
            elif sample.name == names.state and sample.value == 1:
                found[names.state] = sample.labels.get(names.state)
    return found


def read_exposition(url: str, names: ExposedNames) -> Tuple[Dict[str, Any], str]:
    """Scrape ``url``; if that fails, render the default registry in-process (the
    same bytes the server would send).  Returns the parsed samples and a note on
    where they came from."""
    try:
        # Straight to the server: never through an http_proxy from the environment.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(url, timeout=SCRAPE_TIMEOUT) as response:
            text = response.read().decode("utf-8")
        source = url
    except (OSError, urllib.error.URLError) as exc:
        text = generate_latest(REGISTRY).decode("utf-8")
        source = f"the in-process registry (scraping {url} failed: {exc})"
    return parse_exposition(text, names), source


def mismatches(expected: Mapping[str, float], state: str, seen: Mapping[str, Any], names: ExposedNames) -> List[str]:
    """One line per sample whose exposed value differs from ``expected`` (or a
    state other than ``state``); empty when everything matches."""
    out = []
    for name, want in expected.items():
        got = seen.get(name)
        if got != want:
            out.append(f"{name}: counted {want:.0f}, exposed {got!r}")
    if seen.get(names.state) != state:
        out.append(f"{names.state}: expected {state!r}, exposed {seen.get(names.state)!r}")
    return out
