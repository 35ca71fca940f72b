"""The ``fastmetrics bench`` command: its arguments and its run.

Contract:

* Prints the table of :mod:`.report` (or, with ``--json``, the same numbers as
  JSON) on stdout; progress, ``--plot``'s note and errors go to stderr.
* pycti's handler is ``--pycti FILE`` or the installed ``pycti``'s
  ``connector/opencti_metric_handler.py``, loaded from that file alone;
  without it the pycti column says so.
* Exit status: 0 after printing; 2 for bad arguments, ``--plot`` without
  matplotlib or a pycti file that does not load (argparse's usage and
  ``fastmetrics bench: error: ...``); 130 when interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import json
import sys
from types import ModuleType
from typing import Optional

from .._args import number
from . import PROG
from .ops import cli_ops
from .report import document, environment, plot, summarize, text, thread_scaling
from .run import DEFAULT, QUICK, run_cases
from .subjects import PYCTI_NOT_INSTALLED, Subjects, find_pycti_handler_file, load_pycti_handler_module

DESCRIPTION = ("A quick interleaved benchmark, no pytest needed: ns per call of fastmetrics' Cython core and "
               "pure-Python twin next to the floor (a no-op Python method with the same signature), "
               "prometheus_client and pycti's real OpenCTIMetricHandler, with the ratios between them.")


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


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """Run the benchmark for ``args`` parsed by ``parser`` (which reports the
    errors found after parsing); see the module docstring."""
    settings = QUICK if args.quick else DEFAULT
    if args.rounds is not None:
        settings = dataclasses.replace(settings, rounds=args.rounds)
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        parser.error("argument --plot: needs matplotlib, which is not installed "
                     "(pip install 'prometheus-fastmetrics[plot]')")
    pycti_path = args.pycti or find_pycti_handler_file()
    pycti_module = _pycti(parser, pycti_path)
    ops = cli_ops()
    try:
        cases, missing = run_cases(ops, Subjects(pycti_module=pycti_module), settings, sys.stderr, seed=args.seed)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    rows = summarize(cases, ops)
    scaling = thread_scaling(cases)
    env = environment(settings.rounds, pycti_path or PYCTI_NOT_INSTALLED)
    if args.json:
        json.dump(document(env, rows, scaling, missing), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(text(env, rows, scaling, missing, pycti_module is not None))
    if args.plot:
        plot(rows, args.plot, f"{PROG} ({env['python_implementation']} {env['python']}, median ns/op)")
        print(f"{PROG}: wrote {args.plot}", file=sys.stderr)
    return 0
