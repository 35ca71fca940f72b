"""Pure-Python twin of ``_promfile.h``: values written straight into
prometheus_client's multiprocess files (the mode ``PROMETHEUS_MULTIPROC_DIR``
turns on), and the enum writer both implementations use in that mode.

The file format is prometheus_client's ``MmapedDict`` (0.20 to 0.26): an int32
``used`` at offset 0 (then 4 bytes of padding), then entries ``[int32 len]
[utf-8 JSON key, space-padded so that 4 + padded is a multiple of 8][double
value][double timestamp]``.  Its ``MultiProcessCollector`` takes a file's type
from its name (``counter_*``, ``gauge_mostrecent_*``) and folds every entry of
a series, across files and within one.

- Every thread owns its files (``<prefix>_<pid>_<n>.db``, made complete under
  a temporary name, then linked to the first free name, so a recycled pid
  never reuses a dead process's file) and a table slot -> (view, index) of
  its value words.  Only the owner appends to its files or stores into its
  words; a slot's first use on a thread appends its entry (the key set with
  :func:`set_key`, value 0) and then publishes ``used``.
- A thread's files go back to a pool, with their counts, when its
  thread-locals are destroyed; the next new thread adopts them.
- Counters: the twin core (:mod:`fastmetrics._core_py`) calls
  :func:`store_add` inside its shard's seq bracket, so ``reset()``'s quiesce
  covers these stores too; :func:`fold` / :func:`zero` walk every thread.
- Enums (:class:`EnumSeries`, both implementations): one ``gauge_mostrecent``
  entry per state, value 1 for the current state and 0 for the others, all
  stamped with one wall-clock time; prometheus_client's collector serves the
  most recently written value of each state over every process.
- fork: the child forgets every thread's files (they are the parent's) and
  starts files of its own pid on first use, as prometheus_client does on a
  pid change.

Every structure shared between threads is a list or dict touched only with
operations that are atomic in CPython, with or without the GIL.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import struct
import threading
import time
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

from . import _fork

__all__ = ["COUNTER", "GAUGE_MOSTRECENT", "EnumSeries", "enable", "file_count", "fold", "set_key",
           "store_add", "touch", "zero"]

COUNTER = "counter"
GAUGE_MOSTRECENT = "gauge_mostrecent"
FILE_BYTES = 1 << 20      # one file's sparse mapping (as _promfile.h's FM_PF_FILE_BYTES)
HEADER = 8                # int32 used + 4 bytes of padding
CREATED_STAMP = 1e-9      # an enum's entries at creation: older than any state() call

_int32 = struct.Struct("i")
_two_doubles = struct.Struct("dd")

Word = Tuple["_File", int]   # a file, and the index of one value word in its doubles


def entry_bytes(key: bytes, value: float = 0.0, timestamp: float = 0.0) -> bytes:
    """One ``MmapedDict`` entry, padded exactly as its ``_init_value``."""
    padded = key + b" " * (8 - (len(key) + 4) % 8)
    return _int32.pack(len(key)) + padded + _two_doubles.pack(value, timestamp)


RESERVE_STEP = 64 * 1024   # bytes reserved per posix_fallocate


class _File:
    """One mapped file, written by its owner thread only.  Pages are
    reserved (``posix_fallocate``, where there is one) before an entry is
    written, so a full file system is an ``OSError`` here, never a SIGBUS."""

    __slots__ = ("bytes", "doubles", "fd", "mm", "reserved", "used")

    def __init__(self, mm: mmap.mmap, fd: int) -> None:
        self.mm = mm
        self.fd = fd
        self.bytes = memoryview(mm)
        self.doubles = self.bytes.cast("d")
        self.used = HEADER
        self.reserved = 0

    def reserve(self, end: int) -> None:
        if end <= self.reserved:
            return
        want = min(-(-end // RESERVE_STEP) * RESERVE_STEP, len(self.mm))
        if hasattr(os, "posix_fallocate"):
            try:
                os.posix_fallocate(self.fd, self.reserved, want - self.reserved)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):   # no fallocate there: pages on demand
                    raise
        self.reserved = want

    def append(self, key: bytes, timestamp: float) -> Optional[int]:
        """Append ``key``'s entry (value 0) and publish it; the index of its
        value word in :attr:`doubles`, or None when the file is full."""
        entry = entry_bytes(key, 0.0, timestamp)
        pos = self.used
        if pos + len(entry) > len(self.mm):
            return None
        self.reserve(pos + len(entry))
        self.bytes[pos:pos + len(entry)] = entry
        self.used = pos + len(entry)
        self.bytes[0:4] = _int32.pack(self.used)   # the entry is complete before `used` covers it
        return (self.used - 16) // 8


_directory: Optional[str] = None
_name_lock = threading.Lock()     # file names (cold path); held across fork
_next_file = 0


def _open(prefix: str, need: int) -> _File:
    """A new file of at least ``need`` bytes, complete (sized, header written)
    before it appears under its ``*.db`` name.  OSError naming the directory."""
    global _next_file
    directory = _directory
    if directory is None:
        raise RuntimeError("fastmetrics: the prometheus_client-compatible mode is not enabled")
    size = FILE_BYTES
    while size < need:
        size *= 2
    with _name_lock:
        pid = os.getpid()
        tmp = os.path.join(directory, f".fastmetrics-py-{pid}-{_next_file}.tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            os.ftruncate(fd, size)
            file = _File(mmap.mmap(fd, size), fd)   # fd stays open: pages are reserved through it
            file.reserve(HEADER)
            file.bytes[0:4] = _int32.pack(HEADER)
            while True:
                path = os.path.join(directory, f"{prefix}_{pid}_{_next_file}.db")
                _next_file += 1
                try:
                    os.link(tmp, path)
                    break
                except FileExistsError:   # a dead process's file with our pid: never reused
                    continue
            return file
        except BaseException:
            os.close(fd)
            raise
        finally:
            os.unlink(tmp)


class _Thread:
    """One thread's files and value words (per file prefix).  Only the owner
    writes them."""

    __slots__ = ("files", "owner", "words")

    def __init__(self) -> None:
        self.files: Dict[str, List[_File]] = {}
        self.words: Dict[object, Word] = {}   # slot (counters) or (EnumSeries, state) -> word
        self.owner: Optional[object] = None

    def word(self, ident: object, prefix: str, key: bytes, timestamp: float = 0.0) -> Word:
        """Cold path: append ``key``'s entry to this thread's newest ``prefix``
        file (a new file when it is full) and remember its word."""
        files = self.files.setdefault(prefix, [])
        try:
            index = files[-1].append(key, timestamp) if files else None
            if index is None:
                files.append(_open(prefix, HEADER + len(entry_bytes(key))))
                index = files[-1].append(key, timestamp)
        except OSError as e:   # as the C store words it: the errno, and the directory
            raise OSError(e.errno, "fastmetrics: cannot write a prometheus_client multiprocess file in "
                                   f"PROMETHEUS_MULTIPROC_DIR ({e.strerror})", _directory) from e
        if index is None:   # pragma: no cover - _open sized it for this entry
            raise MemoryError("fastmetrics: cannot fit a series key in a new file")
        word = (files[-1], index)
        self.words[ident] = word
        return word


class _Lease:
    """A thread's claim on a :class:`_Thread`, held in its thread-locals;
    ``__del__`` (thread exit) returns it to the pool, counts kept."""

    __slots__ = ("thread", "token")

    def __init__(self, thread: _Thread) -> None:
        self.thread = thread
        self.token = object()
        thread.owner = self.token

    def __del__(self) -> None:
        thread = self.thread
        if thread.owner is self.token:
            thread.owner = None
            free = _free
            if free is not None:   # None once the module is torn down at exit
                free.append(thread)


_all: List[_Thread] = []     # append-only; fold/zero iterate it
_free: List[_Thread] = []    # pool
_keys: Dict[int, bytes] = {}  # slot -> key (a slot keeps its first key)
if TYPE_CHECKING:
    class _Locals(threading.local):
        lease: _Lease

    _local = _Locals()
else:
    _local = threading.local()


def _thread() -> _Thread:
    try:
        return _local.lease.thread
    except AttributeError:
        try:
            thread = _free.pop()
        except IndexError:
            thread = _Thread()
            _all.append(thread)
        _local.lease = _Lease(thread)
        return thread


def enable(directory: str) -> None:
    """Write to prometheus_client's files in ``directory`` from now on."""
    global _directory
    _directory = directory


