"""Selects the implementation: the Cython extension, or the pure-Python twin
when ``FASTMETRICS_NO_EXTENSIONS`` is on (1/true/yes) or the extension is not built."""

import os

__all__ = ["CounterCore", "EnumCore", "HandlerCore", "implementation", "stats"]


def _extensions_disabled() -> bool:
    return os.environ.get("FASTMETRICS_NO_EXTENSIONS", "").strip().lower() in ("1", "true", "yes", "on")


if not _extensions_disabled():
    try:
        from ._core_c import CounterCore, EnumCore, HandlerCore, implementation, stats
    except ImportError:  # not compiled on this platform
        from ._core_py import CounterCore, EnumCore, HandlerCore, implementation, stats
else:
    from ._core_py import CounterCore, EnumCore, HandlerCore, implementation, stats
