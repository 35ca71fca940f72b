"""``python -m fastmetrics demo``: a simulated OpenCTI ingestion connector.

Worker threads "send" STIX bundles of random sizes through the drop-in
``OpenCTIMetricHandler`` (namespace ``opencti``, subsystem ``connector``), the
way pycti's helper and connectors call it: ``inc("bundle_send")`` once per
object, ``inc("record_send", len(bundle))`` once per bundle, ``inc("run_count")``
and ``state("running")`` / ``state("idle")`` around each run, and now and then
``inc("client_error_count")`` for a bundle the (imaginary) platform refused.

Contract:

* Metrics are served on ``--host``:``--port`` (default 127.0.0.1:9095) from the
  default registry by the handler's own ``start_http_server``.
* Each worker also counts what it did in its own :class:`Tally`.  At exit the
  demo scrapes its own endpoint and checks that every handler counter equals
  the sum of the tallies and that the state is ``stopped``; a mismatch is a bug
  and exits 1.  So the counts it prints (and writes with ``--json``) are exactly
  what the exposition shows.
* SIGINT / SIGTERM or the end of ``--duration`` stop it cleanly: workers finish
  the bundle they are sending, the state becomes ``stopped``, a summary is
  printed, and it exits 0.  ``--linger`` keeps serving the final values for a
  while (a further SIGINT / SIGTERM ends that early) so a Prometheus server can
  scrape them.
* Bad flags and an unusable address (e.g. a busy port) print one line on
  stderr and exit 2.

:func:`main` runs once per process: the handler registers its metrics in the
default ``REGISTRY`` (a second activated handler is a duplicate, as in pycti).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from types import FrameType
from typing import Any, Callable, Dict, List, NoReturn, Optional, Sequence, TextIO, Tuple

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

PROG = "fastmetrics demo"
NAMESPACE = "opencti"
SUBSYSTEM = "connector"
PREFIX = f"{NAMESPACE}_{SUBSYSTEM}_"

#: Sample names the handler exposes for each ``inc`` key (pycti's names).
COUNTER_SAMPLES: Dict[str, str] = {
    "bundle_send": PREFIX + "bundles_sent_total",
    "record_send": PREFIX + "records_sent_total",
    "run_count": PREFIX + "runs_total",
    "ping_api_count": PREFIX + "ping_api_total",
    "ping_api_error": PREFIX + "ping_api_errors_total",
    "error_count": PREFIX + "errors_total",
    "client_error_count": PREFIX + "client_errors_total",
}
STATE_SAMPLE = PREFIX + "state"

MAX_BUNDLE = 100  # objects per bundle: uniform in 1..MAX_BUNDLE
MAX_BUNDLES_PER_RUN = 5
CLIENT_ERROR_RATE = 0.005  # share of bundles refused (not counted as sent)
TTY_REFRESH = 0.25  # seconds between progress redraws on a terminal (4/s)
LINE_REFRESH = 2.0  # seconds between progress lines when stderr is not a terminal
SCRAPE_TIMEOUT = 10.0


class UsageError(Exception):
    """A bad command line; the message is printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (``prog: error: ... (see --help)``)
    raised as :class:`UsageError` instead of usage text plus ``SystemExit``."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _number(kind: Callable[[str], Any], low: float, high: float) -> Callable[[str], Any]:
    """An argparse ``type``: ``kind(text)``, finite, within ``[low, high]``."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, not {text!r}")
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g}, not {text!r}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _positive_seconds(text: str) -> float:
    value = _number(float, 0.0, 10.0**9)(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, not {text!r}")
    return float(value)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog=PROG,
        description="Simulate an OpenCTI connector sending bundles through fastmetrics' drop-in "
        "OpenCTIMetricHandler, with live Prometheus metrics.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to serve metrics on (default: %(default)s)")
    p.add_argument("--port", type=_number(int, 1, 65535), default=9095,
                   help="port to serve metrics on (default: %(default)s)")
    p.add_argument("--threads", type=_number(int, 1, 1024), default=4,
                   help="worker threads sending bundles (default: %(default)s)")
    p.add_argument("--duration", type=_positive_seconds, default=None, metavar="SECONDS",
                   help="stop after this many seconds (default: run until Ctrl-C)")
    p.add_argument("--rate", type=_number(float, 0.0, 10.0**12), default=0.0, metavar="OBJECTS_PER_S",
                   help="target objects per second over all threads; 0 = as fast as possible (default)")
    p.add_argument("--json", metavar="FILE", default=None,
                   help="write the final counts as JSON to FILE ('-' for stdout)")
    p.add_argument("--linger", type=_number(float, 0.0, 10.0**9), default=0.0, metavar="SECONDS",
                   help="after stopping, keep serving the final values this long (default: 0)")
    return p


@dataclass(frozen=True)
class Options:
    host: str
    port: int
    threads: int
    duration: Optional[float]
    rate: float
    json: Optional[str]
    linger: float


def parse_args(argv: Sequence[str]) -> Options:
    """Parse the command line; raises :class:`UsageError` (or ``SystemExit(0)`` for ``--help``)."""
    ns = build_parser().parse_args(list(argv))
    return Options(ns.host, ns.port, ns.threads, ns.duration, ns.rate, ns.json, ns.linger)


# -- the connector ----------------------------------------------------------------


class Tally:
    """What one worker did; written only by its own thread, read by others after
    it has joined (or approximately, for the progress line, while it runs)."""

    __slots__ = ("objects", "bundles", "runs", "client_errors")

    def __init__(self) -> None:
        self.objects = 0
        self.bundles = 0
        self.runs = 0
        self.client_errors = 0


def total(tallies: Sequence[Tally]) -> Tally:
    out = Tally()
    for t in tallies:
        out.objects += t.objects
        out.bundles += t.bundles
        out.runs += t.runs
        out.client_errors += t.client_errors
    return out


def expected_samples(t: Tally) -> Dict[str, float]:
    """The value every handler counter must show after the workers in ``t`` ran."""
    counts = {key: 0 for key in COUNTER_SAMPLES}
    counts["bundle_send"] = t.objects  # pycti sends one object per bundle: one inc per object
    counts["record_send"] = t.objects  # inc(len(bundle)) per bundle
    counts["run_count"] = t.runs
    counts["client_error_count"] = t.client_errors
    return {COUNTER_SAMPLES[key]: float(n) for key, n in counts.items()}


def worker(handler: Any, tally: Tally, stop: threading.Event, objects_per_s: float, seed: int) -> None:
    """Run connector "runs" until ``stop`` is set; never stops inside a bundle.

    ``objects_per_s`` > 0 paces this thread to that many objects per second
    (sleeping on ``stop``, so stopping is prompt); 0 means no pacing.
    """
    rng = random.Random(seed)
    inc, set_state = handler.inc, handler.state
    next_due = time.monotonic()
    while not stop.is_set():
        inc("run_count")
        tally.runs += 1
        set_state("running")
        for _ in range(rng.randint(1, MAX_BUNDLES_PER_RUN)):
            size = rng.randint(1, MAX_BUNDLE)
            if rng.random() < CLIENT_ERROR_RATE:
                inc("client_error_count")
                tally.client_errors += 1
            else:
                for _ in range(size):
                    inc("bundle_send")
                inc("record_send", size)
                tally.objects += size
                tally.bundles += 1
            if objects_per_s > 0:
                next_due += size / objects_per_s
                delay = next_due - time.monotonic()
                if delay > 0:
                    stop.wait(delay)
                elif delay < -1.0:  # fell behind by more than a second: don't burst to catch up
                    next_due = time.monotonic()
            if stop.is_set():
                break
        set_state("idle")


class _Logger:
    """The ``connector_logger`` pycti passes: ``info``/``warning``/``error``/``debug``
    ``(message, meta=None)``.  Info and debug are kept (shown once the server is
    up); warnings and errors go to stderr at once."""

    def __init__(self, err: TextIO) -> None:
        self.err = err
        self.kept: List[str] = []

    @staticmethod
    def _format(level: str, message: str, meta: Optional[Dict[str, Any]]) -> str:
        return f"{PROG}: handler {level}: {message}" + (f" {json.dumps(meta, default=str)}" if meta else "")

    def debug(self, message: str, meta: Optional[Dict[str, Any]] = None) -> None:
        self.kept.append(self._format("debug", message, meta))

    def info(self, message: str, meta: Optional[Dict[str, Any]] = None) -> None:
        self.kept.append(self._format("info", message, meta))

    def warning(self, message: str, meta: Optional[Dict[str, Any]] = None) -> None:
        print(self._format("warning", message, meta), file=self.err, flush=True)

    def error(self, message: str, meta: Optional[Dict[str, Any]] = None) -> None:
        print(self._format("error", message, meta), file=self.err, flush=True)


# -- reading the exposition back ----------------------------------------------------


def metrics_url(host: str, port: int) -> str:
    """A URL that reaches the metrics server bound to ``host``:``port``."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "[::1]"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}/metrics"


