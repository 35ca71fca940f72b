"""fork(): the one place that orders the Python locks held across it.

Python runs ``os.register_at_fork`` *before* hooks in reverse registration
order, so per-module registration would make the lock order depend on import
order.  Instead each participant registers here with a rank; one set of hooks
takes them in ascending rank before the fork and releases them in descending
rank after it, in the parent and the child alike.

The ranks, lowest first (the order every other code path takes them in):

====  ==================================  ===================================
rank  participant                         held across fork
====  ==================================  ===================================
10    fastmetrics.metrics                 the children lock
20    fastmetrics.multiprocess (writer)   the metadata recorder's lock
30    fastmetrics._core_py (the twin)     the store's slot lock (+ arena's)
40    fastmetrics._promfile_py            its file-name lock
====  ==================================  ===================================

The C core needs no entry: its mutexes are taken by C ``pthread_atfork``
handlers inside ``fork()`` itself, where no Python code can run while they
are held.  Hooks must not raise (a child hook logs instead).
"""

from __future__ import annotations

import os
import threading
from typing import Callable, List, NamedTuple

__all__ = ["Participant", "register"]

METRICS, RECORDER, TWIN_STORE, PROMFILE = 10, 20, 30, 40


class Participant(NamedTuple):
    rank: int
    before: Callable[[], None]
    after_in_parent: Callable[[], None]
    after_in_child: Callable[[], None]


_participants: List[Participant] = []
_lock = threading.Lock()   # guards the list; held across fork (rank 0)


def register(rank: int, before: Callable[[], None], after_in_parent: Callable[[], None],
             after_in_child: Callable[[], None]) -> None:
    """Add a participant (idempotent for the same ``before`` hook)."""
    with _lock:
        if any(p.before == before for p in _participants):
            return
        _participants.append(Participant(rank, before, after_in_parent, after_in_child))
        _participants.sort(key=lambda p: p.rank)


_held: List[Participant] = []


def _before() -> None:
    _lock.acquire()
    _held[:] = _participants
    for p in _held:
        p.before()


def _after_in_parent() -> None:
    for p in reversed(_held):
        p.after_in_parent()
    _lock.release()


def _after_in_child() -> None:
    for p in reversed(_held):
        p.after_in_child()
    _lock.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before, after_in_parent=_after_in_parent, after_in_child=_after_in_child)
