"""Unit tests of ``fastmetrics.opencti``: the drop-in pycti ``OpenCTIMetricHandler``.

Every in-process case runs on both implementations (the ``impl`` fixture).  An
activated handler starts a real HTTP server (on 127.0.0.1) and registers in the
default ``REGISTRY``, so:

- in-process, one live handler per implementation is shared by the module (its
  own namespace; collectors unregistered and server shut down at the end);
- cases that need a fresh default registry (bare names, a second handler) run in
  a subprocess.

pycti is not needed here (its absence is simulated for ``install()``); the
comparison against the real pycti, and ``install()`` with it, are in
``test_opencti_differential.py``.
"""

from __future__ import annotations

import errno
import inspect
import json
import socket
import socketserver
import subprocess
import sys
import textwrap
import threading
import urllib.request
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

import prometheus_client
import pytest
from _support import free_port
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

import fastmetrics
from fastmetrics import _core, opencti

COUNTER_KEYS = [
    ("bundle_send", "bundles_sent", "Number of bundles sent"),
    ("record_send", "records_sent", "Number of records (objects per bundle) sent"),
    ("run_count", "runs", "Number of runs"),
    ("ping_api_count", "ping_api", "Number of pings to the API"),
    ("ping_api_error", "ping_api_errors", "Number of errors when pinging the API"),
    ("error_count", "errors", "Number of errors"),
    ("client_error_count", "client_errors", "Number of client errors"),
]
STATES = ["idle", "running", "stopped"]
NEGATIVE = "Counters can only be incremented by non-negative amounts."


