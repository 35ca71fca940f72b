"""fastmetrics: lock-free, per-thread sharded Prometheus counters and enums.

Drop-in for ``prometheus_client.Counter`` / ``Enum`` and for pycti's
``OpenCTIMetricHandler``; every prometheus_client exporter works unchanged.
"""

from ._core import implementation
from ._version import __version__
from .metrics import Counter, Enum, disable_created_metrics, enable_created_metrics, shard_stats
from .opencti import OpenCTIMetricHandler

__all__ = [
    "Counter",
    "Enum",
    "OpenCTIMetricHandler",
    "__version__",
    "disable_created_metrics",
    "enable_created_metrics",
    "get_include",
    "implementation",
    "shard_stats",
]


def get_include() -> str:
    """Directory holding ``_core_c.pxd`` (for ``include_path`` in a user's ``cythonize``)."""
    import os

    return os.path.dirname(os.path.abspath(__file__))
