"""pycti's real ``OpenCTIMetricHandler`` against ours, observed from outside.

Each side runs the same scenario (``SCENARIO``) in its own fresh interpreter, so
each has its own default ``REGISTRY`` and metrics server: construct, read the
attributes, call ``inc`` / ``state`` / ``_metric_exists`` with good and bad
arguments, scrape its server over HTTP (text format and OpenMetrics), then try
a second handler on another port and on the same port.  Everything is compared:
results and exceptions (type and message), the logger calls made by each step,
attributes, and the scraped bytes, where only what varies per process is
normalised (``_created`` values, checked to fall in the construction window;
the values of the process / platform / gc collectors' samples; port numbers in
log metas).

The real pycti (``_support.PYCTI_VERSION``) lives in a separate venv whose python is given by
``FASTMETRICS_PYCTI_PYTHON`` (``bash .ci/pycti-venv.sh DIR`` makes it, with this
checkout's fastmetrics installed).  Every side runs in that venv, with this
process's environment, and imports pycti, so the only difference is the
handler class.  That venv must import the same fastmetrics sources as this
process (checked: rerun the script after editing, or run both with
``PYTHONPATH=src`` and the extension built in place).  Without the variable
the tests are skipped, except in CI (``CI=true``), where they fail.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
from _support import PYCTI_VERSION, Impl, free_port, skip_or_fail

import fastmetrics

SCENARIO = r'''
import json, sys, time, urllib.request

import prometheus_client
import pycti  # every side imports the same modules: only the handler class differs
import fastmetrics.opencti
from prometheus_client.metrics import MetricWrapperBase

cfg = json.loads(sys.argv[1])
if cfg["side"] == "pycti":
    from pycti.connector.opencti_metric_handler import OpenCTIMetricHandler as Handler
    extra = {}
else:   # the implementation the environment selected, checked to be the one asked for
    assert fastmetrics.implementation == cfg["side"], fastmetrics.implementation
    Handler = fastmetrics.opencti.OpenCTIMetricHandler
    extra = {"addr": "127.0.0.1"}


def plain(value):
    """JSON form keeping types and dict order."""
    if isinstance(value, type):
        return ["class", value.__module__ + "." + value.__qualname__]
    if isinstance(value, dict):
        return ["dict", [[plain(k), plain(v)] for k, v in value.items()]]
    if isinstance(value, (list, tuple)):
        return [type(value).__name__, [plain(v) for v in value]]
    if value is None or isinstance(value, (bool, int, float, str)):
        return [type(value).__name__, value]
    return ["repr", repr(value)]


class Logger:
    def __init__(self):
        self.calls = []

    def _record(self, method, args, kwargs):
        self.calls.append([method, plain(args), plain(kwargs)])

    def debug(self, *args, **kwargs):
        self._record("debug", args, kwargs)

    def info(self, *args, **kwargs):
        self._record("info", args, kwargs)

    def warning(self, *args, **kwargs):
        self._record("warning", args, kwargs)

    def error(self, *args, **kwargs):
        self._record("error", args, kwargs)


logger = Logger()
steps = []


def attempt(label, fn):
    mark = len(logger.calls)
    try:
        outcome = ["returned", plain(fn())]
    except Exception as exc:
        outcome = ["raised", type(exc).__module__ + "." + type(exc).__qualname__, str(exc), getattr(exc, "errno", None)]
    steps.append([label, outcome, logger.calls[mark:]])
    return outcome


def attributes():
    snapshot = {"activated": plain(handler.activated), "logger": handler.connector_logger is logger,
                "has _metrics": hasattr(handler, "_metrics")}
    if hasattr(handler, "_metrics"):
        snapshot["_metrics"] = [[key, type(metric).__name__] for key, metric in handler._metrics.items()]
        snapshot["_metrics type"] = type(handler._metrics).__name__
    return snapshot


def scrape(port, accept):
    request = urllib.request.Request("http://127.0.0.1:%d/metrics" % port, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return [response.status, response.headers["Content-Type"], response.read().decode()]


port1, port2 = cfg["ports"]
t0 = time.time()
made = []
attempt("construct", lambda: made.append(Handler(logger, cfg["activated"], cfg["namespace"], cfg["subsystem"], port1,
                                                 **extra)))
t1 = time.time()
handler = made[0]
attempt("attributes", attributes)

Counter, Enum, Gauge = prometheus_client.Counter, prometheus_client.Enum, prometheus_client.Gauge
calls = [
    ("inc bundle_send", lambda: handler.inc("bundle_send")),
    ("inc bundle_send 3", lambda: handler.inc("bundle_send", 3)),
    ("inc record_send 2.5", lambda: handler.inc("record_send", 2.5)),
    ("inc record_send 40 kw", lambda: handler.inc(name="record_send", n=40)),
    ("inc run_count True", lambda: handler.inc("run_count", True)),
    ("inc ping_api_count 0", lambda: handler.inc("ping_api_count", 0)),
    ("inc ping_api_error 1e300", lambda: handler.inc("ping_api_error", 1e300)),
    ("inc error_count", lambda: handler.inc("error_count")),
    ("inc error_count -1", lambda: handler.inc("error_count", -1)),
    ("inc error_count -0.5", lambda: handler.inc("error_count", -0.5)),
    ("inc error_count '2'", lambda: handler.inc("error_count", "2")),
    ("inc error_count None", lambda: handler.inc("error_count", None)),
    ("inc error_count 10**400", lambda: handler.inc("error_count", 10**400)),
    ("inc client_error_count 2", lambda: handler.inc("client_error_count", 2)),
    ("inc unknown", lambda: handler.inc("nope")),
    ("inc unknown -1", lambda: handler.inc("nope", -1)),
    ("inc empty name", lambda: handler.inc("")),
    ("inc enum name", lambda: handler.inc("state")),
    ("inc enum name -1", lambda: handler.inc("state", -1)),
    ("inc unhashable", lambda: handler.inc(["bundle_send"])),
    ("state running", lambda: handler.state("running")),
    ("state bogus", lambda: handler.state("bogus")),
    ("state None", lambda: handler.state(None)),
    ("state unhashable", lambda: handler.state(["idle"])),
    ("state unknown name", lambda: handler.state("running", "nope")),
    ("state counter name", lambda: handler.state("idle", "bundle_send")),
    ("state unhashable name", lambda: handler.state("idle", ["state"])),
    ("state stopped kw", lambda: handler.state(state="stopped", name="state")),
]
types = [Counter, Enum, Gauge, MetricWrapperBase, object, (Gauge, Counter)]
for name in ("bundle_send", "ping_api_error", "state", "nope"):
    for expected in types:
        calls.append(("_metric_exists %s %r" % (name, expected),
                      lambda name=name, expected=expected: handler._metric_exists(name, expected)))
calls.append(("_metric_exists not a type", lambda: handler._metric_exists("bundle_send", "Counter")))
flip = not cfg["activated"]
calls += [
    ("flip activated", lambda: setattr(handler, "activated", flip)),
    ("attributes flipped", attributes),
    ("inc flipped", lambda: handler.inc("run_count", 5)),
    ("state flipped", lambda: handler.state("idle")),
    ("restore activated", lambda: setattr(handler, "activated", cfg["activated"])),
    ("state running again", lambda: handler.state("running")),
    ("attributes after", attributes),
]
for label, fn in calls:
    attempt(label, fn)

scrapes = []
if cfg["activated"]:
    scrapes.append(scrape(port1, None))
    scrapes.append(scrape(port1, "application/openmetrics-text"))
    attempt("second handler, other port",
            lambda: Handler(logger, cfg["activated"], cfg["namespace"], cfg["subsystem"], port2, **extra) and None)
    scrapes.append(scrape(port2, None))  # its server was started before registering failed
    attempt("third handler, same port",
            lambda: Handler(logger, cfg["activated"], cfg["namespace"], cfg["subsystem"], port1, **extra) and None)
    attempt("inc after failed handlers", lambda: handler.inc("bundle_send", 2))
    scrapes.append(scrape(port1, None))
    scrapes.append(scrape(port1, "application/openmetrics-text"))
else:
    attempt("second handler", lambda: Handler(logger, cfg["activated"], "", "", port1, **extra) and None)

print(json.dumps({
    "steps": steps,
    "scrapes": scrapes,
    "window": [t0, t1],
    "fastmetrics": fastmetrics.__file__,
    "handler": Handler.__module__,
}))
'''

# The values of these collectors' samples differ per process (fds, memory, gc, start time).
VOLATILE_PREFIXES = ("process_", "python_gc_")

CASES: List[Tuple[str, str, Any]] = [
    ("", "", True),
    ("opencti", "connector", True),
    ("ns", "", True),
    ("", "sub", True),
    ("opencti", "connector", "FALSE"),  # truth-tested: a non-empty string activates
    ("", "", False),
    ("opencti", "connector", None),
    ("ns", "", 0),
]


def _case_id(case: Tuple[str, str, Any]) -> str:
    namespace, subsystem, activated = case
    kind = type(activated).__name__
    return f"ns_{namespace or 'empty'}-sub_{subsystem or 'empty'}-activated_{kind}_{activated}"


def normalise_exposition(text: str, window: Tuple[float, float]) -> List[str]:
    """The exposition's lines with per-process values replaced: ``_created`` values
    become ``<created>`` when within ``window`` (else stay, flagged), and samples of
    the process / gc collectors get ``<volatile>``.  Everything else is kept."""
    lines = []
    for line in text.split("\n"):
        if line.startswith("#") or not line:
            lines.append(line)
            continue
        series, _, value = line.rpartition(" ")
        name = re.match(r"[^{ ]*", series).group(0)  # type: ignore[union-attr]
        if name.startswith(VOLATILE_PREFIXES):
            value = "<volatile>"
        elif name.endswith("_created"):
            value = "<created>" if window[0] <= float(value) <= window[1] else f"{value} <outside {window}>"
        lines.append(f"{series} {value}")
    return lines


def normalise_message(message: str) -> str:
    """prometheus_client's duplicate-registration message lists a set: sort it."""
    match = re.fullmatch(r"(Duplicated timeseries in CollectorRegistry: )\{(.*)\}", message)
    if match is None:
        return message
    return match.group(1) + "{" + ", ".join(sorted(match.group(2).split(", "))) + "}"


