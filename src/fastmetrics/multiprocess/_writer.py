"""The writing side: this process's file, the metadata recorder, :func:`enable`.

Once :func:`enable` ran, the shard store takes its chunks from this process's
file (``_mp_attach``), and :mod:`fastmetrics.metrics` reports each metric
value it creates to the :class:`_Recorder`, which appends its metadata
(``_mp_record``) and replays it into a fork child's new file.

Nothing here imports the cores or :mod:`fastmetrics.metrics` at module level
(the pure-Python core imports :mod:`._format` while the package loads):
:func:`enable` imports them when it runs.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import threading
import time
from typing import TYPE_CHECKING, Dict, Iterable, Optional, Protocol, Tuple

from . import _format as fmt
from ._directory import ENV_DIR, directory_from
from ._format import Meta
from ._locks import HAVE_FLOCK, lock
from ._reader import no_readahead

if TYPE_CHECKING:
    from ..metrics import SeriesMeta

ENV_CAPACITY = "FASTMETRICS_MULTIPROC_CAPACITY"
DEFAULT_CAPACITY = 64 << 20   # bytes reserved per process file (sparse until used)
MIN_CAPACITY = 64 << 10
MAX_CAPACITY = 1 << 40        # 1 TiB: far more than 2,048 chunks per thread can use

log = logging.getLogger(__package__)


class _ArenaCore(Protocol):
    """What the writer calls on the arena (``fastmetrics._core.arena()``)."""

    def _mp_enable(self) -> None: ...
    def _mp_attach(self, buffer: mmap.mmap, fd: int, path: str) -> None: ...
    def _mp_detach(self) -> None: ...
    def _mp_record(self, kind: int, arg: int, payload: bytes) -> None: ...


class _Declared(Protocol):
    """What the writer reads of a metric value: its public ``series_meta()``
    (:class:`fastmetrics.metrics.SeriesMeta`)."""

    def series_meta(self) -> SeriesMeta: ...


def _meta(metric: _Declared) -> Meta:
    """``metric``'s file metadata.  The one place the writer reads a metric."""
    m = metric.series_meta()
    return Meta(m.type, m.name, m.documentation, m.unit, m.labelnames, m.labelvalues, m.states)


class _ProcessFile:
    """This process's file: the descriptor holding its flock and the mapping."""

    def __init__(self, path: str, fd: int, mm: mmap.mmap) -> None:
        self.path, self.fd, self.mm = path, fd, mm

    @classmethod
    def create(cls, directory: str, capacity: int) -> _ProcessFile:
        """Create, lock, map and publish (rename) a new file (format
        ``_format.VERSION``), so readers never see a file without its owner's
        lock.  ValueError naming the capacity setting when the system refuses
        a file (or a mapping) that large; other errors as ``OSError``."""
        uid, pid = fmt.new_uid(), os.getpid()
        name = fmt.process_file_name(pid, uid)
        path, tmp = os.path.join(directory, name), os.path.join(directory, fmt.temp_name(name))
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            lock(fd, exclusive=True, blocking=True)   # a new inode: never contended
            mm = _reserve(fd, capacity, directory)
            os.pwrite(fd, fmt.header(pid, time.time_ns(), capacity, uid), 0)
            no_readahead(mm)
            os.rename(tmp, path)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return cls(path, fd, mm)

    def close(self) -> None:
        """Unmap and close (the file stays; in a fork child this drops the
        inherited descriptors so the parent's lock dies with the parent)."""
        try:
            self.mm.close()
        except BufferError:  # a view is still exported; the mapping stays
            log.debug("fastmetrics: %s stays mapped (a view is still exported)", self.path)
        os.close(self.fd)


_TOO_LARGE = (errno.EFBIG, errno.EINVAL, errno.ENOMEM, errno.EOVERFLOW)


