"""The two ``flock`` locks of a directory, and the one liveness probe.

A process holds an exclusive ``flock`` on its own file while it lives; the
kernel drops it when the process exits, however it exits (SIGKILL included).
:func:`owner_alive` is how every reader, compaction and the stale-temp sweep
tell a live process's file from an exited one's.  ``<dir>/.lock``
(:class:`DirLock`) is shared by scrapes and held alone by compaction.  POSIX
only: where ``fcntl`` is missing, :data:`HAVE_FLOCK` is False and callers
refuse to run before they get here.
"""

from __future__ import annotations

import errno
import os
from types import TracebackType
from typing import Optional, Type

from . import _format

try:
    import fcntl
except ImportError:  # Windows: no multiprocess mode
    HAVE_FLOCK = False
else:
    HAVE_FLOCK = True


def lock(fd: int, exclusive: bool, blocking: bool) -> bool:
    """Take a ``flock`` on ``fd``'s open file description (held until that
    description is closed: every descriptor sharing it); False if another
    description holds a conflicting lock and ``blocking`` is False.
    ``OSError`` for anything but contention."""
    op = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if blocking else fcntl.LOCK_NB)
    try:
        fcntl.flock(fd, op)
    except BlockingIOError:
        return False
    return True


def owner_alive(fd: int, hold: bool = False) -> bool:
    """Whether a live process owns ``fd``'s file: another open file
    description holds a lock on it.  Never blocks.

    Without ``hold`` the probe takes a shared lock and releases it at once
    (probes by concurrent readers do not see each other, and a mapping kept
    on ``fd`` would otherwise keep the lock and make the file look alive).
    With ``hold`` it takes an exclusive lock and, when the owner is gone,
    keeps it until ``fd`` is closed: nobody else then takes the file for
    exited (compaction, which deletes it).  ``OSError`` as :func:`lock`."""
    if not lock(fd, exclusive=hold, blocking=False):
        return True
    if not hold:
        fcntl.flock(fd, fcntl.LOCK_UN)
    return False


class DirLock:
    """``flock`` on ``<dir>/.lock``: scrapes share it, compaction holds it alone,
    so a scrape never sees a file both in the archive and on its own.

    Never raises: ``held`` says whether the lock was taken, and ``problem``
    why not when that is a fault (a ``.lock`` that is a directory, say), not
    contention.  A scrape reads anyway, compaction skips.  In a read-only
    directory a scrape reads without the lock and no problem: no writer can
    be compacting there.  Released on exit (the descriptor is closed)."""

    def __init__(self, path: str, exclusive: bool, blocking: bool = True) -> None:
        self.path = os.path.join(path, _format.LOCK_NAME)
        self.exclusive, self.blocking = exclusive, blocking
        self.fd = -1
        self.held = False
        self.problem: Optional[str] = None

    def __enter__(self) -> DirLock:
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | os.O_NOFOLLOW, 0o644)
            self.held = lock(self.fd, self.exclusive, self.blocking)
        except OSError as e:
            if self.exclusive or not (isinstance(e, PermissionError) or e.errno == errno.EROFS):
                self.problem = f"cannot lock the directory: {e}; " + (
                    "compaction skipped" if self.exclusive else "read without the lock")
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        if self.fd >= 0:
            os.close(self.fd)   # drops the lock