def normalise(result: Dict[str, Any], ports: Tuple[int, int]) -> Dict[str, Any]:
    names = {ports[0]: "<port1>", ports[1]: "<port2>"}

    def walk(value: Any) -> Any:
        if isinstance(value, list):
            if len(value) == 2 and value[0] == "int" and value[1] in names:
                return ["int", names[value[1]]]
            return [walk(v) for v in value]
        return value

    steps = []
    for label, outcome, logs in result["steps"]:
        if outcome[0] == "raised":
            outcome = [*outcome[:2], normalise_message(outcome[2]), *outcome[3:]]
        steps.append([label, outcome, walk(logs)])
    window = tuple(result["window"])
    scrapes = [[status, ctype, normalise_exposition(body, window)] for status, ctype, body in result["scrapes"]]  # type: ignore[arg-type]
    return {"steps": steps, "scrapes": scrapes}


# -- normaliser: it must not hide what the comparison is for ------------------------------

_SAMPLE = """\
# HELP opencti_connector_runs_total Number of runs
# TYPE opencti_connector_runs_total counter
opencti_connector_runs_total 1.0
# HELP opencti_connector_runs_created Number of runs
# TYPE opencti_connector_runs_created gauge
opencti_connector_runs_created 1.5e+09
# HELP process_open_fds Number of open file descriptors.
# TYPE process_open_fds gauge
process_open_fds 7.0
"""


