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

Thread-scaling gates (``A.t1 / A.t2 >= X``) measure the machine as much as
the code: on a machine without a free core a second thread cannot add
throughput, whatever the code does.  Such a gate names a ``control``, the
same ratio for a loop with no shared state (private memory), measured in the
same run, with what that control gives when every thread has a core of its
own (``expect``) and the least it must give for the gate to mean anything
(``inconclusive_below``)::

    [[gate]]
    check = "fastmetrics_c.nogil.add.t1 / fastmetrics_c.nogil.add.t2 >= 1.4"
    control = "private.nogil.add.t1 / private.nogil.add.t2"
    expect = 2.0
    inconclusive_below = 1.3

For a ``>=`` gate (it scales), each repetition's ratio is normalised by what
the machine gave the control, ``ratio * expect / min(control, expect)`` (a
control above ``expect`` earns nothing), and the gate takes the median of
those.  A ``<=`` gate (it does not scale: contention) is not normalised: on a
loaded machine the threads rarely run at the same time, so contention
vanishes and the ratio grows with the CPU share that more threads get; no
scaling of the ratio can recover it.  Either way, if the control's median is
below ``inconclusive_below``, the threads did not have a core each, and if
its per-repetition values spread wider than :data:`MAX_CONTROL_SPREAD`
(interquartile range over median), the load changed under the run: either
way the result is INCONCLUSIVE, which never fails a run.

Results: PASS, MISS (the bound does not hold), NOT RUN (a benchmark has no
data in this run), INCONCLUSIVE (the control shows no free core, or
unsteady load).  Nothing
here imports pytest.

:func:`markdown_table` is the gates table of ``docs/benchmarks.md`` (between
``<!-- gates:table -->`` markers); ``python bench/_gates.py --update-docs
docs/benchmarks.md`` writes it there, and ``tests/test_bench_gates.py``
fails while the docs differ from this file.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import statistics
import sys
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from fastmetrics._cli.bench.docs import MarkerError, update_file
from fastmetrics._cli.bench.report import format_table as _format_table

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.9/3.10
    import tomli as tomllib

_KEY = r"[A-Za-z0-9_.\-]+"
_CONTROL = re.compile(rf"^\s*(?P<num>{_KEY})\s*/\s*(?P<den>{_KEY})\s*$")
_CHECK = re.compile(r"^\s*(?P<num>[A-Za-z0-9_.\-]+)\s*/\s*(?P<den>[A-Za-z0-9_.\-]+)\s*"
                    r"(?P<op><=|>=)\s*(?P<bound>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*$")

PASS, MISS, NOT_RUN, INCONCLUSIVE = "PASS", "MISS", "NOT RUN", "INCONCLUSIVE"
RESULTS = (PASS, MISS, NOT_RUN, INCONCLUSIVE)
#: A control whose per-repetition ratios spread wider than this (interquartile
#: range over median) was measured under changing load: its gate is INCONCLUSIVE.
MAX_CONTROL_SPREAD = 0.25


class GateFileError(ValueError):
    """The gates file is unreadable or malformed (message names the file and gate)."""


@dataclass(frozen=True)
class Control:
    """The no-shared-state loop a thread-scaling gate is normalised by."""

    numerator: str
    denominator: str
    expect: float  # the control's ratio with a free core per thread
    inconclusive_below: float  # below this (median), the gate is INCONCLUSIVE


@dataclass(frozen=True)
class Gate:
    """``numerator / denominator <op> bound``, optionally normalised by a :class:`Control`."""

    numerator: str
    denominator: str
    op: str
    bound: float
    why: str = ""
    control: Optional[Control] = None

    @property
    def check(self) -> str:
        return f"{self.numerator} / {self.denominator} {self.op} {self.bound:g}"


@dataclass(frozen=True)
class Outcome:
    gate: Gate
    ratio: Optional[float]  # normalised by the control, if the gate has one
    result: str
    missing: Sequence[str] = ()
    reps: int = 0
    raw: Optional[float] = None  # the ratio before normalisation (gates with a control)
    control: Optional[float] = None  # the control's median ratio
    inconclusive: Optional[str] = None  # why the control makes the gate INCONCLUSIVE


