"""fastmetrics: lock-free, per-thread sharded Prometheus counters and enums.

Drop-in for ``prometheus_client.Counter`` / ``Enum`` and for pycti's
``OpenCTIMetricHandler``; every prometheus_client exporter works unchanged.
"""

from ._core import implementation
from ._version import __version__
from .metrics import Counter, Enum, disable_created_metrics, enable_created_metrics, shard_stats
from .multiprocess import _enable_from_environment
from .multiprocess._prometheus import enable_from_environment as _enable_prometheus_from_environment
from .opencti import OpenCTIMetricHandler

# Before any metric exists: PROMETHEUS_MULTIPROC_DIR (prometheus_client's files;
# refuses to run with the other variable set), then FASTMETRICS_MULTIPROC_DIR.
_enable_prometheus_from_environment()
_enable_from_environment()

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
    """Directory to put in ``include_path`` of a user's ``cythonize`` so that
    ``from fastmetrics._core_c cimport CounterCore, counter_add`` finds
    ``fastmetrics/_core_c.pxd``: the directory *containing* the package."""
    import os

    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