def parse_exposition(text: str) -> Dict[str, Any]:
    """The handler's samples in a text exposition: ``{sample name: value}`` for
    the counters, plus ``{STATE_SAMPLE: current state or None}``."""
    found: Dict[str, Any] = {STATE_SAMPLE: None}
    wanted = set(COUNTER_SAMPLES.values())
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted and not sample.labels:
                found[sample.name] = sample.value
            elif sample.name == STATE_SAMPLE and sample.value == 1:
                found[STATE_SAMPLE] = sample.labels.get(STATE_SAMPLE)
    return found


def read_exposition(url: str) -> Tuple[Dict[str, Any], str]:
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
    return parse_exposition(text), source


def mismatches(expected: Dict[str, float], state: str, seen: Dict[str, Any]) -> List[str]:
    out = []
    for name, want in expected.items():
        got = seen.get(name)
        if got != want:
            out.append(f"{name}: counted {want:.0f}, exposed {got!r}")
    if seen.get(STATE_SAMPLE) != state:
        out.append(f"{STATE_SAMPLE}: expected {state!r}, exposed {seen.get(STATE_SAMPLE)!r}")
    return out


# -- display -------------------------------------------------------------------------


def _n(value: float) -> str:
    return f"{value:,.0f}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def fit(parts: Sequence[Tuple[str, int]], width: int) -> str:
    """Join ``(text, drop rank)`` parts with two spaces, dropping the highest-ranked
    parts until the line fits ``width`` (then cutting it, if rank 0 alone is too wide)."""
    keep = list(parts)
    line = "  ".join(text for text, _ in keep)
    while len(line) > width and any(rank > 0 for _, rank in keep):
        worst = max(rank for _, rank in keep)
        drop = max(i for i, (_, rank) in enumerate(keep) if rank == worst)
        del keep[drop]
        line = "  ".join(text for text, _ in keep)
    return line[:width]