def parse_check(text: str, why: str = "") -> Gate:
    """A :class:`Gate` from ``"A / B <= 1.3"``; ``ValueError`` if malformed."""
    match = _CHECK.match(text)
    if match is None:
        raise ValueError(f"bad check {text!r}: expected 'KEY / KEY <= NUMBER' or 'KEY / KEY >= NUMBER'")
    return Gate(match["num"], match["den"], match["op"], float(match["bound"]), why)


def _control(entry: Mapping[str, object], gate: Gate) -> Optional[Control]:
    """The gate's control from its table (``ValueError`` if malformed)."""
    if "control" not in entry:
        extra = [k for k in ("expect", "inconclusive_below") if k in entry]
        if extra:
            raise ValueError(f"{', '.join(extra)} without a control")
        return None
    text = entry["control"]
    match = _CONTROL.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"bad control {text!r}: expected 'KEY / KEY'")
    numbers = {}
    for key in ("expect", "inconclusive_below"):
        value = entry.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"a control needs a positive number {key} (got {value!r})")
        numbers[key] = float(value)
    if numbers["inconclusive_below"] > numbers["expect"]:
        raise ValueError("inconclusive_below must not exceed expect")
    return Control(match["num"], match["den"], numbers["expect"], numbers["inconclusive_below"])


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
            gate = parse_check(entry["check"], str(entry.get("why", "")))
            gates.append(dataclasses.replace(gate, control=_control(entry, gate)))
        except ValueError as exc:
            raise GateFileError(f"{path}: gate #{i}: {exc}") from None
    return gates


Reps = Mapping[int, Sequence[float]]  # repetition -> per-op times of one key
Samples = Mapping[str, Reps]  # key -> repetition -> per-op times


def rep_ratios(num: Reps, den: Reps) -> Dict[int, float]:
    """repetition -> median(num) / median(den), for the repetitions with data for both."""
    ratios = {}
    for rep in sorted(set(num) & set(den)):
        if num[rep] and den[rep]:
            bottom = statistics.median(den[rep])
            if bottom > 0:
                ratios[rep] = statistics.median(num[rep]) / bottom
    return ratios


def paired_ratio(num: Reps, den: Reps) -> Optional[Tuple[float, int]]:
    """(median over shared repetitions of median(num) / median(den), repetitions)
    or None when no repetition has data for both."""
    ratios = rep_ratios(num, den)
    if not ratios:
        return None
    return statistics.median(ratios.values()), len(ratios)


def _missing(samples: Samples, keys: Sequence[str]) -> List[str]:
    missing = [k for k in keys if not any(samples.get(k, {}).values())]
    return missing or [" with ".join(keys)]


def relative_spread(values: Sequence[float]) -> float:
    """Interquartile range over median (0 for fewer than 2 values)."""
    if len(values) < 2:
        return 0.0
    middle = statistics.median(values)
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return (q3 - q1) / middle if middle > 0 else float("inf")


def _inconclusive(control: Control, values: Sequence[float]) -> Optional[str]:
    """Why the control makes its gate INCONCLUSIVE, or None."""
    middle = statistics.median(values)
    if middle < control.inconclusive_below:
        return f"< {control.inconclusive_below:g}: no free core for a second thread"
    spread = relative_spread(values)
    if spread > MAX_CONTROL_SPREAD:
        return (f"unsteady (interquartile range {spread:.0%} of the median > {MAX_CONTROL_SPREAD:.0%}): "
                "the load changed under the run")
    return None


