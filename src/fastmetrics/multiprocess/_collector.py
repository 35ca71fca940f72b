"""The exporter's side: :class:`MultiProcessCollector` and the families it serves."""

from __future__ import annotations

import logging
import os
import threading
from typing import Dict, Iterator, List, Optional, Set, Tuple

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample

from ._compact import compact
from ._directory import ENUM_MODES, ENV_DIR, Skipped, Snapshot, read_directory
from ._locks import HAVE_FLOCK
from ._shared import reader_for

log = logging.getLogger(__package__)


class MultiProcessCollector(Collector):
    """Folds every process file in a directory into one set of families.

    Register it in a fresh ``CollectorRegistry`` (the default registry holds
    this process's own values) and serve that registry with any exporter::

        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        start_http_server(8000, registry=registry)

    Counters are summed over all processes, exited ones included.  Enums are
    exposed per live process with a ``pid`` label (``enum_mode="pid"``), or as
    the state set most recently in any process (``"mostrecent"``, by wall
    clock, exited processes included).  Unless ``compact=False``, each scrape
    first folds the files of exited processes into the archive, reusing what
    earlier scrapes parsed of them (only their counts are read again).
    Collectors of one directory share what they parsed (:mod:`._shared`), so
    a new collector per request (prometheus_client's pattern) re-parses
    nothing that a previous scrape already read.  Whatever the
    directory holds, a scrape does not raise: what cannot be read (invalid
    files, single invalid series, copies, entries that are not regular files,
    a lock that cannot be taken) is skipped, logged once, and listed in
    ``skipped``.  Thread-safe; a scrape is O(files + series).
    """

    def __init__(self, registry: Optional[CollectorRegistry], path: Optional[str] = None, *,
                 enum_mode: str = "pid", compact: bool = True) -> None:
        path = path or os.environ.get(ENV_DIR)
        if not path or not os.path.isdir(path):
            raise ValueError(f"env {ENV_DIR} is not set or not a directory")
        if enum_mode not in ENUM_MODES:
            raise ValueError(f"enum_mode must be one of {ENUM_MODES}, not {enum_mode!r}")
        if not HAVE_FLOCK:
            raise NotImplementedError("fastmetrics multiprocess mode needs POSIX (fcntl.flock)")
        self._path = path
        self._enum_mode = enum_mode
        self._compact = compact
        self._reported: Set[Tuple[str, str]] = set()
        self._lock = threading.Lock()   # one scrape at a time updates skipped / _reported
        self.skipped: Skipped = []
        if registry:
            registry.register(self)

    def collect(self) -> Iterator[Metric]:
        reader, reader_lock = reader_for(self._path)
        with self._lock, reader_lock:
            skipped: Skipped = []
            if self._compact:
                try:
                    skipped += compact(self._path, blocking=False, reader=reader).skipped
                except OSError as e:   # e.g. a read-only directory: still serve what is there
                    skipped.append((self._path, f"compaction failed: {e}"))
            snapshot = read_directory(self._path, self._enum_mode, reader)
            self.skipped = list(dict.fromkeys(skipped + snapshot.skipped))   # both may report a copy
            for item in self.skipped:
                if item not in self._reported:
                    self._reported.add(item)
                    log.warning("fastmetrics: skipped %s: %s", *item)
        return iter(_families(snapshot))


def _families(snapshot: Snapshot) -> List[Metric]:
    """The families of ``snapshot``, sorted by name, series sorted, empty
    ones left out: a counter's ``_total`` sample per series; an enum's one
    sample per state (1 for the current one), with a ``pid`` label per
    process in ``pid`` mode."""
    by_name: Dict[str, Metric] = {}
    for name in sorted(snapshot.families):
        meta = snapshot.families[name]
        by_name[name] = Metric(name, meta.doc, meta.type, meta.unit)
    for (name, values), value in sorted(snapshot.counters.items()):
        meta = snapshot.families[name]
        by_name[name].samples.append(Sample(name + "_total", dict(zip(meta.labelnames, values)), value, None, None))
    for ((name, values), pid), enum in sorted(snapshot.enums.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        meta = snapshot.families[name]
        labels = dict(zip(meta.labelnames, values))
        if pid is not None:
            labels["pid"] = str(pid)
        for i, state in enumerate(meta.states):
            by_name[name].samples.append(Sample(name, dict(labels, **{name: state}), 1 if i == enum.index else 0,
                                                None, None))
    return [m for m in by_name.values() if m.samples]
