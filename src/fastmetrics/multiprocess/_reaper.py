"""Closing files off the request path.

Deleting a process file that is still open or mapped is cheap; the cost
(freeing its reserved blocks: ~10 ms per file on ext4) is paid when its last
descriptor or mapping goes, which after a compaction is in the next scrape's
sweep.  :func:`release` hands such a mapping or descriptor to one background
daemon thread that closes it, so no scrape waits for the file system.

Contract: :func:`release` never blocks and never raises; objects are closed
in the order given, each once; an error closing one is logged and the others
still closed.  :func:`drain` waits until everything released so far is
closed (tests, and whoever must know the files are gone).  A fork child
starts with an empty queue and its own thread.  Thread-safe.
"""

from __future__ import annotations

import logging
import mmap
import os
import queue
import threading
from typing import Optional, Union

log = logging.getLogger(__package__)

Closable = Union[mmap.mmap, int]   # a mapping, or a descriptor

_queue: queue.Queue[Closable] = queue.Queue()   # (annotation only: not evaluated on 3.9)
_thread: Optional[threading.Thread] = None
_start_lock = threading.Lock()


def _run(work: queue.Queue[Closable]) -> None:
    while True:
        item = work.get()
        try:
            if isinstance(item, int):
                os.close(item)
            else:
                item.close()
        except Exception as e:   # logged, and the thread goes on: a dead reaper would hang drain()
            log.warning("fastmetrics: could not close %r: %s", item, e)
        finally:
            work.task_done()


def release(item: Closable) -> None:
    """Close ``item`` (a mapping or a descriptor) on the background thread."""
    global _thread
    if _thread is None:
        with _start_lock:
            if _thread is None:
                thread = threading.Thread(target=_run, args=(_queue,), name="fastmetrics-reaper", daemon=True)
                thread.start()
                _thread = thread
    _queue.put(item)


def drain() -> None:
    """Wait until everything released so far is closed."""
    if _thread is not None:
        _queue.join()


def _reset_in_child() -> None:
    global _queue, _thread, _start_lock
    _queue = queue.Queue()
    _thread = None
    _start_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_in_child)