def test_normalise_masks_only_per_process_values() -> None:
    window = (1.4e9, 1.6e9)
    base = normalise_exposition(_SAMPLE, window)
    assert "opencti_connector_runs_created <created>" in base
    assert "process_open_fds <volatile>" in base
    assert normalise_exposition(_SAMPLE.replace("7.0", "9.0"), window) == base
    for changed in (
        _SAMPLE.replace("Number of runs", "Number of run", 1),  # one help text
        _SAMPLE.replace("runs_total 1.0", "runs_total 2.0"),  # a value
        _SAMPLE.replace("opencti_connector_runs_total 1.0", "opencti_connector_run_total 1.0"),  # a name
        _SAMPLE.replace("open file descriptors", "open fds"),  # a collector's help
        "\n".join(_SAMPLE.split("\n")[3:6] + _SAMPLE.split("\n")[0:3] + _SAMPLE.split("\n")[6:]),  # order
    ):
        assert normalise_exposition(changed, window) != base
    assert normalise_exposition(_SAMPLE, (1.6e9, 1.7e9)) != base  # _created outside the window


def test_normalise_keeps_log_and_error_differences() -> None:
    ports = (40001, 40002)

    def result(message: str, meta_key: str, error: str) -> Dict[str, Any]:
        meta = ["dict", [[["str", meta_key], ["int", 40001]]]]
        logs = [["info", ["tuple", [["str", message], meta]], ["dict", []]]]
        return {"steps": [["construct", ["raised", "builtins.ValueError", error, None], logs]],
                "scrapes": [], "window": [0, 1]}

    base = normalise(result("Exposing metrics on port", "port", "x"), ports)
    assert base["steps"][0][2] == [
        ["info", ["tuple", [["str", "Exposing metrics on port"], ["dict", [[["str", "port"], ["int", "<port1>"]]]]]],
         ["dict", []]]
    ]
    assert normalise(result("Exposing metrics on port", "port", "x"), (40001, 9)) == base
    assert normalise(result("Exposing metrics on port.", "port", "x"), ports) != base
    assert normalise(result("Exposing metrics on port", "Port", "x"), ports) != base
    assert normalise(result("Exposing metrics on port", "port", "y"), ports) != base
    assert normalise_message("Duplicated timeseries in CollectorRegistry: {'b', 'a'}") == normalise_message(
        "Duplicated timeseries in CollectorRegistry: {'a', 'b'}"
    )