def _reserve(fd: int, capacity: int, directory: str) -> mmap.mmap:
    """Size the file to ``capacity`` (sparse: pages cost nothing until
    touched) and map it.  ValueError naming the setting if the file system
    or the address space refuses that size."""
    try:
        os.ftruncate(fd, capacity)
        return mmap.mmap(fd, capacity, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except OSError as e:
        if e.errno not in _TOO_LARGE:
            raise
        raise ValueError(f"cannot reserve a process file of {capacity} bytes in {directory} ({e.strerror}); "
                         f"set a smaller {ENV_CAPACITY} or enable(capacity=...)") from e


class _Recorder:
    """Writes each metric value's metadata to this process's file and replays
    it into a fork child's new file.  Called by :mod:`fastmetrics.metrics`
    (from any thread: writes are serialised by ``lock``)."""

    def __init__(self, directory: str, capacity: int, file: _ProcessFile, core: _ArenaCore) -> None:
        self.directory = directory
        self.capacity = capacity
        self.core = core
        self.max_states = fmt.max_states(fmt.VERSION)
        self.file: Optional[_ProcessFile] = file
        self.lock = threading.Lock()   # lock order: children lock, this, the core's
        self.records: Dict[int, Tuple[int, bytes]] = {}   # slot -> (kind, payload)

    def _declare(self, kind: int, slot: int, meta: Meta) -> None:
        """Append ``meta`` as ``slot``'s record, once per slot."""
        payload = fmt.meta_payload(meta)
        with self.lock:
            if slot not in self.records:
                self.core._mp_record(kind, slot, payload)
                self.records[slot] = (kind, payload)

    def counter_slot(self, metric: _Declared, slot: int) -> None:
        """Declare ``slot`` as one of ``metric``'s (its value, or the spare that
        ``reset()`` swaps in; readers sum a series over its slots).  Once per
        slot: a counter reset every scrape appends nothing after the first."""
        if slot not in self.records:
            self._declare(fmt.REC_COUNTER, slot, _meta(metric))

    def enum_slot(self, metric: _Declared, slot: int) -> None:
        """Declare ``slot`` as ``metric``'s (an enum value's state word)."""
        self._declare(fmt.REC_ENUM, slot, _meta(metric))

    @staticmethod
    def check_strings(what: str, strings: Iterable[object]) -> None:
        """ValueError naming the first of ``strings`` that is not valid UTF-8
        (a lone surrogate, as ``os.fsdecode`` makes of a non-UTF-8 byte): the
        files hold UTF-8 and an exporter must encode what it reads.  Called
        before anything is allocated or written; non-strings are left to
        prometheus_client."""
        for s in strings:
            if isinstance(s, str):
                try:
                    s.encode("utf-8")
                except UnicodeEncodeError:
                    raise ValueError(f"{what} {s!r} is not valid UTF-8 (a lone surrogate); "
                                     "multiprocess mode stores and serves UTF-8 only") from None

    def check_labelvalues(self, values: Iterable[str]) -> None:
        """Before a labelled child is created: see :meth:`check_strings`."""
        self.check_strings("label value", values)

    def check_states(self, states: Iterable[object]) -> None:
        """Before an enum value is created: at most :attr:`max_states` states
        (the state shares its word with a wall-clock stamp), valid UTF-8."""
        names = [str(s) for s in states]
        if len(names) > self.max_states:
            raise ValueError(f"fastmetrics multiprocess mode supports at most {self.max_states} enum states")
        self.check_strings("enum state", names)

    # fork: held across it (rank RECORDER in fastmetrics._fork).
    def before_fork(self) -> None:
        self.lock.acquire()

    def after_fork_parent(self) -> None:
        self.lock.release()

    def after_fork_child(self) -> None:
        """Runs after the core dropped the parent's chunks: attach a new file
        and replay the metadata of every value this process knows."""
        try:
            self.core._mp_detach()
            if self.file is not None:
                self.file.close()
            self.file = None
            self.file = _ProcessFile.create(self.directory, self.capacity)
            self.core._mp_attach(self.file.mm, self.file.fd, self.file.path)
            for slot, (kind, payload) in sorted(self.records.items()):
                self.core._mp_record(kind, slot, payload)
        except Exception:  # noqa: BLE001 - a fork hook cannot raise
            log.exception("fastmetrics: cannot create this process's multiprocess file in %s; "
                          "increments will raise MemoryError", self.directory)
        finally:
            self.lock.release()


_enable_lock = threading.Lock()
_recorder: Optional[_Recorder] = None


def enable(path: Optional[str] = None, *, capacity: Optional[int] = None) -> str:
    """Turn on multiprocess mode for this process and the processes it starts.

    ``path`` defaults to ``$FASTMETRICS_MULTIPROC_DIR``; it is created if
    missing and exported in that variable so spawned children follow.
    ``capacity`` (default 64 MiB, or ``$FASTMETRICS_MULTIPROC_CAPACITY``) is
    the size reserved for each process file, sparse: a thread's first
    increment of every 512 slots takes 4 KiB of it.  ``ValueError`` if it is
    under 64 KiB, not a multiple of the page size, over 1 TiB, or more than
    the file system or address space allows (the message names the setting).

    Must run before any metric is created (``RuntimeError`` otherwise);
    calling it again with the same directory is a no-op, with another one a
    ``RuntimeError``.  ``NotImplementedError`` where ``fcntl.flock`` is
    missing (Windows).  Returns the absolute directory.  Thread-safe.
    """
    global _recorder
    from . import _prometheus
    if _prometheus.directory() is not None:
        raise RuntimeError(f"{_prometheus.ENV_PROMETHEUS} is set: this process already writes prometheus_client's "
                           "multiprocess files; use one multiprocess mode")
    if not HAVE_FLOCK or not hasattr(os, "register_at_fork"):
        raise NotImplementedError("fastmetrics multiprocess mode needs POSIX (fcntl.flock, os.register_at_fork)")
    path = os.path.abspath(directory_from(path))
    capacity = _capacity(capacity)
    with _enable_lock:
        if _recorder is not None:
            if _recorder.directory != path:
                raise RuntimeError(f"multiprocess mode is already enabled with {_recorder.directory}")
            return path
        os.makedirs(path, exist_ok=True)
        _recorder = _start(path, capacity)
        os.environ[ENV_DIR] = path
        if capacity != DEFAULT_CAPACITY:
            os.environ[ENV_CAPACITY] = str(capacity)
        return path


def _capacity(capacity: Optional[int]) -> int:
    """The capacity asked for (or ``$FASTMETRICS_MULTIPROC_CAPACITY``, or the
    default), validated: ValueError naming the setting."""
    setting = "capacity"
    if capacity is None:
        raw = os.environ.get(ENV_CAPACITY)
        try:
            capacity = int(raw) if raw else DEFAULT_CAPACITY
        except ValueError:
            raise ValueError(f"{ENV_CAPACITY} must be a number of bytes, not {raw!r}") from None
        setting = ENV_CAPACITY
    if capacity < MIN_CAPACITY or capacity % mmap.PAGESIZE:
        raise ValueError(f"capacity must be a multiple of {mmap.PAGESIZE} bytes, at least 64 KiB")
    if capacity > MAX_CAPACITY:
        raise ValueError(f"{setting}={capacity} is more than 1 TiB ({MAX_CAPACITY} bytes), "
                         "the largest process file")
    return capacity


def _start(path: str, capacity: int) -> _Recorder:
    """Create this process's file, switch the core to it and install the
    recorder in :mod:`fastmetrics.metrics`.  The core raises RuntimeError if
    a metric already exists; the file is then removed."""
    from .. import _core, _fork, metrics   # here: fastmetrics is fully imported once enable() runs

    file = _ProcessFile.create(path, capacity)
    core: _ArenaCore = _core.arena()
    try:
        core._mp_enable()
        core._mp_attach(file.mm, file.fd, file.path)
    except BaseException:
        file.close()
        os.unlink(file.path)
        raise
    recorder = _Recorder(path, capacity, file, core)
    metrics.set_recorder(recorder)
    _fork.register(_fork.RECORDER, recorder.before_fork, recorder.after_fork_parent, recorder.after_fork_child)
    return recorder


def directory() -> Optional[str]:
    """The directory this process writes to, or None when the mode is off."""
    return _recorder.directory if _recorder is not None else None


def _enable_from_environment() -> None:
    """:func:`enable` if ``$FASTMETRICS_MULTIPROC_DIR`` is set (at import)."""
    if os.environ.get(ENV_DIR):
        enable()
