"""The simulated connector: worker threads calling the handler as pycti does.

Contract:

* A worker "sends" STIX bundles of random sizes through the handler the way
  pycti's helper and connectors call it: ``inc("bundle_send")`` once per
  object (pycti sends each object as its own bundle), ``inc("record_send",
  len(bundle))`` once per bundle, ``inc("run_count")`` and ``state("running")``
  / ``state("idle")`` around each run, and now and then
  ``inc("client_error_count")`` for a bundle the (imaginary) platform refused.
* Each worker counts what it did in its own :class:`Tally`;
  :func:`expected_samples` turns the tallies into the value every handler
  counter must expose.
* The exposed sample names come from the handler itself
  (:func:`exposed_names`), so renaming a metric in :mod:`fastmetrics.opencti`
  cannot desynchronise the demo; only the ``inc`` / ``state`` keys, which are
  pycti's API, are named here.
"""

from __future__ import annotations

import math
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple

from ... import Counter

#: The keys the demo passes to ``handler.inc`` / ``handler.state`` (pycti's API).
BUNDLE_SEND = "bundle_send"
RECORD_SEND = "record_send"
RUN_COUNT = "run_count"
CLIENT_ERROR_COUNT = "client_error_count"
STATE = "state"  # the default ``name`` of ``handler.state``

MAX_BUNDLE = 100  # objects per bundle: uniform in 1..MAX_BUNDLE
MAX_BUNDLES_PER_RUN = 5
CLIENT_ERROR_RATE = 0.005  # share of bundles refused (not counted as sent)
POLL = 0.25  # seconds between checks of the deadline (and progress redraws)


@dataclass(frozen=True)
class ExposedNames:
    """Where the handler's metrics appear in the exposition."""

    counters: Mapping[str, str]  # inc() key -> sample name, in the handler's order
    state: str  # the state enum's sample name (also its label name)


def exposed_names(handler: Any) -> ExposedNames:
    """The sample names of an activated handler's metrics, read from its
    ``_metrics`` (pycti's key -> metric map) and each metric's full ``_name``:
    a counter's sample is ``<name>_total``, the enum's is ``<name>``."""
    metrics: Mapping[str, Any] = handler._metrics
    counters = {key: f"{metric._name}_total" for key, metric in metrics.items() if isinstance(metric, Counter)}
    return ExposedNames(counters, str(metrics[STATE]._name))


class Tally:
    """What one worker did; written only by its own thread, read by others after
    it has joined (or approximately, for the progress line, while it runs)."""

    __slots__ = ("bundles", "client_errors", "objects", "runs")

    def __init__(self) -> None:
        self.objects = 0
        self.bundles = 0
        self.runs = 0
        self.client_errors = 0

    def as_dict(self) -> Dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


def total(tallies: Sequence[Tally]) -> Tally:
    """The sum of ``tallies``."""
    out = Tally()
    for t in tallies:
        out.objects += t.objects
        out.bundles += t.bundles
        out.runs += t.runs
        out.client_errors += t.client_errors
    return out


def expected_samples(t: Tally, names: ExposedNames) -> Dict[str, float]:
    """The value every handler counter must show after the workers in ``t`` ran
    (0 for the counters the demo never increments)."""
    counts = dict.fromkeys(names.counters, 0)
    counts[BUNDLE_SEND] = t.objects  # one inc per object
    counts[RECORD_SEND] = t.objects  # inc(len(bundle)) per bundle
    counts[RUN_COUNT] = t.runs
    counts[CLIENT_ERROR_COUNT] = t.client_errors
    return {names.counters[key]: float(n) for key, n in counts.items()}


def worker(handler: Any, tally: Tally, stop: threading.Event, objects_per_s: float, seed: int) -> None:
    """Run connector "runs" until ``stop`` is set; never stops inside a bundle.

    ``objects_per_s`` > 0 paces this thread to that many objects per second
    (sleeping on ``stop``, so stopping is prompt); 0 means no pacing.
    """
    rng = random.Random(seed)
    inc, set_state = handler.inc, handler.state
    next_due = time.monotonic()
    while not stop.is_set():
        inc(RUN_COUNT)
        tally.runs += 1
        set_state("running")
        for _ in range(rng.randint(1, MAX_BUNDLES_PER_RUN)):
            size = rng.randint(1, MAX_BUNDLE)
            if rng.random() < CLIENT_ERROR_RATE:
                inc(CLIENT_ERROR_COUNT)
                tally.client_errors += 1
            else:
                for _ in range(size):
                    inc(BUNDLE_SEND)
                inc(RECORD_SEND, size)
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


class Ticker(Protocol):
    """What :func:`run_workers` calls while the workers run: ``due(now)`` asks
    whether to call ``draw(now)``; ``close()`` once they have stopped."""

    def due(self, now: float) -> bool: ...

    def draw(self, now: float) -> None: ...

    def close(self) -> None: ...


def run_workers(handler: Any, tallies: Sequence[Tally], rate: float, duration: Optional[float],
                stop: threading.Event, ticker: Ticker) -> Tuple[float, List[BaseException]]:
    """Run one worker thread per tally (sharing ``rate`` objects/s, 0 = flat
    out) until ``stop`` is set or ``duration`` seconds have passed, drawing
    ``ticker``; returns after every worker has finished its bundle:
    ``(elapsed seconds, exceptions raised by workers)``.  A crashing worker
    sets ``stop``."""
    failures: List[BaseException] = []

    def run(i: int) -> None:
        try:
            worker(handler, tallies[i], stop, rate / len(tallies), seed=i)
        except BaseException as exc:  # a crashing worker is a bug: stop everything, report it
            failures.append(exc)
            stop.set()

    threads = [threading.Thread(target=run, args=(i,), name=f"demo-worker-{i}", daemon=True)
               for i in range(len(tallies))]
    started = time.monotonic()
    for th in threads:
        th.start()
    deadline = started + duration if duration else math.inf
    while not stop.is_set():
        now = time.monotonic()
        if now >= deadline:
            break
        if ticker.due(now):
            ticker.draw(now)
        stop.wait(min(POLL, max(deadline - now, 0.0)))
    stop.set()
    for th in threads:
        th.join()
    elapsed = time.monotonic() - started
    ticker.close()
    return elapsed, failures