# -- against the real pycti -----------------------------------------------------------------


def _run(python: str, code: str, *args: str, env: Optional[Dict[str, str]] = None) -> Any:
    proc = subprocess.run([python, "-c", code, *args], capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, f"{python} failed:\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


_SOURCES = """
import hashlib, json, pathlib, pycti, fastmetrics
package = pathlib.Path(fastmetrics.__file__).parent
sources = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
           for p in sorted(package.iterdir()) if p.suffix in (".py", ".pyx", ".pxd", ".h")}
print(json.dumps([pycti.__version__, str(package), sources]))
"""


@pytest.fixture(scope="module")
def pycti_python() -> str:
    """The python of the venv holding the real pycti (``FASTMETRICS_PYCTI_PYTHON``)."""
    python = os.environ.get("FASTMETRICS_PYCTI_PYTHON", "").strip()
    if not python:
        skip_or_fail("FASTMETRICS_PYCTI_PYTHON is not set: create the venv with `bash .ci/pycti-venv.sh DIR` "
                     "and set FASTMETRICS_PYCTI_PYTHON=DIR/bin/python to compare against the real pycti")
    version, package, sources = _run(python, _SOURCES)
    assert version == PYCTI_VERSION, f"{python} has pycti {version}, expected {PYCTI_VERSION}"
    here = Path(fastmetrics.__file__).parent
    ours = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(here.iterdir()) if p.suffix in (".py", ".pyx", ".pxd", ".h")}
    assert sources == ours, (
        f"{python} imports another fastmetrics ({package}) than this process ({here}): rerun "
        "`bash .ci/pycti-venv.sh DIR`, or run with PYTHONPATH=src and the extension built in place"
    )
    return python


_pycti_results: Dict[Tuple[str, str, Any], Dict[str, Any]] = {}


