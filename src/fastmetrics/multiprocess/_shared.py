"""Readers shared by every collector of a directory, for the process's life.

prometheus_client's documented pattern builds a new ``MultiProcessCollector``
per request.  A :class:`~._reader.Reader` remembers what it already walked
of each file (files are append-only: records below ``used`` never change;
a file whose header bytes change is walked again), so sharing one per
directory makes a fresh collector's scrape cost what a long-lived one's does:
the counts, plus a walk of what was appended.

Contract: :func:`reader_for` returns the ``(reader, lock)`` of a directory,
identified by its real path, device and inode (a directory recreated at the
same path gets a new one); the caller holds ``lock`` while it uses
``reader`` (a Reader is not thread-safe).  At most :data:`MAX_DIRECTORIES`
directories are remembered, least recently used first out; an evicted reader
is closed (its mappings and descriptors released) under its lock, and stays
usable by a collector that still holds it.  Thread-safe.  A fork child
starts with no shared reader (another thread of the parent may have held a
lock at fork; the child's collectors read afresh).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Tuple

from ._reader import Reader

MAX_DIRECTORIES = 8

_DirKey = Tuple[str, int, int]
_readers: OrderedDict[_DirKey, Tuple[Reader, threading.Lock]] = OrderedDict()
_registry_lock = threading.Lock()


def reader_for(path: str) -> Tuple[Reader, threading.Lock]:
    """The shared reader of directory ``path`` and the lock that serialises
    its use; ``OSError`` if the directory cannot be stat'ed."""
    real = os.path.realpath(path)
    st = os.stat(real)
    key = (real, st.st_dev, st.st_ino)
    evicted = []
    with _registry_lock:
        entry = _readers.get(key)
        if entry is None:
            entry = _readers[key] = (Reader(), threading.Lock())
            while len(_readers) > MAX_DIRECTORIES:
                evicted.append(_readers.popitem(last=False)[1])
        else:
            _readers.move_to_end(key)
    for reader, lock in evicted:
        with lock:
            reader.close()
    return entry


def _forget_in_child() -> None:
    """After fork, in the child: new locks, no readers (the parent's copies
    are dropped, never closed under a lock that may be held)."""
    global _readers, _registry_lock
    _readers = OrderedDict()
    _registry_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


def forget_all() -> None:
    """Close and forget every shared reader (tests; a fork child's fresh start)."""
    with _registry_lock:
        entries = list(_readers.values())
        _readers.clear()
    for reader, lock in entries:
        with lock:
            reader.close()
