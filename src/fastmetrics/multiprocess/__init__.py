"""Multiprocess mode: every process's shards in its own memory-mapped file.

Turn it on before any metric exists, with ``FASTMETRICS_MULTIPROC_DIR`` set
when :mod:`fastmetrics` is imported, or with :func:`enable`.  From then on the
shard store takes its chunks from ``<dir>/<pid>-<uid>.fm`` instead of the
heap: an increment is the same single-writer store as in-process, into shared
memory (no lock, no syscall, no pid check).  Each metric value's name, help
and labels are written to the file when it is created, so any process can fold
the directory with :class:`MultiProcessCollector` without declaring a metric.

A forked child (``multiprocessing`` fork/forkserver, pre-fork servers) gets a
file of its own from an ``os.register_at_fork`` hook and starts from zero; its
parent's counts stay in the parent's file.  A spawned child inherits the
directory through the environment variable (:func:`enable` sets it).

A process holds an exclusive ``flock`` on its file while it lives; the kernel
drops it when the process exits, however it exits (SIGKILL included).  That is
how :func:`compact` knows which files belong to exited processes: it folds
them into ``archive.fm`` and deletes them, so the directory stays as large as
the number of live processes.  POSIX only (``fcntl.flock``).

Modules, one job each: ``_format`` (the on-disk layout), ``_locks`` (the
flocks and the liveness probe), ``_reader`` (one file; ``_plan``: its
counts' words, read in bulk; ``_segments``: one walk for the records files
have in common), ``_shared`` (the
readers the collectors of a directory share), ``_reaper`` (closing released
files off the request path), ``_fold`` (the fold
shared by scrape and compaction), ``_directory`` (a directory's entries and
the scrape's read), ``_compact``, ``_collector`` (exposition), ``_writer``
(this process's file, the metadata recorder, :func:`enable`).

``_prometheus`` is the other multiprocess mode, turned on by
``PROMETHEUS_MULTIPROC_DIR``: metrics written to prometheus_client's own
files for its ``MultiProcessCollector`` (the store is ``_promfile.h`` /
``fastmetrics._promfile_py``).  Setting both variables is an error.
"""

from ._collector import MultiProcessCollector
from ._compact import CompactionResult, compact
from ._directory import ENUM_MODES, ENV_DIR, Snapshot, read_directory
from ._format import EnumValue, Meta, SeriesKey
from ._writer import DEFAULT_CAPACITY, ENV_CAPACITY, MAX_CAPACITY, directory, enable
from ._writer import _enable_from_environment as _enable_from_environment   # for fastmetrics/__init__.py

__all__ = [
    "DEFAULT_CAPACITY",
    "ENUM_MODES",
    "ENV_CAPACITY",
    "ENV_DIR",
    "MAX_CAPACITY",
    "CompactionResult",
    "EnumValue",
    "Meta",
    "MultiProcessCollector",
    "SeriesKey",
    "Snapshot",
    "compact",
    "directory",
    "enable",
    "read_directory",
]