def set_key(slot: int, key: bytes) -> None:
    """Record ``slot``'s series key (prometheus_client's ``mmap_key``, utf-8)."""
    _keys.setdefault(slot, bytes(key))


def _counter_word(thread: _Thread, slot: int) -> Word:
    word = thread.words.get(slot)
    if word is None:
        key = _keys.get(slot)
        if key is None:
            raise MemoryError(f"fastmetrics: slot {slot} has no prometheus_client series key")
        word = thread.word(slot, COUNTER, key)
    return word


def touch(slot: int) -> None:
    """Write ``slot``'s entry (value 0) to the calling thread's file, as
    prometheus_client does when a value is created."""
    _counter_word(_thread(), slot)


def store_add(slot: int, amount: float) -> None:
    """Add to the calling thread's word of ``slot`` (the twin core calls it
    inside its shard's seq bracket)."""
    thread = _thread()
    word = thread.words.get(slot)
    if word is None:
        word = _counter_word(thread, slot)
    file, index = word
    file.doubles[index] += amount


def fold(slot: int) -> float:
    """This process's total of ``slot``: every thread's word."""
    total = 0.0
    for thread in list(_all):
        word = thread.words.get(slot)
        if word is not None:
            total += word[0].doubles[word[1]]
    return total


def zero(slot: int) -> None:
    """Zero this process's words of ``slot`` (quiesced: no writer)."""
    for thread in list(_all):
        word = thread.words.get(slot)
        if word is not None:
            word[0].doubles[word[1]] = 0.0


