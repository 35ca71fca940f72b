"""Instruction counts of the hot paths: deterministic, immune to machine load.

Each operation is measured in the interpreter under test, run under
callgrind (``valgrind --tool=callgrind``), as ``(Ir(n2) - Ir(n1)) / (ops(n2)
- ops(n1))``: the instructions of ``n2`` rounds of the compiled loop minus
those of ``n1`` rounds, per operation, so start-up, imports and the loop's
set-up cancel.  One process measures every case: the probe calls
:data:`MARKER` (``os.getppid``) between segments and callgrind dumps its
counters each time it is entered (``--dump-before``), so each dump holds
exactly one segment.  ``PYTHONHASHSEED=0``; the loop is the bench command's
(:func:`fastmetrics._cli.bench.timing.compile_loop`, unrolled 20 times, the
subject a fast local), warmed up first so that CPython 3.11+ has specialised
its bytecode.

Candidates and subjects are the bench command's (:mod:`.subjects`), except
that activated handlers start no HTTP server here (a server thread waking up
would add instructions to whatever segment it lands in).

Also measured outside callgrind: bytes per labelled child (``memory``
cases): Python-heap bytes traced by ``tracemalloc`` while ``CHILDREN``
children are created, plus, for fastmetrics, the 8-byte shard word of each
slot those children took (``_core.stats()["slots_used"]``; C memory that
``tracemalloc`` cannot see), per child.

Contract: :func:`measure` returns ``{"<candidate>.<op>": instructions per
operation}`` (and ``"<candidate>.child.bytes"``), raising
:class:`ProbeError` with the probe's output if the interpreter or valgrind
fails.  Nothing here imports pytest.
"""

from __future__ import annotations

import argparse
import gc
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import tracemalloc
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .docs import update_file
from .subjects import FLOOR, FM_C, FM_PY, PROM, PYCTI, FloorMetric, NullLogger, Subjects, load_pycti_handler_module

#: The function whose every call makes callgrind dump its counters.
MARKER = "os_getppid"
#: Loop rounds of the two measured segments (each round runs ``unroll`` statements).
N1, N2 = 50, 250
#: Warm-up rounds before the first segment (specialisation needs a few dozen executions).
WARMUP = 20
#: Children created per round by the child-creation cases, and by the memory cases.
CHILDREN = 2000
_MODULE = "fastmetrics._cli.bench.instructions"
#: The marker prefix of the generated table in README.md (``--update-docs``).
DOCS_PREFIX = "instructions"


@dataclass(frozen=True)
class IrOp:
    """One operation measured in instructions: ``stmt`` on the subject ``o``."""

    key: str
    title: str
    stmt: str
    subject: str          # a Subjects method name (or an extra one below)
    candidates: Tuple[str, ...]
    unroll: int = 20


_METRIC = (FLOOR, FM_C, PROM)
_HANDLER = (FLOOR, FM_C, PYCTI)

#: The operations, in table order.
IR_OPS: Tuple[IrOp, ...] = (
    IrOp("counter.inc", "Counter.inc()", "o.inc()", "counter", _METRIC),
    IrOp("child.inc", "child.inc()", "o.inc()", "child", _METRIC),
    IrOp("enum.state", "Enum.state(s)", "o.state('running')", "enum", _METRIC),
    IrOp("labels.inc", "labels('x').inc()", "o.labels('x').inc()", "parent", _METRIC),
    IrOp("labels_kw.inc", "labels(kind='x').inc()", "o.labels(kind='x').inc()", "parent", _METRIC),
    IrOp("labels_kw2.inc", "labels(kind=, source=).inc()", "o.labels(kind='x', source='y').inc()", "parent2",
         _METRIC),
    IrOp("handler.inc", "handler.inc(name)", "o.inc('bundle_send')", "handler", _HANDLER),
    IrOp("handler.state", "handler.state(s)", "o.state('running')", "handler", _HANDLER),
    # A labels() miss: each statement creates a new child (values from an iterator).
    IrOp("child.create", "labels(new).inc()", "o.labels(next(v)).inc()", "parent", (FM_C, PROM), unroll=1),
)


class ProbeError(RuntimeError):
    """The probe interpreter (or valgrind) failed; the message has its output."""


# -- inside the measured interpreter ----------------------------------------------------


_handlers: Dict[str, Any] = {}   # one per candidate: they register in the default REGISTRY