class Recorder:
    """A connector logger that records every call as ``(method, args, kwargs)``."""

    def __init__(self) -> None:
        self.calls: List[Tuple[str, tuple, dict]] = []

    def debug(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append(("debug", args, kwargs))

    def info(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append(("info", args, kwargs))

    def warning(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append(("warning", args, kwargs))

    def error(self, *args: Any, **kwargs: Any) -> None:
        self.calls.append(("error", args, kwargs))


def family_names() -> List[str]:
    return [family.name for family in REGISTRY.collect()]


def scrape(port: int, openmetrics: bool = False, host: str = "127.0.0.1") -> Tuple[str, str]:
    headers = {"Accept": "application/openmetrics-text"} if openmetrics else {}
    request = urllib.request.Request(f"http://{host}:{port}/metrics", headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers["Content-Type"], response.read().decode()


def stop_server(port: int) -> None:
    """Shut down the prometheus_client server thread serving ``port`` (the handler,
    like pycti's, keeps no reference to it)."""
    for thread in threading.enumerate():
        server = getattr(getattr(thread, "_target", None), "__self__", None)
        if isinstance(server, socketserver.BaseServer) and server.server_address[1] == port:
            server.shutdown()
            server.server_close()


def run_python(code: str, *args: str, env: Optional[Dict[str, str]] = None) -> Any:
    """Run ``code`` in a fresh interpreter (fresh default REGISTRY) with ``env``
    (default: this process's environment), so it imports the same fastmetrics;
    its last stdout line is JSON."""
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- the class and its signature ------------------------------------------------------


def test_public_names() -> None:
    assert fastmetrics.OpenCTIMetricHandler is opencti.OpenCTIMetricHandler
    assert "OpenCTIMetricHandler" in fastmetrics.__all__
    assert opencti.handler_class_for(_core) is opencti.OpenCTIMetricHandler
    assert opencti.OpenCTIMetricHandler.__mro__[1] is _core.Dispatcher


def test_class_per_implementation(impl: Any) -> None:
    cls = impl.Handler
    assert cls is opencti.handler_class_for(impl.core)
    assert cls.__name__ == "OpenCTIMetricHandler"
    assert cls.__mro__[1] is impl.dispatch.Dispatcher is _core.dispatch_for(impl.core).Dispatcher
    assert issubclass(cls._counter_class, impl.core.CounterCore)
    assert issubclass(cls._enum_class, impl.core.EnumCore)


def test_signature(impl: Any) -> None:
    params = list(inspect.signature(impl.Handler).parameters.values())
    assert [(p.name, p.kind, p.default) for p in params] == [
        ("connector_logger", inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.empty),
        ("activated", inspect.Parameter.POSITIONAL_OR_KEYWORD, False),
        ("namespace", inspect.Parameter.POSITIONAL_OR_KEYWORD, ""),
        ("subsystem", inspect.Parameter.POSITIONAL_OR_KEYWORD, ""),
        ("port", inspect.Parameter.POSITIONAL_OR_KEYWORD, 9095),
        ("addr", inspect.Parameter.KEYWORD_ONLY, "0.0.0.0"),
    ]


# -- not activated ----------------------------------------------------------------------


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port held by a listening socket on 127.0.0.1: starting a server on it fails."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize("activated", [False, None, 0, "", []], ids=repr)
def test_not_activated_does_nothing(impl: Any, held_port: int, activated: Any) -> None:
    logger = Recorder()
    before = family_names()
    handler = impl.Handler(logger, activated, "ns", "sub", held_port, addr="127.0.0.1")
    assert handler.activated is activated
    assert handler.connector_logger is logger
    assert not hasattr(handler, "_metrics")
    assert handler.inc("bundle_send") is None
    assert handler.inc("bundle_send", -1) is None
    assert handler.inc("nope", "x") is None
    assert handler.state("running") is None
    assert handler.state("bogus", "nope") is None
    with pytest.raises(AttributeError, match="'OpenCTIMetricHandler' object has no attribute '_metrics'"):
        handler._metric_exists("bundle_send", prometheus_client.Counter)
    assert logger.calls == []
    assert family_names() == before


def test_activated_later_without_metrics_raises_as_pycti(impl: Any, held_port: int) -> None:
    # pycti: ``if self.activated: self._metric_exists(...)`` reads the missing _metrics.
    logger = Recorder()
    handler = impl.Handler(logger, False, port=held_port, addr="127.0.0.1")
    handler.activated = True
    with pytest.raises(AttributeError, match="has no attribute '_metrics'"):
        handler.inc("bundle_send")
    with pytest.raises(AttributeError, match="has no attribute '_metrics'"):
        handler.state("running")
    assert logger.calls == []


def test_busy_port_logs_then_raises_oserror(impl: Any, held_port: int) -> None:
    logger = Recorder()
    before = family_names()
    with pytest.raises(OSError) as excinfo:
        impl.Handler(logger, True, "ns", "sub", held_port, addr="127.0.0.1")
    assert excinfo.value.errno == errno.EADDRINUSE
    assert logger.calls == [("info", ("Exposing metrics on port", {"port": held_port}), {})]
    assert family_names() == before


def test_addr_is_the_interface_served(impl: Any) -> None:
    host, port = "127.0.0.2", free_port()  # loopback too, but not 127.0.0.1
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, port))
    except OSError as exc:
        pytest.skip(f"{host} is not usable here: {exc}")
    namespace = f"fmaddr_{impl.name}"
    handler = impl.Handler(Recorder(), True, namespace, "", port, addr=host)
    try:
        handler.inc("run_count", 4)
        assert f"{namespace}_runs_total 4.0\n" in scrape(port, host=host)[1]
        with pytest.raises(OSError):  # nothing listens on 127.0.0.1:port
            socket.create_connection(("127.0.0.1", port), timeout=10).close()
    finally:
        for metric in handler._metrics.values():
            REGISTRY.unregister(metric)
        stop_server(port)


# -- one live handler per implementation ------------------------------------------------


@dataclass
class Live:
    handler: Any
    logger: Recorder
    port: int
    prefix: str
    created_log: List[Tuple[str, tuple, dict]]

    def value(self, key: str) -> float:
        """A counter's ``_total`` as the default registry exposes it."""
        suffix = dict((k, n) for k, n, _ in COUNTER_KEYS)[key]
        return REGISTRY.get_sample_value(f"{self.prefix}_{suffix}_total")  # type: ignore[return-value]

    def current_state(self) -> str:
        name = f"{self.prefix}_state"
        (current,) = [s for s in STATES if REGISTRY.get_sample_value(name, {name: s}) == 1.0]
        return current


@pytest.fixture(scope="module")
def live_handlers() -> Iterator[Dict[str, Live]]:
    made: Dict[str, Live] = {}
    yield made
    for live in made.values():
        for metric in live.handler._metrics.values():
            REGISTRY.unregister(metric)
        stop_server(live.port)


@pytest.fixture
def live(impl: Any, live_handlers: Dict[str, Live]) -> Live:
    """The module's activated handler for ``impl``, counters at 0, state idle, log empty."""
    entry = live_handlers.get(impl.name)
    if entry is None:
        logger = Recorder()
        port = free_port()
        prefix = f"fmtest_{impl.name}_opencti"
        handler = impl.Handler(logger, True, f"fmtest_{impl.name}", "opencti", port, addr="127.0.0.1")
        entry = live_handlers[impl.name] = Live(handler, logger, port, prefix, list(logger.calls))
    for key, _, _ in COUNTER_KEYS:
        entry.handler._metrics[key].reset()
    entry.handler._metrics["state"].state("idle")
    entry.handler.activated = True
    entry.logger.calls.clear()
    return entry


def test_activation_logs_and_builds_metrics(impl: Any, live: Live) -> None:
    assert live.created_log == [("info", ("Exposing metrics on port", {"port": live.port}), {})]
    handler = live.handler
    assert handler.activated is True
    metrics = handler._metrics
    assert type(metrics) is dict
    assert list(metrics) == [key for key, _, _ in COUNTER_KEYS] + ["state"]
    for key, name, documentation in COUNTER_KEYS:
        assert isinstance(metrics[key], impl.core.CounterCore)
        assert type(metrics[key]).__name__ == "Counter"
        assert metrics[key]._name == f"{live.prefix}_{name}"
        assert metrics[key]._documentation == documentation
        assert metrics[key]._labelnames == ()
    state = metrics["state"]
    assert isinstance(state, impl.core.EnumCore) and type(state).__name__ == "Enum"
    assert (state._name, state._documentation, list(state._states)) == (
        f"{live.prefix}_state",
        "State of connector",
        STATES,
    )


def test_metrics_are_in_the_default_registry(live: Live) -> None:
    for key, _, _ in COUNTER_KEYS:
        assert live.value(key) == 0.0
    assert live.current_state() == "idle"
    names = family_names()
    ours = [n for n in names if n.startswith(live.prefix + "_")]
    assert ours == [f"{live.prefix}_{name}" for _, name, _ in COUNTER_KEYS] + [f"{live.prefix}_state"]


def test_inc(live: Live) -> None:
    handler = live.handler
    assert handler.inc("bundle_send") is None
    handler.inc("bundle_send", 3)
    handler.inc("record_send", 2.5)
    handler.inc("record_send", n=1)
    handler.inc(name="run_count", n=True)
    handler.inc("run_count", False)
    handler.inc("ping_api_count", 0)
    handler.inc("error_count", 1e300)
    assert [live.value(k) for k, _, _ in COUNTER_KEYS] == [4.0, 3.5, 1.0, 0.0, 0.0, 1e300, 0.0]
    assert live.logger.calls == []


@pytest.mark.parametrize("amount", [-1, -0.5, -1e-300, float("-inf")])
def test_inc_negative_raises(live: Live, amount: float) -> None:
    live.handler.inc("error_count", 2)
    with pytest.raises(ValueError) as excinfo:
        live.handler.inc("error_count", amount)
    assert str(excinfo.value) == NEGATIVE
    assert live.value("error_count") == 2.0
    assert live.logger.calls == []


@pytest.mark.parametrize("amount", ["1", None, 1j, [1]], ids=repr)
def test_inc_non_number_raises_as_prometheus_client(live: Live, amount: Any) -> None:
    upstream = prometheus_client.Counter("x", "x", registry=CollectorRegistry())
    with pytest.raises(Exception) as expected:
        upstream.inc(amount)
    with pytest.raises(Exception) as got:
        live.handler.inc("client_error_count", amount)
    assert (type(got.value), str(got.value)) == (type(expected.value), str(expected.value))
    assert live.value("client_error_count") == 0.0
    assert live.logger.calls == []


def test_state(live: Live) -> None:
    for state in ["running", "stopped", "idle", "stopped"]:
        assert live.handler.state(state) is None
        assert live.current_state() == state
    live.handler.state(name="state", state="running")
    assert live.current_state() == "running"
    assert live.logger.calls == []


@pytest.mark.parametrize(
    "state, message",
    [("bogus", "'bogus' is not in list"), (None, "None is not in list"), (["idle"], "['idle'] is not in list"),
     ("IDLE", "'IDLE' is not in list")],
    ids=repr,
)
def test_unknown_state_raises(live: Live, state: Any, message: str) -> None:
    live.handler.state("running")
    with pytest.raises(ValueError) as excinfo:
        live.handler.state(state)
    assert str(excinfo.value) == message
    assert live.current_state() == "running"
    assert live.logger.calls == []


def test_unknown_name_is_logged_and_ignored(live: Live) -> None:
    handler = live.handler
    assert handler.inc("nope") is None
    assert handler.inc("nope", -1) is None  # the amount is not even looked at
    assert handler.state("running", "nope") is None
    assert handler.state("bogus", "") is None
    assert live.logger.calls == [
        ("error", ("Metric does not exist.", {"name": "nope"}), {}),
        ("error", ("Metric does not exist.", {"name": "nope"}), {}),
        ("error", ("Metric does not exist.", {"name": "nope"}), {}),
        ("error", ("Metric does not exist.", {"name": ""}), {}),
    ]
    assert [live.value(k) for k, _, _ in COUNTER_KEYS] == [0.0] * 7
    assert live.current_state() == "idle"


def test_wrong_kind_is_logged_with_prometheus_client_class(live: Live) -> None:
    handler = live.handler
    assert handler.inc("state") is None
    assert handler.inc("state", -5) is None
    assert handler.state("running", "bundle_send") is None
    calls = live.logger.calls
    assert calls == [
        ("error", ("Metric not of expected type", {"name": "state", "expected_type": prometheus_client.Counter}), {}),
        ("error", ("Metric not of expected type", {"name": "state", "expected_type": prometheus_client.Counter}), {}),
        ("error", ("Metric not of expected type", {"name": "bundle_send", "expected_type": prometheus_client.Enum}),
         {}),
    ]
    assert calls[0][1][1]["expected_type"] is prometheus_client.Counter
    assert calls[2][1][1]["expected_type"] is prometheus_client.Enum
    assert live.value("bundle_send") == 0.0
    assert live.current_state() == "idle"


@pytest.mark.parametrize("name", ["bundle_send", "record_send", "run_count", "client_error_count"])
@pytest.mark.parametrize(
    "expected_type, is_counter, is_enum",
    [
        (prometheus_client.Counter, True, False),
        (prometheus_client.Enum, False, True),
        (prometheus_client.Gauge, False, False),
        (MetricWrapperBase, True, True),
        (object, True, True),
        ((prometheus_client.Gauge, prometheus_client.Counter), True, False),
        (fastmetrics.Counter, True, False),  # replaced by the impl's own class below
        (fastmetrics.Enum, False, True),
    ],
    ids=lambda v: getattr(v, "__name__", repr(v)),
)
def test_metric_exists(live: Live, name: str, expected_type: Any, is_counter: bool, is_enum: bool) -> None:
    cls = type(live.handler)
    expected_type = {fastmetrics.Counter: cls._counter_class, fastmetrics.Enum: cls._enum_class}.get(
        expected_type, expected_type
    )
    for key, expected in ((name, is_counter), ("state", is_enum)):
        live.logger.calls.clear()
        assert live.handler._metric_exists(key, expected_type) is expected
        if expected:
            assert live.logger.calls == []
        else:
            assert live.logger.calls == [
                ("error", ("Metric not of expected type", {"name": key, "expected_type": expected_type}), {})
            ]
            assert live.logger.calls[0][1][1]["expected_type"] is expected_type


def test_metric_exists_unknown_name(live: Live) -> None:
    assert live.handler._metric_exists("nope", prometheus_client.Counter) is False
    assert live.logger.calls == [("error", ("Metric does not exist.", {"name": "nope"}), {})]


def test_metric_exists_with_a_non_type_raises_as_isinstance(live: Live) -> None:
    with pytest.raises(TypeError) as expected:
        isinstance(1, "Counter")  # type: ignore[arg-type]
    with pytest.raises(TypeError) as got:
        live.handler._metric_exists("bundle_send", "Counter")
    assert str(got.value) == str(expected.value)


def test_unhashable_name_raises_as_dict(live: Live) -> None:
    with pytest.raises(TypeError) as expected:
        ["bundle_send"] in {}  # noqa: B015, RUF060 - raises the TypeError under test
    with pytest.raises(TypeError) as got_inc:
        live.handler.inc(["bundle_send"])
    with pytest.raises(TypeError) as got_state:
        live.handler.state("running", ["state"])
    assert str(got_inc.value) == str(got_state.value) == str(expected.value)
    assert live.logger.calls == []


def test_deactivating_later_silences_inc_and_state(live: Live) -> None:
    handler = live.handler
    handler.activated = ""
    assert handler.activated == ""
    handler.inc("bundle_send", 5)
    handler.inc("bundle_send", -1)
    handler.state("running")
    assert live.value("bundle_send") == 0.0 and live.current_state() == "idle"
    handler.activated = "yes"
    handler.inc("bundle_send", 5)
    handler.state("running")
    assert live.value("bundle_send") == 5.0 and live.current_state() == "running"
    assert live.logger.calls == []


def test_metrics_added_to_the_dict_go_through_pycti_path(live: Live) -> None:
    """Connectors may add their own prometheus_client metrics to ``_metrics``."""
    registry = CollectorRegistry()
    custom = prometheus_client.Counter("custom_total", "Custom.", registry=registry)
    phase = prometheus_client.Enum("phase", "Phase.", states=["a", "b"], registry=registry)
    own = type(live.handler)._counter_class("own_total", "Own.", registry=registry)
    metrics = live.handler._metrics
    metrics.update(custom=custom, phase=phase, own=own)
    try:
        live.handler.inc("custom", 2)
        live.handler.inc("own", 3)
        live.handler.state("b", "phase")
        live.handler.state("a", "custom")
        live.handler.inc("phase")
        with pytest.raises(ValueError, match="non-negative"):
            live.handler.inc("custom", -1)
    finally:
        for key in ("custom", "phase", "own"):
            del metrics[key]
    assert registry.get_sample_value("custom_total") == 2.0
    assert registry.get_sample_value("own_total") == 3.0
    assert registry.get_sample_value("phase", {"phase": "b"}) == 1.0
    assert live.logger.calls == [
        ("error", ("Metric not of expected type", {"name": "custom", "expected_type": prometheus_client.Enum}), {}),
        ("error", ("Metric not of expected type", {"name": "phase", "expected_type": prometheus_client.Counter}), {}),
    ]


def test_concurrent_inc_is_exact(live: Live) -> None:
    threads, per_thread = 8, 5000
    barrier = threading.Barrier(threads)

    def work() -> None:
        barrier.wait(timeout=30)
        for _ in range(per_thread):
            live.handler.inc("bundle_send")
            live.handler.inc("record_send", 2)
        live.handler.state("running")

    pool = [threading.Thread(target=work) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=60)
        assert not thread.is_alive()
    assert live.value("bundle_send") == threads * per_thread
    assert live.value("record_send") == 2 * threads * per_thread
    assert live.current_state() == "running"


def test_scrape_over_http(live: Live) -> None:
    live.handler.inc("bundle_send", 7)
    live.handler.state("stopped")
    p = live.prefix
    content_type, text = scrape(live.port)
    assert content_type.startswith("text/plain; version=0.0.4")
    assert textwrap.dedent(f"""\
        # HELP {p}_bundles_sent_total Number of bundles sent
        # TYPE {p}_bundles_sent_total counter
        {p}_bundles_sent_total 7.0
        # HELP {p}_bundles_sent_created Number of bundles sent
        # TYPE {p}_bundles_sent_created gauge
        """) in text
    assert textwrap.dedent(f"""\
        # HELP {p}_state State of connector
        # TYPE {p}_state gauge
        {p}_state{{{p}_state="idle"}} 0.0
        {p}_state{{{p}_state="running"}} 0.0
        {p}_state{{{p}_state="stopped"}} 1.0
        """) in text
    assert "# TYPE process_cpu_seconds_total counter" in text  # the default collectors still served

    content_type, text = scrape(live.port, openmetrics=True)
    assert content_type.startswith("application/openmetrics-text")
    assert (
        f"# HELP {p}_bundles_sent Number of bundles sent\n# TYPE {p}_bundles_sent counter\n"
        f"{p}_bundles_sent_total 7.0\n{p}_bundles_sent_created "
    ) in text
    assert (f'# HELP {p}_state State of connector\n# TYPE {p}_state stateset\n'
            f'{p}_state{{{p}_state="idle"}} 0.0\n') in text
    assert text.endswith("# EOF\n")


# -- fresh processes ----------------------------------------------------------------------

_FRESH = """
import errno, json, sys, urllib.request
from prometheus_client import REGISTRY, generate_latest
from fastmetrics import opencti
Handler = opencti.OpenCTIMetricHandler

class Logger:
    def __init__(self): self.calls = []
    def info(self, *a): self.calls.append(["info", a[0], a[1]])
    def error(self, *a): self.calls.append(["error", a[0], repr(a[1])])

port1, port2 = int(sys.argv[1]), int(sys.argv[2])
out = {}
log = Logger()
first = Handler(log, "FALSE", "", "", port1, addr="127.0.0.1")
out["activated"] = first.activated
first.inc("bundle_send", 2)
first.state("stopped")
out["exposition"] = generate_latest().decode()
try:
    Handler(log, 1, "", "", port2, addr="127.0.0.1")
except ValueError as exc:
    out["duplicate"] = [type(exc).__module__ + "." + type(exc).__qualname__, str(exc)]
# the second handler's server was started before registering failed, as pycti's
with urllib.request.urlopen(f"http://127.0.0.1:{port2}/metrics", timeout=10) as response:
    out["second_server"] = [response.status, "bundles_sent_total 2.0" in response.read().decode()]
try:
    Handler(log, True, "other", "", port1, addr="127.0.0.1")
except OSError as exc:
    out["same_port_errno"] = exc.errno == errno.EADDRINUSE
first.inc("bundle_send")
out["after"] = REGISTRY.get_sample_value("bundles_sent_total")
out["log"] = log.calls
out["fastmetrics"] = opencti.__file__
print(json.dumps(out))
"""


def test_fresh_process_bare_names_and_second_handler(impl: Any) -> None:
    port1, port2 = free_port(), free_port()
    out = run_python(impl.prologue + _FRESH, str(port1), str(port2), env=impl.env())
    assert out["fastmetrics"] == opencti.__file__
    assert out["activated"] == "FALSE"  # truth-tested, kept as given
    text = out["exposition"]
    assert "# HELP bundles_sent_total Number of bundles sent\n# TYPE bundles_sent_total counter\n" in text
    assert "bundles_sent_total 2.0\n" in text
    assert 'state{state="stopped"} 1.0\n' in text
    error_type, message = out["duplicate"]
    # prometheus_client's own duplicate error (DuplicateTimeseries, a ValueError, since 0.26), as pycti's
    duplicate = getattr(prometheus_client.registry, "DuplicateTimeseries", ValueError)
    assert error_type == f"{duplicate.__module__}.{duplicate.__qualname__}"
    assert message.startswith("Duplicated timeseries in CollectorRegistry: {")
    assert sorted(message[message.index("{") + 1 : -1].split(", ")) == [
        "'bundles_sent'", "'bundles_sent_created'", "'bundles_sent_total'"
    ]
    assert out["second_server"] == [200, True]
    assert out["same_port_errno"] is True
    assert out["after"] == 3.0
    assert out["log"] == [
        ["info", "Exposing metrics on port", {"port": port1}],
        ["info", "Exposing metrics on port", {"port": port2}],
        ["info", "Exposing metrics on port", {"port": port1}],
    ]


def test_import_fastmetrics_does_not_import_pycti() -> None:
    out = run_python(
        "import json, sys, fastmetrics, fastmetrics.opencti\n"
        "print(json.dumps([fastmetrics.__file__,"
        " sorted(m for m in sys.modules if m == 'pycti' or m.startswith('pycti.'))]))"
    )
    assert out == [fastmetrics.__file__, []]


# -- install() / uninstall() without pycti (with it: test_opencti_differential.py) ------


def test_install_without_pycti_raises_clear_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pycti", None)  # as if not installed, wherever this runs
    with pytest.raises(ImportError) as excinfo:
        opencti.install()
    message = str(excinfo.value)
    assert "pycti" in message and "not installed" in message and "pip install pycti" in message
    assert opencti._originals == {}
    opencti.uninstall()  # nothing installed: a no-op
    opencti.uninstall()


def test_install_with_broken_pycti_does_not_claim_it_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    monkeypatch.setitem(sys.modules, "pycti", types.ModuleType("pycti"))  # not a package
    with pytest.raises(ImportError) as excinfo:
        opencti.install()
    assert "not installed" not in str(excinfo.value)
    assert opencti._originals == {}


def test_dispatcher_refuses_foreign_metrics_and_installs_nothing(impl, registry):
    # A map with a foreign value raises TypeError and installs nothing, so a
    # corrected retry works (both implementations check before installing).
    from fastmetrics import _core

    d = impl.dispatch.Dispatcher()
    assert impl.dispatch is _core.dispatch_for(impl.core)
    good = impl.Counter("dispatched", "D.", registry=registry)
    with pytest.raises(TypeError, match="counters must be fastmetrics counters"):
        d._set_dispatch({"ok": good, "bad": object()}, {})
    with pytest.raises(TypeError, match="enums must be fastmetrics enums"):
        d._set_dispatch({"ok": good}, {"state": object()})
    d._set_dispatch({"ok": good}, {})
    d.activated = True
    d.inc("ok", 3)
    assert good._value.get() == 3
    with pytest.raises(RuntimeError, match="already installed"):
        d._set_dispatch({"ok": good}, {})
