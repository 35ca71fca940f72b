"""``python -m fastmetrics``: the command line of :mod:`fastmetrics._cli`."""
from fastmetrics._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
