"""Ratio gates: bounds on ratios of benchmark medians measured in one run.

A gates file (TOML) holds ``[[gate]]`` tables::

    [[gate]]
    check = "fastmetrics_c.counter.inc / floor.counter.inc <= 1.3"
    why = "Counter.inc() costs at most 1.3x a no-op method call"

``check`` is ``KEY / KEY <= BOUND`` or ``KEY / KEY >= BOUND``.  A KEY names a
benchmark as ``<candidate>.<op>`` (the ``key`` each bench stores in
``extra_info``); its values are seconds per operation.  The suite measures
every benchmark once per interleaved *repetition*, the candidates of one
operation back to back, so the measured ratio is computed per repetition
(median of the numerator's rounds over the median of the denominator's) and
the gate takes the median of those per-repetition ratios: load from the rest
of the machine, which changes between repetitions, cancels out of each ratio.
``A / B <= 1.3`` reads "A costs at most 1.3x B"; for thread rows (wall time /
total ops) ``A.t1 / A.t2 >= 0.9`` reads "2 threads keep >= 0.9x the 1-thread
throughput".

Results: PASS, MISS (the bound does not hold), NOT RUN (a benchmark has no
data in this run).  Nothing here imports pytest.
"""

from __future__ import annotations

import re
import statistics
import sys
from dataclasses import dataclass
from typing import List, Mapping, Optional, Sequence, Tuple

from fastmetrics._cli.bench.report import format_table as _format_table

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.9/3.10
    import tomli as tomllib

_CHECK = re.compile(r"^\s*(?P<num>[A-Za-z0-9_.\-]+)\s*/\s*(?P<den>[A-Za-z0-9_.\-]+)\s*"
                    r"(?P<op><=|>=)\s*(?P<bound>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*$")

PASS, MISS, NOT_RUN = "PASS", "MISS", "NOT RUN"


class GateFileError(ValueError):
    """The gates file is unreadable or malformed (message names the file and gate)."""


@dataclass(frozen=True)
class Gate:
    """``numerator / denominator <op> bound``."""

    numerator: str
    denominator: str
    op: str
    bound: float
    why: str = ""

    @property
    def check(self) -> str:
        return f"{self.numerator} / {self.denominator} {self.op} {self.bound:g}"


@dataclass(frozen=True)
class Outcome:
    gate: Gate
    ratio: Optional[float]
    result: str
    missing: Sequence[str] = ()
    reps: int = 0


def parse_check(text: str, why: str = "") -> Gate:
    """A :class:`Gate` from ``"A / B <= 1.3"``; ``ValueError`` if malformed."""
    match = _CHECK.match(text)
    if match is None:
        raise ValueError(f"bad check {text!r}: expected 'KEY / KEY <= NUMBER' or 'KEY / KEY >= NUMBER'")
    return Gate(match["num"], match["den"], match["op"], float(match["bound"]), why)


def load(path: str) -> List[Gate]:
    """Every gate of the TOML file at ``path``, in file order."""
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise GateFileError(f"{path}: {exc}") from None
    entries = data.get("gate", [])
    if not isinstance(entries, list):
        raise GateFileError(f"{path}: 'gate' must be an array of tables ([[gate]])")
    gates = []
    for i, entry in enumerate(entries, 1):
        if not isinstance(entry, dict) or not isinstance(entry.get("check"), str):
            raise GateFileError(f"{path}: gate #{i} needs a string 'check'")
        try:
            gates.append(parse_check(entry["check"], str(entry.get("why", ""))))
        except ValueError as exc:
            raise GateFileError(f"{path}: gate #{i}: {exc}") from None
    return gates


Reps = Mapping[int, Sequence[float]]  # repetition -> per-op times of one key
Samples = Mapping[str, Reps]  # key -> repetition -> per-op times


def paired_ratio(num: Reps, den: Reps) -> Optional[Tuple[float, int]]:
    """(median over shared repetitions of median(num) / median(den), repetitions)
    or None when no repetition has data for both."""
    ratios = []
    for rep in sorted(set(num) & set(den)):
        if num[rep] and den[rep]:
            bottom = statistics.median(den[rep])
            if bottom > 0:
                ratios.append(statistics.median(num[rep]) / bottom)
    if not ratios:
        return None
    return statistics.median(ratios), len(ratios)


def evaluate(gates: Sequence[Gate], samples: Samples) -> List[Outcome]:
    """Each gate's measured ratio and result on ``samples``."""
    outcomes = []
    for gate in gates:
        paired = paired_ratio(samples.get(gate.numerator, {}), samples.get(gate.denominator, {}))
        if paired is None:
            missing = [k for k in (gate.numerator, gate.denominator) if not any(samples.get(k, {}).values())]
            outcomes.append(Outcome(gate, None, NOT_RUN, missing or [f"{gate.numerator} with {gate.denominator}"]))
            continue
        ratio, reps = paired
        ok = ratio <= gate.bound if gate.op == "<=" else ratio >= gate.bound
        outcomes.append(Outcome(gate, ratio, PASS if ok else MISS, reps=reps))
    return outcomes


def format_table(outcomes: Sequence[Outcome]) -> List[str]:
    """One line per gate: check, measured ratio, bound, result, and why (or what is missing)."""
    rows: List[Tuple[str, ...]] = []
    for o in outcomes:
        measured = "-" if o.ratio is None else f"{o.ratio:.3f}"
        note = ("no data for " + ", ".join(o.missing)) if o.missing else o.gate.why
        rows.append((f"{o.gate.numerator} / {o.gate.denominator}", measured, f"{o.gate.op} {o.gate.bound:g}",
                     o.result, note))
    return _format_table(("gate", "measured", "bound", "result", "why"), rows, "<><<<")
