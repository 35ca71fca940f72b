"""The ``fastmetrics demo`` command: its arguments and its run.

Contract:

* Serves the handler's metrics on ``--host``:``--port`` (default
  127.0.0.1:9095) from the default registry with the handler's own
  ``start_http_server`` while ``--threads`` workers send bundles
  (:mod:`.connector`).
* At exit it scrapes its own endpoint and checks that every handler counter
  equals the sum of the workers' tallies and that the state is ``stopped``; a
  mismatch is a bug and exits 1.  So the counts it prints (and writes with
  ``--json``) are exactly what the exposition shows.
* SIGINT / SIGTERM or the end of ``--duration`` stop it cleanly: workers finish
  the bundle they are sending, the state becomes ``stopped``, a summary is
  printed, and it exits 0.  ``--linger`` keeps serving the final values for a
  while (a further SIGINT / SIGTERM ends that early) so a Prometheus server can
  scrape them.
* A bad command line (including a ``--json FILE`` that cannot be written) is
  argparse's usage and ``fastmetrics demo: error: ...``, exit 2; an unusable
  address (e.g. a busy port) is one ``fastmetrics demo: error: ...`` line, exit 2.

:func:`run` runs once per process: the handler registers its metrics in the
default ``REGISTRY`` (a second activated handler is a duplicate, as in pycti).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from dataclasses import dataclass
from types import FrameType
from typing import Any, Dict, Optional

from ... import __version__, implementation
from ...opencti import OpenCTIMetricHandler
from .._args import number
from . import PROG
from .check import metrics_url, mismatches, read_exposition
from .connector import Tally, expected_samples, exposed_names, run_workers, total
from .display import HandlerLog, Progress, plural, report, summary, write_json

NAMESPACE = "opencti"
SUBSYSTEM = "connector"
DESCRIPTION = ("Simulate an OpenCTI connector sending bundles through fastmetrics' drop-in "
               "OpenCTIMetricHandler, with live Prometheus metrics.")


def _json_target(path: str) -> str:
    """An argparse ``type`` for ``--json``: ``-`` or a file whose directory is
    writable (checked before a long run, not after it)."""
    if path != "-":
        directory = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path) or not os.path.isdir(directory) or not os.access(directory, os.W_OK):
            raise argparse.ArgumentTypeError(f"cannot write {path!r}")
    return path


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add the ``demo`` subcommand (its ``run`` default is :func:`run`)."""
    p = subparsers.add_parser("demo", prog=PROG, description=DESCRIPTION,
                              help="run a simulated OpenCTI connector with live metrics")
    p.add_argument("--host", default="127.0.0.1", help="address to serve metrics on (default: %(default)s)")
    p.add_argument("--port", type=number(int, 1, 65535), default=9095,
                   help="port to serve metrics on (default: %(default)s)")
    p.add_argument("--threads", type=number(int, 1, 1024), default=4,
                   help="worker threads sending bundles (default: %(default)s)")
    p.add_argument("--duration", type=number(float, 0.0, 1e9, above_low=True), default=None, metavar="SECONDS",
                   help="stop after this many seconds (default: run until Ctrl-C)")
    p.add_argument("--rate", type=number(float, 0.0, 1e12), default=0.0, metavar="OBJECTS_PER_S",
                   help="target objects per second over all threads; 0 = as fast as possible (default)")
    p.add_argument("--json", type=_json_target, metavar="FILE", default=None,
                   help="write the final counts as JSON to FILE ('-' for stdout)")
    p.add_argument("--linger", type=number(float, 0.0, 1e9), default=0.0, metavar="SECONDS",
                   help="after stopping, keep serving the final values this long (default: 0)")
    p.set_defaults(run=run)
    return p


@dataclass(frozen=True)
class Options:
    """The parsed command line, typed."""

    host: str
    port: int
    threads: int
    duration: Optional[float]
    rate: float
    json: Optional[str]
    linger: float

    @classmethod
    def of(cls, ns: argparse.Namespace) -> Options:
        return cls(ns.host, ns.port, ns.threads, ns.duration, ns.rate, ns.json, ns.linger)


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

    def __enter__(self) -> _Signals:
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


def _start_handler(opts: Options) -> Optional[OpenCTIMetricHandler]:
    """The activated drop-in handler serving on ``--host``/``--port``, after
    printing its log and a banner; None (error printed) if the address cannot
    be served."""
    log = HandlerLog(sys.stderr)
    try:
        handler = OpenCTIMetricHandler(log, True, NAMESPACE, SUBSYSTEM, opts.port, addr=opts.host)
    except OSError as exc:
        _fail(f"cannot serve metrics on {opts.host}:{opts.port}: {exc.strerror or exc}", 2)
        return None
    for line in log.kept:
        print(line, file=sys.stderr)
    pace = f"{opts.rate:g} objects/s" if opts.rate > 0 else "as fast as possible"
    until = f"for {opts.duration:g}s" if opts.duration else "until Ctrl-C"
    print(f"{PROG}: {plural(opts.threads, 'worker')} sending bundles {pace}, {until}; "
          f"metrics at {metrics_url(opts.host, opts.port)} (fastmetrics {__version__}, {implementation} core)",
          file=sys.stderr, flush=True)
    return handler


def run(args: argparse.Namespace) -> int:
    """Run the demo for parsed ``args``; returns the exit code: 0 done, 1
    internal error (a crashed worker, or the exposition disagreeing with the
    workers' counts), 2 an address that cannot be served."""
    opts = Options.of(args)
    stop, linger = threading.Event(), threading.Event()
    with _Signals(stop) as signals:  # the first signal stops the workers ...
        handler = _start_handler(opts)
        if handler is None:
            return 2
        names = exposed_names(handler)
        tallies = [Tally() for _ in range(opts.threads)]
        url = metrics_url(opts.host, opts.port)
        elapsed, failures = run_workers(handler, tallies, opts.rate, opts.duration, stop,
                                        Progress(sys.stderr, url, tallies))
        signals.events.append(linger)  # ... any later one cuts --linger short
        if failures:
            return _fail(f"a worker failed: {type(failures[0]).__name__}: {failures[0]}", 1)
        handler.state("stopped")

        t = total(tallies)
        seen, source = read_exposition(url, names)
        bad = mismatches(expected_samples(t, names), "stopped", seen, names)
        if bad:
            return _fail("the exposition does not match the workers' counts (a bug): " + "; ".join(bad), 1)
        if opts.json:
            try:
                write_json(opts.json, report(t, tallies, elapsed, url, seen, names))
            except OSError as exc:
                return _fail(f"cannot write {opts.json}: {exc}", 1)
        out = sys.stderr if opts.json == "-" else sys.stdout
        print(summary(t, opts.threads, elapsed, source, seen, names), file=out, flush=True)

        if opts.linger > 0:
            print(f"{PROG}: still serving {url} for {opts.linger:g}s (Ctrl-C to exit now)", file=sys.stderr,
                  flush=True)
            linger.wait(opts.linger)
    return 0