def _subject(subjects: Any, name: str, candidate: str) -> Any:

    if name == "parent2":
        if candidate == FLOOR:
            return FloorMetric()
        counter_cls, _ = subjects.classes(candidate)
        from prometheus_client import CollectorRegistry

        parent = counter_cls("bench_events2", "Events.", ["kind", "source"], registry=CollectorRegistry())
        parent.labels("x", "y")
        return parent
    if name == "handler":
        if candidate not in _handlers:
            _handlers[candidate] = _handler(subjects, candidate)
        return _handlers[candidate]
    return getattr(subjects, name)(candidate)


def _handler(subjects: Any, candidate: str) -> Any:
    """An activated handler of ``candidate`` whose constructor starts no HTTP
    server (its module's ``start_http_server`` is a no-op meanwhile)."""

    if candidate == FLOOR:
        return subjects.handler(FLOOR, True)
    cls = subjects._handler_class(candidate)
    module: Any = subjects.pycti_module if candidate == PYCTI else sys.modules[cls.__module__]
    saved = module.start_http_server
    module.start_http_server = lambda *args, **kwargs: None
    try:
        namespace, subsystem = f"bench_{candidate}", "connector"
        if candidate == PYCTI:
            return cls(NullLogger(), True, namespace, subsystem, 0)
        return cls(NullLogger(), True, namespace, subsystem, 0, addr="127.0.0.1")
    finally:
        module.start_http_server = saved


def _probe_subjects(pycti_file: Optional[str]) -> Any:

    subjects = Subjects()
    if pycti_file:
        subjects.pycti_module = load_pycti_handler_module(pycti_file)
    return subjects


def _probe(cases: Sequence[Tuple[str, str]], pycti_file: Optional[str]) -> None:
    """Run ``cases`` ((candidate, op key)) between markers: warm-up, marker,
    ``N1`` rounds, marker, ``N2`` rounds, marker."""
    from .timing import compile_loop

    ops = {op.key: op for op in IR_OPS}
    subjects = _probe_subjects(pycti_file)
    marker: Callable[[], int] = os.getppid
    for candidate, key in cases:
        op = ops[key]
        bindings: Dict[str, Any] = {"o": _subject(subjects, op.subject, candidate)}
        if "next(v)" in op.stmt:
            total = (WARMUP + N1 + N2) * op.unroll
            bindings["v"] = iter([f"v{i}" for i in range(total)])
        loop = compile_loop(op.stmt, bindings, op.unroll)
        gc.collect()
        gc.disable()
        loop.run(WARMUP)
        marker()
        loop.run(N1)
        marker()
        loop.run(N2)
        marker()
        gc.enable()


def _memory(candidate: str) -> float:
    """Bytes per labelled child created by ``labels(new)`` (see the module docstring)."""
    subjects = _probe_subjects(None)
    parent = subjects.parent(candidate)
    values = [f"v{i}" for i in range(CHILDREN)]
    core = subjects.core(candidate) if candidate in (FM_C, FM_PY) else None
    slots_before = core.stats()["slots_used"] if core is not None else 0
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for value in values:
        parent.labels(value)
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    words = 8 * (core.stats()["slots_used"] - slots_before) if core is not None else 0
    return (traced + words) / CHILDREN


# -- the driver ---------------------------------------------------------------------------------


def cases_for(candidates: Sequence[str]) -> List[Tuple[str, str]]:
    """Every (candidate, op key) of :data:`IR_OPS` among ``candidates``."""
    return [(c, op.key) for op in IR_OPS for c in op.candidates if c in candidates]


def _run(cmd: Sequence[str], env: Dict[str, str]) -> str:
    proc = subprocess.run(list(cmd), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          check=False)
    if proc.returncode != 0:
        raise ProbeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-4000:]}")
    return proc.stdout


def _dump_totals(prefix: str) -> List[int]:
    """The ``totals:`` of each numbered callgrind dump ``prefix.N``, in order."""
    files = sorted(glob.glob(prefix + ".*"), key=lambda p: int(p.rsplit(".", 1)[1]))
    totals = []
    for path in files:
        with open(path) as fh:
            match = re.search(r"^(?:totals|summary): (\d+)", fh.read(), re.M)
        if match is None:
            raise ProbeError(f"no totals in {path}")
        totals.append(int(match[1]))
    return totals


