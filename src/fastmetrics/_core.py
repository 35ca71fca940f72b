"""Selects the implementation: the Cython extension, or the pure-Python twin
when ``FASTMETRICS_NO_EXTENSIONS`` is on (1/true/yes) or the extension is not built."""

import os

__all__ = ["CounterCore", "EnumCore", "HandlerCore", "core", "implementation", "stats"]


def _extensions_disabled() -> bool:
    return os.environ.get("FASTMETRICS_NO_EXTENSIONS", "").strip().lower() in ("1", "true", "yes", "on")


if not _extensions_disabled():
    try:
        from . import _core_c as core
    except ImportError:  # not compiled on this platform
        from . import _core_py as core
else:
    from . import _core_py as core  # type: ignore[no-redef]

CounterCore, EnumCore, HandlerCore = core.CounterCore, core.EnumCore, core.HandlerCore
implementation, stats = core.implementation, core.stats