class Progress:
    """One status line on ``err``: redrawn in place at most 4x/s on a terminal,
    else printed as a plain line every :data:`LINE_REFRESH` seconds."""

    def __init__(self, err: TextIO, url: str, tallies: Sequence[Tally]) -> None:
        self.err = err
        self.url = url
        self.tallies = tallies
        self.tty = bool(getattr(err, "isatty", lambda: False)())
        self.interval = TTY_REFRESH if self.tty else LINE_REFRESH
        self.started = self.last_time = time.monotonic()
        self.last_objects = 0
        self.drawn = False

    def due(self, now: float) -> bool:
        return now - self.last_time >= self.interval

    def draw(self, now: float) -> None:
        t = total(self.tallies)
        span = now - self.last_time
        rate = (t.objects - self.last_objects) / span if span > 0 else 0.0
        self.last_time, self.last_objects = now, t.objects
        # (text, drop rank): on a narrow terminal the highest ranks are dropped first.
        parts = [
            (f"{now - self.started:.1f}s", 1),
            (f"{_n(rate)} objects/s", 0),
            (f"{_n(t.objects)} objects", 0),
            (f"{_n(t.bundles)} bundles", 3),
            (f"{_n(t.runs)} runs", 2),
            (f"{_n(t.client_errors)} client errors", 2),
            (self.url, 0),
        ]
        if self.tty:
            import shutil

            width = max(shutil.get_terminal_size().columns - 1, 20)
            line = fit(parts, width)
            self.err.write("\r\x1b[K" + line)
            self.drawn = True
        else:
            self.err.write("  ".join(text for text, _ in parts) + "\n")
        self.err.flush()

    def close(self) -> None:
        if self.drawn:
            self.err.write("\r\x1b[K")
            self.err.flush()
            self.drawn = False


