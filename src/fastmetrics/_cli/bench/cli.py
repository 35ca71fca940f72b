"""The ``fastmetrics bench`` command: its arguments and its run.

Contract:

* Prints the table of :mod:`.report` (or, with ``--json``, the same numbers as
  JSON) on stdout; progress, ``--plot``'s note and errors go to stderr.
* pycti's handler is ``--pycti FILE`` or the installed ``pycti``'s
  ``connector/opencti_metric_handler.py``, loaded from that file alone;
  without it the pycti column says so.
* ``--threads-table`` also measures scrape and memory with T threads x S
  series against prometheus_client (:mod:`.scaling`, worker subprocesses,
  minutes) and prints that table after the report; ``--update-docs`` turns
  it on when a file has a ``<!-- bench:threads -->`` block.
* ``--update-docs FILE...`` also rewrites the ``<!-- bench:NAME -->`` blocks
  of those Markdown files from this run (:mod:`.docs`), all or none.  The
  files are checked before anything is measured, and the run must have the
  Cython core and pycti's handler, the peers the docs compare with.
* Exit status: 0 after printing; 2 for bad arguments, ``--plot`` without
  matplotlib, a pycti file that does not load, or ``--update-docs`` files
  whose markers are wrong or which the run cannot fill (argparse's usage and
  ``fastmetrics bench: error: ...``); 130 when interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.metadata
import importlib.util
import json
import os
import shlex
import sys
import time
from datetime import datetime, timezone
from types import ModuleType
from typing import Any, Dict, List, Optional, Sequence

from ... import __version__, implementation
from .._args import number
from . import PROG
from .docs import (
    BENCH_BLOCKS,
    BENCH_PREFIX,
    THREADS_BLOCK,
    MarkerError,
    MissingCase,
    Run,
    check_file,
    render,
    update_file,
)
from .ops import cli_ops
from .report import document, environment, plot, summarize, text, thread_scaling
from .run import DEFAULT, QUICK, run_cases
from .scaling import TABLE_SERIES, TABLE_THREADS, Cell, markdown_table, measure_cell
from .subjects import (
    FM_C,
    PYCTI_NOT_INSTALLED,
    Subjects,
    Unavailable,
    find_pycti_handler_file,
    load_pycti_handler_module,
    pycti_version,
)

DESCRIPTION = ("A quick interleaved benchmark, no pytest needed: ns per call of fastmetrics' Cython core and "
               "pure-Python twin next to the floor (a no-op Python method with the same signature), "
               "prometheus_client and pycti's real OpenCTIMetricHandler, with the ratios between them.")

#: The ``--plot`` error without matplotlib (docs/benchmarks.md quotes it).
PLOT_NEEDS_MATPLOTLIB = ("argument --plot: needs matplotlib, which is not installed "
                         "(pip install 'prometheus-fastmetrics[plot]')")


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add the ``bench`` subcommand; its ``run`` default calls :func:`run` with it."""
    parser = subparsers.add_parser("bench", prog=PROG, description=DESCRIPTION,
                                   help="quick interleaved benchmark: ns/op, x floor, x faster than peers")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK.rounds} shorter rounds instead of {DEFAULT.rounds} (a few seconds)")
    parser.add_argument("--rounds", type=number(int, 1, 10**6), default=None, metavar="N",
                        help="interleaved rounds (the table shows medians over them)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--plot", metavar="FILE.png", help="also draw the comparison (needs matplotlib)")
    parser.add_argument("--pycti", metavar="FILE",
                        help="pycti's connector/opencti_metric_handler.py (default: the installed pycti's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-round shuffle (default: %(default)s)")
    parser.add_argument("--threads-table", action="store_true",
                        help="also measure scrape and memory with T threads x S series against prometheus_client "
                             f"(T in {', '.join(map(str, TABLE_THREADS))}; S in "
                             f"{', '.join(map(str, TABLE_SERIES))}; worker subprocesses, minutes)")
    parser.add_argument("--update-docs", nargs="+", metavar="FILE.md",
                        help="also rewrite the <!-- bench:NAME --> ... <!-- /bench:NAME --> blocks of these "
                             f"Markdown files (NAME: {', '.join(BENCH_BLOCKS)}) with this run's tables and "
                             "how it was made; needs the Cython core and pycti's handler")
    parser.set_defaults(run=functools.partial(run, parser))
    return parser


def _pycti(parser: argparse.ArgumentParser, path: Optional[str]) -> Optional[ModuleType]:
    """pycti's handler module from ``path`` (None: the installed pycti's, if
    any); a file that does not load is a ``parser.error``."""
    if path is None:
        return None
    try:
        return load_pycti_handler_module(path)
    except (ImportError, OSError, SyntaxError) as exc:
        parser.error(f"cannot load pycti's handler from {path}: {exc}")