def measure(python: str, candidates: Sequence[str] = (FLOOR, FM_C, PROM, PYCTI), *,
            pycti_file: Optional[str] = None, valgrind: str = "valgrind") -> Dict[str, float]:
    """Instructions per operation of every case, and bytes per child, in ``python``
    (an interpreter with fastmetrics and prometheus_client installed)."""
    if PYCTI in candidates and not pycti_file:
        candidates = [c for c in candidates if c != PYCTI]
    cases = cases_for(candidates)
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1")
    env.pop("FASTMETRICS_NO_EXTENSIONS", None)
    results: Dict[str, float] = {}
    ops = {op.key: op for op in IR_OPS}
    with tempfile.TemporaryDirectory(prefix="fm-ir-") as tmp:
        prefix = os.path.join(tmp, "cg")
        cmd = [valgrind, "--tool=callgrind", f"--callgrind-out-file={prefix}", f"--dump-before={MARKER}",
               python, "-m", _MODULE, "--probe", json.dumps(cases)]
        if pycti_file:
            cmd += ["--pycti", pycti_file]
        _run(cmd, env)
        totals = _dump_totals(prefix)
        if len(totals) < 3 * len(cases):
            raise ProbeError(f"expected {3 * len(cases)} callgrind dumps, got {len(totals)}")
        for i, (candidate, key) in enumerate(cases):
            seg1, seg2 = totals[3 * i + 1], totals[3 * i + 2]   # dumps at the 2nd and 3rd markers
            results[f"{candidate}.{key}"] = (seg2 - seg1) / ((N2 - N1) * ops[key].unroll)
    for candidate in (FM_C, PROM):
        if candidate in candidates:
            out = _run([python, "-m", _MODULE, "--memory", candidate], env)
            results[f"{candidate}.child.bytes"] = float(out.split()[-1])
    return results


def version_of(python: str) -> str:
    """``"3.12"`` for the interpreter at ``python`` (with ``t`` when free-threaded)."""
    code = ("import sys, sysconfig; v = sys.version_info; "
            "print(f'{v[0]}.{v[1]}' + ('t' if sysconfig.get_config_var('Py_GIL_DISABLED') else ''))")
    return subprocess.run([python, "-c", code], stdout=subprocess.PIPE, text=True, check=True).stdout.strip()


def table(rows: Dict[str, Dict[str, float]]) -> List[str]:
    """Markdown table, one row per interpreter (``rows``: version -> :func:`measure` results)."""
    def ratio(r: Dict[str, float], a: str, b: str) -> str:
        return f"{r[a] / r[b]:.2f}" if a in r and b in r and r[b] else "n/a"

    head = ["CPython", "inc()/floor", "child inc()/floor", "state()/floor", "labels('x').inc()/floor",
            "labels(kind=).inc()/floor", "labels(2 kw).inc()/floor", "handler inc()/floor",
            "handler state()/floor", "prometheus_client/ours inc()", "pycti/ours handler inc()",
            "child creation ours/prometheus_client (Ir)", "bytes per child ours/prometheus_client"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for version, r in rows.items():
        cells = [version]
        for op in ("counter.inc", "child.inc", "enum.state", "labels.inc", "labels_kw.inc", "labels_kw2.inc",
                   "handler.inc", "handler.state"):
            cells.append(ratio(r, f"{FM_C}.{op}", f"{FLOOR}.{op}"))
        cells.append(ratio(r, f"{PROM}.counter.inc", f"{FM_C}.counter.inc"))
        cells.append(ratio(r, f"{PYCTI}.handler.inc", f"{FM_C}.handler.inc"))
        create = f"{r.get(FM_C + '.child.create', 0):.0f} / {r.get(PROM + '.child.create', 0):.0f}"
        size = f"{r.get(FM_C + '.child.bytes', 0):.0f} / {r.get(PROM + '.child.bytes', 0):.0f}"
        cells += [create, size]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastmetrics._cli.bench.instructions",
                                     description="Instruction counts (callgrind) of fastmetrics' hot paths.")
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    parser.add_argument("--memory", help=argparse.SUPPRESS)
    parser.add_argument("--pycti", metavar="FILE", help="pycti's opencti_metric_handler.py (else no pycti column)")
    parser.add_argument("--python", action="append", default=[], metavar="EXE",
                        help="an interpreter with fastmetrics installed (repeatable; default: this one)")
    parser.add_argument("--json", action="store_true", help="print the raw numbers as JSON")
    parser.add_argument("--update-docs", nargs="+", default=[], metavar="FILE",
                        help=f"also rewrite the <!-- {DOCS_PREFIX}:table --> block of these Markdown files")
    args = parser.parse_args(argv)
    if args.probe is not None:
        _probe([tuple(c) for c in json.loads(args.probe)], args.pycti)
        return 0
    if args.memory is not None:
        print(f"{_memory(args.memory):.1f}")
        return 0
    rows = {}
    for python in args.python or [sys.executable]:
        rows[version_of(python)] = measure(python, pycti_file=args.pycti)
    print(json.dumps(rows, indent=1) if args.json else "\n".join(table(rows)))
    for path in args.update_docs:
        update_file(path, {"table": "\n".join(table(rows))}, DOCS_PREFIX)
    return 0


if __name__ == "__main__":
    sys.exit(main())