def summary(t: Tally, threads: int, elapsed: float, source: str, seen: Dict[str, Any]) -> str:
    rate = t.objects / elapsed if elapsed > 0 else 0.0
    lines = [
        f"stopped after {elapsed:.1f}s: {_n(t.objects)} objects in {_n(t.bundles)} bundles, {_n(t.runs)} runs, "
        f"{_n(t.client_errors)} client errors ({_n(rate)} objects/s, {_plural(threads, 'thread')})",
        f"checked {source}: every value equals the workers' own counts",
    ]
    width = max(len(name) for name in COUNTER_SAMPLES.values())
    for name in COUNTER_SAMPLES.values():
        lines.append(f"  {name:<{width}}  {seen[name]:.0f}")
    lines.append(f"  {STATE_SAMPLE:<{width}}  {seen[STATE_SAMPLE]}")
    return "\n".join(lines)


def report(t: Tally, tallies: Sequence[Tally], opts: Options, elapsed: float, url: str,
           seen: Dict[str, Any]) -> Dict[str, Any]:
    """The ``--json`` document: final counts, exactly as exposed."""
    return {
        "url": url,
        "threads": opts.threads,
        "elapsed_seconds": round(elapsed, 3),
        "objects": t.objects,
        "bundles": t.bundles,
        "runs": t.runs,
        "client_errors": t.client_errors,
        "per_thread": [
            {"objects": x.objects, "bundles": x.bundles, "runs": x.runs, "client_errors": x.client_errors}
            for x in tallies
        ],
        "metrics": {name: int(seen[name]) for name in COUNTER_SAMPLES.values()},
        "state": seen[STATE_SAMPLE],
    }


def write_json(path: str, doc: Dict[str, Any]) -> None:
    """Write ``doc`` to ``path`` atomically (a reader never sees half a file), or stdout for ``-``."""
    text = json.dumps(doc, indent=2) + "\n"
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


# -- main ------------------------------------------------------------------------------


class _Signals:
    """While active, SIGINT/SIGTERM set every event in :attr:`events` instead of
    raising; the previous handlers are restored on exit.  Inert outside the
    main thread (then Ctrl-C raises ``KeyboardInterrupt`` as usual)."""

    def __init__(self, *events: threading.Event) -> None:
        self.events = list(events)
        self.previous: Dict[int, Any] = {}

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        for event in self.events:
            event.set()

    def __enter__(self) -> "_Signals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def _fail(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return code


def _check_json_target(path: Optional[str]) -> None:
    """Fail fast (before a long run) if ``--json FILE`` cannot be written."""
    if path is None or path == "-":
        return
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        raise UsageError(f"argument --json: cannot write {path!r}")


