"""``python -m fastmetrics {demo,bench} ...`` (also the ``fastmetrics`` script)."""

from __future__ import annotations

import importlib
import sys
from typing import List, Optional

_COMMANDS = {
    "demo": ("fastmetrics._demo", "run a simulated OpenCTI connector with live metrics"),
    "bench": ("fastmetrics._bench", "quick interleaved benchmark: ns/op, x floor, x faster than peers"),
}


def main(argv: Optional[List[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in _COMMANDS:
        out = sys.stdout if args and args[0] in ("-h", "--help") else sys.stderr
        out.write("usage: python -m fastmetrics {%s} [options]\n\n" % ",".join(_COMMANDS))
        for name, (_, summary) in _COMMANDS.items():
            out.write(f"  {name:6s} {summary}\n")
        if args and args[0] not in ("-h", "--help"):
            out.write(f"\nerror: unknown command {args[0]!r}\n")
        return 0 if out is sys.stdout else 2
    module = importlib.import_module(_COMMANDS[args[0]][0])
    return int(module.main(args[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
