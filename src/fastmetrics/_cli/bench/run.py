"""The interleaved run of ``fastmetrics bench``: every (operation, candidate) case,
round by round.

Contract:

* Every available (op, candidate) pair is a :class:`Case`; each is calibrated
  once (also its warm-up) so a batch lasts about the settings' target.
* Each round times one batch of every case: op *families* (an op and its
  thread-count variants) in a freshly shuffled order, the cases of a family
  back to back, also shuffled, so noise from other processes hits them alike.
  A case keeps one ns/op sample per round.
* Every workload is closed when the run ends, also on KeyboardInterrupt.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, TextIO, Tuple

from . import PROG
from .ops import Op
from .subjects import LABELS, Subjects, Unavailable
from .timing import Workload, calibrate, time_batch


@dataclass
class Case:
    """One (op, candidate) pair: its workload, batch size and ns/op per round."""

    op: Op
    candidate: str
    workload: Workload
    n: int = 1
    samples: List[float] = field(default_factory=list)  # ns per op, one per round

    @property
    def median_ns(self) -> float:
        """Median ns/op over the rounds (``StatisticsError`` before any round)."""
        return statistics.median(self.samples)


@dataclass(frozen=True)
class Settings:
    """Interleaved rounds and per-batch targets (seconds) for one-thread and thread rows."""

    rounds: int
    target_s: float
    thread_target_s: float


QUICK = Settings(rounds=7, target_s=0.0005, thread_target_s=0.015)
DEFAULT = Settings(rounds=21, target_s=0.002, thread_target_s=0.025)


class Progress:
    """``fastmetrics bench: [k/N] what`` redrawn on one line of ``stream``, only
    on a terminal."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = total
        self.stream = stream
        self.done = 0
        self.enabled = bool(getattr(stream, "isatty", lambda: False)())

    def step(self, what: str) -> None:
        self.done += 1
        if self.enabled:
            self.stream.write(f"\r{PROG}: [{self.done:4d}/{self.total}] {what[:50]:<50}")
            self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\r" + " " * 80 + "\r")
            self.stream.flush()


def run_cases(
    ops: Sequence[Op],
    subjects: Subjects,
    settings: Settings,
    stderr: TextIO,
    seed: int = 0,
) -> Tuple[List[Case], Dict[Tuple[str, str], str]]:
    """Measure every available (op, candidate), interleaved (see the module
    docstring), showing :class:`Progress` on ``stderr``; returns the cases and,
    for each unavailable ``(op key, candidate)``, why.  ``seed`` seeds the
    shuffles."""
    cases: List[Case] = []
    missing: Dict[Tuple[str, str], str] = {}
    for op in ops:
        for candidate in op.candidates:
            try:
                cases.append(Case(op, candidate, op.workload(subjects, candidate)))
            except Unavailable as exc:
                missing[(op.key, candidate)] = str(exc)
    families: Dict[str, List[Case]] = {}
    for case in cases:
        families.setdefault(case.op.family, []).append(case)
    groups = list(families.values())
    progress = Progress(len(cases) * (settings.rounds + 1), stderr)
    rng = random.Random(seed)
    try:
        for case in cases:
            target = settings.thread_target_s if case.op.threads else settings.target_s
            case.n = calibrate(case.workload, target)
            progress.step(f"calibrate {case.op.title} {LABELS[case.candidate]}")
        for round_no in range(settings.rounds):
            rng.shuffle(groups)
            for group in groups:
                rng.shuffle(group)
                for case in group:
                    elapsed = time_batch(case.workload, case.n)
                    case.samples.append(elapsed * 1e9 / case.workload.ops(case.n))
                    progress.step(f"round {round_no + 1}/{settings.rounds} {case.op.title} "
                                  f"{LABELS[case.candidate]}")
    finally:
        progress.finish()
        for case in cases:
            case.workload.close()
    return cases, missing

