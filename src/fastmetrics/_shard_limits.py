"""How many counter shards the store may have: the bound that keeps memory and
scrape cost proportional to cores, not threads (both cores read it at import).

- ``exclusive``: shards owned by one live thread at a time (store-only
  increments): ``FASTMETRICS_EXCLUSIVE_SHARDS`` if set, else 2 x the CPUs this
  process may run on, at least 4;
- ``stripes``: shards shared (CAS increments) by the threads beyond those:
  max(2, CPUs).

CPUs are ``os.sched_getaffinity`` where it exists (containers, taskset), else
``os.cpu_count()``.  A bad ``FASTMETRICS_EXCLUSIVE_SHARDS`` is a ``ValueError``
at import that names the variable (never silently ignored).  Pure function of
the environment; thread-safe.
"""

from __future__ import annotations

import os
from typing import Mapping, NamedTuple, Optional

ENV_EXCLUSIVE = "FASTMETRICS_EXCLUSIVE_SHARDS"
#: The store's bound of either count (``FM_MAX_SHARD_KINDS`` in ``_shards.h``).
MAX_SHARDS = 4096


class ShardLimits(NamedTuple):
    exclusive: int
    stripes: int


def cpus() -> int:
    """CPUs this process may run on (at least 1)."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    if getaffinity is not None:
        try:
            return max(1, len(getaffinity(0)))
        except OSError:
            pass
    return max(1, os.cpu_count() or 1)


def shard_limits(environ: Optional[Mapping[str, str]] = None, cpu_count: Optional[int] = None) -> ShardLimits:
    """The bounds for this environment (see the module docstring)."""
    env = os.environ if environ is None else environ
    n = cpus() if cpu_count is None else cpu_count
    stripes = min(MAX_SHARDS, max(2, n))
    raw = env.get(ENV_EXCLUSIVE, "").strip()
    if not raw:
        return ShardLimits(min(MAX_SHARDS, max(4, 2 * n)), stripes)
    try:
        exclusive = int(raw)
    except ValueError:
        exclusive = 0
    if not 1 <= exclusive <= MAX_SHARDS:
        raise ValueError(f"{ENV_EXCLUSIVE}={raw!r}: expected an integer from 1 to {MAX_SHARDS} "
                         "(exclusive counter shards; unset for 2 x CPUs)")
    return ShardLimits(exclusive, stripes)