def evaluate(gates: Sequence[Gate], samples: Samples) -> List[Outcome]:
    """Each gate's measured ratio and result on ``samples``."""
    outcomes = []
    for gate in gates:
        ratios = rep_ratios(samples.get(gate.numerator, {}), samples.get(gate.denominator, {}))
        if not ratios:
            outcomes.append(Outcome(gate, None, NOT_RUN, _missing(samples, (gate.numerator, gate.denominator))))
            continue
        raw = control = None
        inconclusive = None
        if gate.control is not None:
            c = gate.control
            controls = rep_ratios(samples.get(c.numerator, {}), samples.get(c.denominator, {}))
            shared = sorted(set(ratios) & set(controls))
            if not shared:
                outcomes.append(Outcome(gate, None, NOT_RUN, _missing(samples, (c.numerator, c.denominator))))
                continue
            raw = statistics.median(ratios[rep] for rep in shared)
            control = statistics.median(controls[rep] for rep in shared)
            inconclusive = _inconclusive(c, [controls[rep] for rep in shared])
            if gate.op == ">=":
                ratios = {rep: ratios[rep] * c.expect / min(controls[rep], c.expect) for rep in shared}
            else:
                ratios = {rep: ratios[rep] for rep in shared}
        ratio = statistics.median(ratios.values())
        if inconclusive:
            result = INCONCLUSIVE
        elif ratio <= gate.bound if gate.op == "<=" else ratio >= gate.bound:
            result = PASS
        else:
            result = MISS
        outcomes.append(Outcome(gate, ratio, result, reps=len(ratios), raw=raw, control=control,
                                inconclusive=inconclusive))
    return outcomes


def _note(o: Outcome) -> str:
    if o.missing:
        return "no data for " + ", ".join(o.missing)
    c = o.gate.control
    if c is None or o.control is None:
        return o.gate.why
    measured = f"raw {o.raw:.3f}, control {o.control:.3f} (expect {c.expect:g})"
    if o.inconclusive:
        return f"{measured}: control {o.inconclusive}; not measurable here"
    return f"{measured}; {o.gate.why}"


def format_table(outcomes: Sequence[Outcome]) -> List[str]:
    """One line per gate: check, measured ratio (normalised, for a gate with a
    control), bound, result, and why (or what is missing; for a gate with a
    control, the raw ratio and the control's first)."""
    rows: List[Tuple[str, ...]] = []
    for o in outcomes:
        measured = "-" if o.ratio is None else f"{o.ratio:.3f}"
        rows.append((f"{o.gate.numerator} / {o.gate.denominator}", measured, f"{o.gate.op} {o.gate.bound:g}",
                     o.result, _note(o)))
    return _format_table(("gate", "measured", "bound", "result", "why"), rows, "<><<<")


# -- the docs' gates table --------------------------------------------------------

#: The block of ``docs/benchmarks.md`` that :func:`markdown_table` fills.
DOCS_PREFIX, DOCS_BLOCK = "gates", "table"
DEFAULT_GATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gates.toml")


def markdown_table(gates: Sequence[Gate]) -> str:
    """Every gate as a Markdown table row: ratio, bound, control, why."""
    rows = []
    for gate in gates:
        c = gate.control
        control = "" if c is None else (f"`{c.numerator} / {c.denominator}`: expect {c.expect:g}, "
                                        f"INCONCLUSIVE below {c.inconclusive_below:g}")
        rows.append((f"`{gate.numerator} / {gate.denominator}`", f"{gate.op} {gate.bound:g}", control, gate.why))
    return "\n".join(_format_table(("ratio", "bound", "control", "why"), rows, "<<<<", markdown=True)) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python bench/_gates.py [--gates FILE] --update-docs DOC.md...``: write
    :func:`markdown_table` into the ``<!-- gates:table -->`` block of each DOC."""
    parser = argparse.ArgumentParser(prog="bench/_gates.py", description=main.__doc__)
    parser.add_argument("--gates", default=DEFAULT_GATES, help="the gates file (default: bench/gates.toml)")
    parser.add_argument("--update-docs", nargs="+", required=True, metavar="DOC.md")
    args = parser.parse_args(argv)
    try:
        table = markdown_table(load(args.gates))
        for path in args.update_docs:
            changed = update_file(path, {DOCS_BLOCK: table}, DOCS_PREFIX)
            print(f"{'updated' if changed else 'unchanged'} {path}")
    except (GateFileError, MarkerError, OSError) as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