def run_workers(handler: Any, opts: Options, stop: threading.Event, progress: Progress,
                tallies: Sequence[Tally]) -> Tuple[float, List[BaseException]]:
    """Run one worker thread per tally until ``stop`` is set or ``--duration``
    ends, drawing progress; returns after every worker has finished its bundle:
    ``(elapsed seconds, exceptions raised by workers)``."""
    failures: List[BaseException] = []

    def run(i: int) -> None:
        try:
            worker(handler, tallies[i], stop, opts.rate / opts.threads, seed=i)
        except BaseException as exc:  # a crashing worker is a bug: stop everything, report it
            failures.append(exc)
            stop.set()

    threads = [threading.Thread(target=run, args=(i,), name=f"demo-worker-{i}", daemon=True)
               for i in range(len(tallies))]
    started = time.monotonic()
    for th in threads:
        th.start()
    deadline = started + opts.duration if opts.duration else math.inf
    while not stop.is_set():
        now = time.monotonic()
        if now >= deadline:
            break
        if progress.due(now):
            progress.draw(now)
        stop.wait(min(TTY_REFRESH, max(deadline - now, 0.0)))
    stop.set()
    for th in threads:
        th.join()
    elapsed = time.monotonic() - started
    progress.close()
    return elapsed, failures


def _start_handler(opts: Options) -> Any:
    """The activated drop-in handler serving on ``--host``/``--port``, after
    printing its log and a banner; None (error printed) if the address cannot
    be served."""
    from . import __version__, implementation
    from .opencti import OpenCTIMetricHandler

    logger = _Logger(sys.stderr)
    try:
        handler = OpenCTIMetricHandler(logger, True, NAMESPACE, SUBSYSTEM, opts.port, addr=opts.host)
    except OSError as exc:
        _fail(f"cannot serve metrics on {opts.host}:{opts.port}: {exc.strerror or exc}", 2)
        return None
    for line in logger.kept:
        print(line, file=sys.stderr)
    pace = f"{opts.rate:g} objects/s" if opts.rate > 0 else "as fast as possible"
    until = f"for {opts.duration:g}s" if opts.duration else "until Ctrl-C"
    print(f"{PROG}: {_plural(opts.threads, 'worker')} sending bundles {pace}, {until}; "
          f"metrics at {metrics_url(opts.host, opts.port)} (fastmetrics {__version__}, {implementation} core)",
          file=sys.stderr, flush=True)
    return handler


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the demo; returns the exit code: 0 done, 1 internal error (a crashed
    worker, or the exposition disagreeing with the workers' counts), 2 bad
    command line or an address that cannot be served."""
    try:
        opts = parse_args(sys.argv[1:] if argv is None else argv)
        _check_json_target(opts.json)
    except UsageError as exc:
        return _fail(f"{exc} (see --help)", 2)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)

    stop, linger = threading.Event(), threading.Event()
    with _Signals(stop) as signals:  # the first signal stops the workers ...
        handler = _start_handler(opts)
        if handler is None:
            return 2
        tallies = [Tally() for _ in range(opts.threads)]
        url = metrics_url(opts.host, opts.port)
        elapsed, failures = run_workers(handler, opts, stop, Progress(sys.stderr, url, tallies), tallies)
        signals.events.append(linger)  # ... any later one cuts --linger short
        if failures:
            return _fail(f"a worker failed: {type(failures[0]).__name__}: {failures[0]}", 1)
        handler.state("stopped")

        t = total(tallies)
        seen, source = read_exposition(url)
        bad = mismatches(expected_samples(t), "stopped", seen)
        if bad:
            return _fail("the exposition does not match the workers' counts (a bug): " + "; ".join(bad), 1)
        if opts.json:
            try:
                write_json(opts.json, report(t, tallies, opts, elapsed, url, seen))
            except OSError as exc:
                return _fail(f"cannot write {opts.json}: {exc}", 1)
        out = sys.stderr if opts.json == "-" else sys.stdout
        print(summary(t, opts.threads, elapsed, source, seen), file=out, flush=True)

        if opts.linger > 0:
            print(f"{PROG}: still serving {url} for {opts.linger:g}s (Ctrl-C to exit now)", file=sys.stderr,
                  flush=True)
            linger.wait(opts.linger)
    return 0