def file_count() -> int:
    """How many files this process has written (tests)."""
    return sum(len(files) for thread in list(_all) for files in list(thread.files.values()))


class EnumSeries:
    """An enum value in prometheus_client's files: one ``gauge_mostrecent``
    entry per state, written by the calling thread.  :meth:`write` stores 1
    for the current state and 0 for the others, all with one wall-clock
    stamp (the creation writes state 0 with :data:`CREATED_STAMP`, older than
    any real write, so a declared enum shows its first state until some
    process sets one).  Thread-safe: each thread writes only its own entries."""

    __slots__ = ("keys",)

    def __init__(self, keys: Sequence[bytes]) -> None:
        self.keys = tuple(keys)
        self.write(0, CREATED_STAMP)

    def write(self, index: int, timestamp: Optional[float] = None) -> None:
        stamp = time.time() if timestamp is None else timestamp
        thread = _thread()
        words = thread.words
        for i, key in enumerate(self.keys):
            ident = (self, i)   # identity-hashed: no shared id counter
            word = words.get(ident)
            if word is None:
                word = thread.word(ident, GAUGE_MOSTRECENT, key, stamp)
            file, at = word
            byte = at * 8   # value and stamp in one 16-byte store, as MmapedDict writes them
            file.bytes[byte:byte + 16] = _two_doubles.pack(1.0 if i == index else 0.0, stamp)


# fork: the name lock is held across it (rank PROMFILE in fastmetrics._fork);
# the child forgets every thread's files (they are the parent's).
def _before_fork() -> None:
    _name_lock.acquire()


def _after_fork_parent() -> None:
    _name_lock.release()


def _after_fork_child() -> None:
    global _all, _free, _next_file
    lease = getattr(_local, "lease", None)
    if lease is not None:
        lease.thread.owner = None   # its __del__ must not pool the parent's files
        del _local.lease
    for thread in _all:   # the parent's files: never written here (their mappings stay: views exist)
        for files in thread.files.values():
            for file in files:
                with contextlib.suppress(OSError):
                    os.close(file.fd)
    _all, _free, _next_file = [], [], 0
    _name_lock.release()


_fork.register(_fork.PROMFILE, _before_fork, _after_fork_parent, _after_fork_child)
