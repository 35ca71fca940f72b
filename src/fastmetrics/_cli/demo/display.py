"""What the demo shows: the handler's log, the status line, the summary, the
``--json`` report."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, TextIO, Tuple

from . import PROG
from .connector import BUNDLE_SEND, ExposedNames, Tally, total

TTY_REFRESH = 0.25  # seconds between status redraws on a terminal (4/s)
LINE_REFRESH = 2.0  # seconds between status lines when stderr is not a terminal


def count(value: float) -> str:
    """A count with thousands separators."""
    return f"{value:,.0f}"


def plural(n: int, word: str) -> str:
    """``"1 thread"``, ``"2 threads"``."""
    return f"{n} {word}" + ("" if n == 1 else "s")


class HandlerLog:
    """The ``connector_logger`` pycti passes: ``info``/``warning``/``error``/``debug``
    ``(message, meta=None)``.  Info and debug are kept in :attr:`kept` (shown
    once the server is up); warnings and errors go to ``err`` at once."""

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
    """One status line on ``err`` (a :class:`~.connector.Ticker`): redrawn in
    place at most 4x/s on a terminal, else printed as a plain line every
    :data:`LINE_REFRESH` seconds."""

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
            (f"{count(rate)} objects/s", 0),
            (f"{count(t.objects)} objects", 0),
            (f"{count(t.bundles)} bundles", 3),
            (f"{count(t.runs)} runs", 2),
            (f"{count(t.client_errors)} client errors", 2),
            (self.url, 0),
        ]
        if self.tty:
            width = max(shutil.get_terminal_size().columns - 1, 20)
            self.err.write("\r\x1b[K" + fit(parts, width))
            self.drawn = True
        else:
            self.err.write("  ".join(text for text, _ in parts) + "\n")
        self.err.flush()

    def close(self) -> None:
        if self.drawn:
            self.err.write("\r\x1b[K")
            self.err.flush()
            self.drawn = False


def summary(t: Tally, threads: int, elapsed: float, source: str, seen: Mapping[str, Any],
            names: ExposedNames) -> str:
    """The final report: totals (saying why the bundle counter equals the
    objects, not the bundles), where the values were checked, and every
    handler sample as exposed."""
    rate = t.objects / elapsed if elapsed > 0 else 0.0
    lines = [
        f"stopped after {elapsed:.1f}s: {count(t.objects)} objects in {count(t.bundles)} bundles "
        f"(pycti sends each object as its own bundle: {names.counters[BUNDLE_SEND]} counts {count(t.objects)}), "
        f"{count(t.runs)} runs, {count(t.client_errors)} client errors "
        f"({count(rate)} objects/s, {plural(threads, 'thread')})",
        f"checked {source}: every value equals the workers' own counts",
    ]
    shown = [*names.counters.values(), names.state]
    width = max(len(name) for name in shown)
    for name in names.counters.values():
        lines.append(f"  {name:<{width}}  {seen[name]:.0f}")
    lines.append(f"  {names.state:<{width}}  {seen[names.state]}")
    return "\n".join(lines)


def report(t: Tally, tallies: Sequence[Tally], elapsed: float, url: str, seen: Mapping[str, Any],
           names: ExposedNames) -> Dict[str, Any]:
    """The ``--json`` document: final counts, exactly as exposed."""
    return {
        "url": url,
        "threads": len(tallies),
        "elapsed_seconds": round(elapsed, 3),
        **t.as_dict(),
        "per_thread": [x.as_dict() for x in tallies],
        "metrics": {name: int(seen[name]) for name in names.counters.values()},
        "state": seen[names.state],
    }


def write_json(path: str, doc: Mapping[str, Any]) -> None:
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
