"""The ``fastmetrics`` command (also ``python -m fastmetrics``): ``demo`` and ``bench``.

Contract: :func:`main` parses ``argv`` with argparse subparsers and returns
the exit status: the subcommand's; 0 for ``--help`` and ``--version`` (which
prints ``fastmetrics <version> (<implementation>)``); 2 for a bad command
line, with argparse's usage and ``<prog>: error: ...`` on stderr, where
``<prog>`` is the subcommand's (``fastmetrics demo``) once one was named.
"""

from __future__ import annotations

import argparse
import sys
from typing import Dict, Optional, Sequence, Tuple

from .. import __version__, implementation
from .bench import cli as bench_cli
from .demo import cli as demo_cli

PROG = "fastmetrics"


def build_parser() -> Tuple[argparse.ArgumentParser, Dict[str, argparse.ArgumentParser]]:
    """The top-level parser and each subcommand's parser, by name."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Lock-free Prometheus counters and a fast OpenCTI metrics handler: tools.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__} ({implementation})")
    subparsers = parser.add_subparsers(dest="command", required=True)
    commands = {name: module.add_parser(subparsers) for name, module in (("demo", demo_cli), ("bench", bench_cli))}
    return parser, commands


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``fastmetrics ARGV`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser, commands = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # reported by the subcommand's parser, with its usage
            commands[args.command].error("unrecognized arguments: " + " ".join(extra))
        args.argv = list(sys.argv[1:] if argv is None else argv)  # the command line, as run (bench's provenance)
        return int(args.run(args))
    except SystemExit as exc:  # argparse: --help, --version, a usage error
        return 0 if exc.code is None else int(exc.code)