def _check_docs(parser: argparse.ArgumentParser, paths: Sequence[str], subjects: Subjects,
                pycti_path: Optional[str]) -> bool:
    """Before measuring: every ``--update-docs`` file has valid bench blocks,
    and the run will have what they compare (``parser.error`` otherwise).
    True if one of them has the threads block."""
    names: List[str] = []
    for path in paths:
        try:
            names += check_file(path)
        except (MarkerError, OSError) as exc:
            parser.error(f"argument --update-docs: {exc}")
    if subjects.pycti_module is None:
        parser.error(f"argument --update-docs: the docs compare with pycti's handler, which is not loaded "
                     f"({pycti_path or PYCTI_NOT_INSTALLED}; --pycti FILE: pycti's "
                     "connector/opencti_metric_handler.py)")
    try:
        subjects.core(FM_C)
    except Unavailable as exc:
        parser.error(f"argument --update-docs: the docs show the Cython core, which this run cannot measure: "
                     f"{exc}")
    return THREADS_BLOCK in names


def _threads_table(stderr: Any) -> List[Cell]:
    """Every (T, S) cell of the threads table, in fresh worker subprocesses."""
    cells = []
    for series in TABLE_SERIES:
        for threads in TABLE_THREADS:
            print(f"{PROG}: threads table: T={threads} S={series}", file=stderr, flush=True)
            cells.append(measure_cell(threads, series))
    return cells


def _load_average() -> Optional[float]:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows
        return None


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def command_line(argv: Sequence[str]) -> str:
    """How this run was started, as a shell command (``python -m fastmetrics ...``)."""
    return shlex.join(["python", "-m", "fastmetrics", *argv])


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Run the benchmark for ``args`` parsed by ``parser`` (which reports the
    errors found after parsing); see the module docstring."""
    settings = QUICK if args.quick else DEFAULT
    if args.rounds is not None:
        settings = dataclasses.replace(settings, rounds=args.rounds)
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        parser.error(PLOT_NEEDS_MATPLOTLIB)
    pycti_path = args.pycti or find_pycti_handler_file()
    pycti_module = _pycti(parser, pycti_path)
    subjects = Subjects(pycti_module=pycti_module)
    docs: List[str] = args.update_docs or []
    want_table: bool = args.threads_table
    if docs:
        want_table = _check_docs(parser, docs, subjects, pycti_path) or want_table
    ops = cli_ops()
    started: Dict[str, Any] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average_1min": _load_average(),
    }
    t0 = time.monotonic()
    try:
        cases, missing = run_cases(ops, subjects, settings, sys.stderr, seed=args.seed)
        table = _threads_table(sys.stderr) if want_table else None
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    rows = summarize(cases, ops)
    scaling = thread_scaling(cases)
    env = environment(settings.rounds, pycti_path or PYCTI_NOT_INSTALLED)
    env.update(started, wall_time_s=time.monotonic() - t0, fastmetrics=__version__, implementation=implementation,
               prometheus_client=_version("prometheus_client"),
               pycti_version=pycti_version(pycti_path) if pycti_module is not None and pycti_path else None)
    report = text(env, rows, scaling, missing, pycti_module is not None)
    if table is not None:
        report += ("\nScrape and memory with T threads x S series (fastmetrics vs prometheus_client):\n"
                   + "\n".join(markdown_table(table)) + "\n")
    if args.json:
        doc = document(env, rows, scaling, missing)
        if table is not None:
            doc["threads_table"] = [dict(dataclasses.asdict(cell), scrape_ratio=cell.scrape_ratio,
                                         memory_ratio=cell.memory_ratio) for cell in table]
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(report)
    if args.plot:
        plot(rows, args.plot, f"{PROG}: {env['python_implementation']} {env['python']}, {env['cpus']} CPUs, "
                              f"{env['date']}\nmedian ns/op of {env['rounds']} interleaved rounds")
        print(f"{PROG}: wrote {args.plot}", file=sys.stderr)
    if docs:
        the_run = Run(rows, scaling, report, command_line(getattr(args, "argv", sys.argv[1:])), env, args.plot,
                      table)
        try:
            blocks = render(the_run)
            for path in docs:  # every file checked again before the first is written
                check_file(path)
            changed = [path for path in docs if update_file(path, blocks, BENCH_PREFIX)]
        except (MissingCase, MarkerError, OSError) as exc:
            parser.error(f"argument --update-docs: {exc}")
        for path in docs:
            print(f"{PROG}: {'updated' if path in changed else 'unchanged'} {path}", file=sys.stderr)
    return 0
