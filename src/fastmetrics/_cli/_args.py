"""argparse pieces shared by the subcommands."""

from __future__ import annotations

import argparse
from typing import Callable, TypeVar

N = TypeVar("N", int, float)


def number(kind: Callable[[str], N], low: N, high: N, *, above_low: bool = False) -> Callable[[str], N]:
    """An argparse ``type``: ``kind(text)`` within ``[low, high]`` (``(low,
    high]`` with ``above_low``; both finite).  A value out of range, NaN or
    infinite, is rejected with a message that states the whole range, the same for every
    such value (``argument --x: must be ...``); text that ``kind`` cannot parse
    is argparse's ``invalid <kind> value``."""
    bounds = f"> {low:g} and <= {high:g}" if above_low else f"between {low:g} and {high:g}"

    def parse(text: str) -> N:
        value = kind(text)  # ValueError: argparse says "invalid <kind> value: 'text'"
        inside = (low < value if above_low else low <= value) and value <= high  # False for NaN
        if not inside:
            raise argparse.ArgumentTypeError(f"must be {bounds}, not {text!r}")
        return value

    parse.__name__ = getattr(kind, "__name__", "number")  # the <kind> in argparse's "invalid" message
    return parse