def _scenario(python: str, case: Tuple[str, str, Any], impl: Optional[Impl] = None) -> Dict[str, Any]:
    """``SCENARIO`` on pycti's handler, or on ours running ``impl``."""
    ports = (free_port(), free_port())
    while ports[1] == ports[0]:
        ports = (ports[0], free_port())
    side = "pycti" if impl is None else impl.implementation
    cfg = {"side": side, "namespace": case[0], "subsystem": case[1], "activated": case[2], "ports": ports}
    raw = _run(python, SCENARIO, json.dumps(cfg), env=None if impl is None else impl.env())
    return dict(normalise(raw, ports), raw=raw)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_same_as_pycti(pycti_python: str, case: Tuple[str, str, Any], impl: Impl) -> None:
    if case not in _pycti_results:
        _pycti_results[case] = _scenario(pycti_python, case)
    theirs = _pycti_results[case]
    ours = _scenario(pycti_python, case, impl)
    assert theirs["raw"]["handler"] == "pycti.connector.opencti_metric_handler"
    assert ours["raw"]["handler"] == "fastmetrics.opencti"

    # The scenario did run: pycti's side shows what the case is about.
    prefix = "_".join(p for p in case[:2] if p)
    prefix = prefix + "_" if prefix else ""
    labels = [step[0] for step in theirs["steps"]]
    assert labels[:3] == ["construct", "attributes", "inc bundle_send"]
    if case[2]:
        assert len(theirs["scrapes"]) == 5
        assert f"# HELP {prefix}bundles_sent_total Number of bundles sent" in theirs["scrapes"][0][2]
        assert theirs["scrapes"][1][2][-2:] == ["# EOF", ""]
        duplicate = "prometheus_client.registry.DuplicateTimeseries"  # a ValueError
        assert any(step[1][1] == duplicate for step in theirs["steps"] if step[0].startswith("second"))
        assert any(step[1][1] == "builtins.OSError" for step in theirs["steps"] if step[0].startswith("third"))
    else:
        assert theirs["scrapes"] == []
        assert theirs["steps"][1][1][1][1][-1] == [["str", "has _metrics"], ["bool", False]]

    for (label, their_outcome, their_logs), (our_label, our_outcome, our_logs) in zip(theirs["steps"], ours["steps"]):
        assert our_label == label
        assert our_outcome == their_outcome, label
        assert our_logs == their_logs, label
    assert len(ours["steps"]) == len(theirs["steps"])
    assert len(ours["scrapes"]) == len(theirs["scrapes"])
    for index, (their_scrape, our_scrape) in enumerate(zip(theirs["scrapes"], ours["scrapes"])):
        assert our_scrape[:2] == their_scrape[:2], f"scrape {index}: status / content type"
        assert our_scrape[2] == their_scrape[2], f"scrape {index}: exposition"


# -- install() / uninstall() against the real pycti ----------------------------------------

_INSTALL = r'''
import json
import pycti
import pycti.connector.opencti_metric_handler as defining
import pycti.connector.opencti_connector_helper as helper
import fastmetrics
import fastmetrics.opencti as fo

original = defining.OpenCTIMetricHandler
modules = [pycti, defining, helper]
out = {}


def bound():
    return ["ours" if m.OpenCTIMetricHandler is fastmetrics.OpenCTIMetricHandler
            else "original" if m.OpenCTIMetricHandler is original else "other" for m in modules]


out["before"] = bound()
fo.uninstall()                                   # nothing installed yet
out["uninstall first"] = bound()
fo.install()
out["installed"] = bound()
fo.install()                                     # idempotent
out["installed twice"] = bound()


class Logger:
    def info(self, *args): pass
    def error(self, *args): pass


made = helper.OpenCTIMetricHandler(Logger(), False, "", "", 9095)   # as the helper calls it
out["helper makes"] = type(made) is fastmetrics.OpenCTIMetricHandler
from pycti import OpenCTIMetricHandler as imported
out["from pycti import"] = imported is fastmetrics.OpenCTIMetricHandler
fo.uninstall()
out["uninstalled"] = bound()
fo.uninstall()
out["uninstalled twice"] = bound()
fo.install(); fo.uninstall()
out["again"] = bound()
print(json.dumps(out))
'''


def test_install_uninstall_with_real_pycti(pycti_python: str) -> None:
    out = _run(pycti_python, _INSTALL)
    original, ours = ["original"] * 3, ["ours"] * 3
    assert out == {
        "before": original,
        "uninstall first": original,
        "installed": ours,
        "installed twice": ours,
        "helper makes": True,
        "from pycti import": True,
        "uninstalled": original,
        "uninstalled twice": original,
        "again": original,
    }
