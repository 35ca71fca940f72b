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
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import threading
import time
from typing import Any, Dict, Iterable, Iterator, List, NamedTuple, Optional, Protocol, Set, Tuple, TypeVar

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample

from . import _core, _fork, _mpfile, metrics
from ._mpfile import CorruptFile, EnumValue, Meta, ParsedFile, SeriesKey

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["ENV_DIR", "MultiProcessCollector", "compact", "directory", "enable"]

ENV_DIR = "FASTMETRICS_MULTIPROC_DIR"
ENV_CAPACITY = "FASTMETRICS_MULTIPROC_CAPACITY"
DEFAULT_CAPACITY = 64 << 20   # bytes reserved per process file (sparse until used)
MAX_CAPACITY = 1 << 40        # 1 TiB: far more than 2,048 chunks per thread can use
ENUM_MODES = ("pid", "mostrecent")
STALE_TEMP_SECONDS = 60.0

log = logging.getLogger("fastmetrics.multiprocess")


class _ProcessFile:
    """This process's file: the descriptor holding its flock and the mapping."""

    def __init__(self, path: str, fd: int, mm: mmap.mmap) -> None:
        self.path, self.fd, self.mm = path, fd, mm

    @classmethod
    def create(cls, directory: str, capacity: int) -> "_ProcessFile":
        """Create, lock, map and publish (rename) a new file (format
        ``_mpfile.VERSION``), so readers never see a file without its owner's lock.
        ValueError naming the capacity setting when the system refuses a
        file (or a mapping) that large; other errors as ``OSError``."""
        uid, pid = _mpfile.new_uid(), os.getpid()
        name = _mpfile.process_file_name(pid, uid)
        path, tmp = os.path.join(directory, name), os.path.join(directory, f".{name}.tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)   # a new inode: never contended
            mm = _reserve(fd, capacity, directory)
            os.pwrite(fd, _mpfile.header(pid, time.time_ns(), capacity, uid), 0)
            _mpfile.no_readahead(mm)
            os.rename(tmp, path)
        except BaseException:
            os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
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
    it into a fork child's new file.  Called by :mod:`fastmetrics.metrics`."""

    def __init__(self, directory: str, capacity: int, file: _ProcessFile) -> None:
        self.directory = directory
        self.capacity = capacity
        self.max_states = _mpfile.max_states(_mpfile.VERSION)
        self.file: Optional[_ProcessFile] = file
        self.lock = threading.Lock()   # lock order: children lock, this, the core's
        self.records: Dict[int, Tuple[int, bytes]] = {}   # slot -> (kind, payload)

    def _write(self, kind: int, slot: int, payload: bytes) -> None:
        with self.lock:
            _core.arena()._mp_record(kind, slot, payload)
            self.records[slot] = (kind, payload)

    def counter_created(self, metric: Any) -> None:
        self.counter_slot(metric, metric._slot_index())

    def counter_slot(self, metric: Any, slot: int) -> None:
        """Declare ``slot`` as one of ``metric``'s (its value, or the spare that
        ``reset()`` swaps in; readers sum a series over its slots).  Once per
        slot: a counter reset every scrape appends nothing after the first."""
        if slot not in self.records:
            self._write(_mpfile.COUNTER, slot, _mpfile.meta_payload(_meta(metric)))

    @staticmethod
    def check_strings(what: str, strings: Iterable[Any]) -> None:
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

    def check_states(self, states: Iterable[Any]) -> None:
        """Before an enum value is created: at most :attr:`max_states` states
        (the state shares its word with a wall-clock stamp), valid UTF-8."""
        states = [str(s) for s in states]
        if len(states) > self.max_states:
            raise ValueError(f"fastmetrics multiprocess mode supports at most {self.max_states} enum states")
        self.check_strings("enum state", states)

    def enum_created(self, metric: Any) -> None:
        self._write(_mpfile.ENUM, metric._slot_index(), _mpfile.meta_payload(_meta(metric)))

    # fork: held across it (rank RECORDER in fastmetrics._fork).
    def before_fork(self) -> None:
        self.lock.acquire()

    def after_fork_parent(self) -> None:
        self.lock.release()

    def after_fork_child(self) -> None:
        """Runs after the core dropped the parent's chunks: attach a new file
        and replay the metadata of every value this process knows."""
        try:
            _core.arena()._mp_detach()
            if self.file is not None:
                self.file.close()
            self.file = None
            self.file = _ProcessFile.create(self.directory, self.capacity)
            _core.arena()._mp_attach(self.file.mm, self.file.fd, self.file.path)
            for slot, (kind, payload) in sorted(self.records.items()):
                _core.arena()._mp_record(kind, slot, payload)
        except Exception:  # noqa: BLE001 - a fork hook cannot raise
            log.exception("fastmetrics: cannot create this process's multiprocess file in %s; "
                          "increments will raise MemoryError", self.directory)
        finally:
            self.lock.release()


def _meta(metric: Any) -> Meta:
    """The file's metadata of ``metric`` (from its public ``series_meta()``)."""
    m = metric.series_meta()
    return Meta(m.type, m.name, m.documentation, m.unit, m.labelnames, m.labelvalues, m.states)


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
    missing (Windows).  Returns the absolute directory.
    """
    global _recorder
    if fcntl is None or not hasattr(os, "register_at_fork"):
        raise NotImplementedError("fastmetrics multiprocess mode needs POSIX (fcntl.flock, os.register_at_fork)")
    path = path or os.environ.get(ENV_DIR)
    if not path:
        raise ValueError(f"no directory given and {ENV_DIR} is not set")
    path = os.path.abspath(path)
    setting = "capacity"
    if capacity is None:
        raw = os.environ.get(ENV_CAPACITY)
        try:
            capacity = int(raw) if raw else DEFAULT_CAPACITY
        except ValueError:
            raise ValueError(f"{ENV_CAPACITY} must be a number of bytes, not {raw!r}") from None
        setting = ENV_CAPACITY
    if capacity < 64 * 1024 or capacity % mmap.PAGESIZE:
        raise ValueError(f"capacity must be a multiple of {mmap.PAGESIZE} bytes, at least 64 KiB")
    if capacity > MAX_CAPACITY:
        raise ValueError(f"{setting}={capacity} is more than 1 TiB ({MAX_CAPACITY} bytes), "
                         "the largest process file")
    with _enable_lock:
        if _recorder is not None:
            if _recorder.directory != path:
                raise RuntimeError(f"multiprocess mode is already enabled with {_recorder.directory}")
            return path
        os.makedirs(path, exist_ok=True)
        file = _ProcessFile.create(path, capacity)
        try:
            _core.arena()._mp_enable()
            _core.arena()._mp_attach(file.mm, file.fd, file.path)
        except BaseException:
            file.close()
            os.unlink(file.path)
            raise
        _recorder = _Recorder(path, capacity, file)
        metrics.set_recorder(_recorder)
        _fork.register(_fork.RECORDER, _recorder.before_fork, _recorder.after_fork_parent,
                       _recorder.after_fork_child)
        os.environ[ENV_DIR] = path
        if capacity != DEFAULT_CAPACITY:
            os.environ[ENV_CAPACITY] = str(capacity)
        return path


def directory() -> Optional[str]:
    """The directory this process writes to, or None when the mode is off."""
    return _recorder.directory if _recorder is not None else None


# -- reading --------------------------------------------------------------------

class _DirLock:
    """``flock`` on ``<dir>/.lock``: scrapes share it, compaction holds it alone,
    so a scrape never sees a file both in the archive and on its own.

    Never raises: ``held`` says whether the lock was taken, and ``problem``
    why not when that is a fault (a ``.lock`` that is a directory, say), not
    contention.  A scrape reads anyway, compaction skips.  In a read-only
    directory a scrape reads without the lock and no problem: no writer can
    be compacting there."""

    def __init__(self, path: str, exclusive: bool, blocking: bool = True) -> None:
        self.path, self.exclusive, self.blocking = os.path.join(path, _mpfile.LOCK_NAME), exclusive, blocking
        self.fd = -1
        self.held = False
        self.problem: Optional[str] = None

    def __enter__(self) -> "_DirLock":
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | os.O_NOFOLLOW, 0o644)
            op = (fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH) | (0 if self.blocking else fcntl.LOCK_NB)
            fcntl.flock(self.fd, op)
            self.held = True
        except BlockingIOError:
            pass   # another process holds it
        except OSError as e:
            if self.exclusive or not (isinstance(e, PermissionError) or e.errno == errno.EROFS):
                self.problem = f"cannot lock the directory: {e}; " + (
                    "compaction skipped" if self.exclusive else "read without the lock")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd >= 0:
            os.close(self.fd)   # drops the lock


class _Owned(Protocol):
    """A file as known by its path and header."""

    @property
    def path(self) -> str: ...
    @property
    def pid(self) -> int: ...
    @property
    def uid(self) -> bytes: ...


_F = TypeVar("_F", bound=_Owned)


def _one_per_uid(files: List[_F]) -> List[Tuple[_F, List[_F]]]:
    """``files`` grouped by uid, as (the file kept, its copies), in order.  A
    uid names one process's file, so files sharing one are copies: the one
    named after its own header (``<pid>-<uid>.fm``) is kept, else the first."""
    groups: Dict[bytes, List[_F]] = {}
    for f in files:
        groups.setdefault(f.uid, []).append(f)
    result = []
    for group in groups.values():
        kept = next((f for f in group if os.path.basename(f.path) == _mpfile.process_file_name(f.pid, f.uid)),
                    group[0])
        result.append((kept, [f for f in group if f is not kept]))
    return result


def _copy_reason(kept: _Owned) -> str:
    return f"same uid as {kept.path}: a copy, counted once"


def _process_files(path: str) -> List[str]:
    return sorted(name for name in os.listdir(path) if _mpfile.is_process_file(name))


def _expect(pf: ParsedFile, archive: bool) -> ParsedFile:
    """``pf`` if it is the kind of file its name says (CorruptFile if not)."""
    if pf.archive != archive:
        raise CorruptFile("an archive under a process file's name" if pf.archive
                          else "a process file under the archive's name")
    return pf


def _read_archive(path: str, reader: Optional[_mpfile.Reader] = None) -> Optional[ParsedFile]:
    """The archive of directory ``path``, or None if there is none."""
    pf = _mpfile.parse_optional(os.path.join(path, _mpfile.ARCHIVE_NAME), reader)
    return _expect(pf, archive=True) if pf is not None else None


class Snapshot(NamedTuple):
    """What :func:`read_directory` found: the folded series and the skipped files."""

    counters: Dict[SeriesKey, float]
    enums: Dict[Tuple[SeriesKey, Optional[int]], EnumValue]   # (series, pid or None) -> state
    families: Dict[str, Meta]                                  # name -> the newest metadata
    skipped: List[Tuple[str, str]]                             # (path, reason)
    files: int


def read_directory(path: str, enum_mode: str = "pid", reader: Optional[_mpfile.Reader] = None) -> Snapshot:
    """Fold the archive and every process file in ``path``.  Counters are
    summed; enums are per live process (``pid``) or the most recent state
    (``mostrecent``).  What cannot be read is skipped and listed, never
    raised: entries that are not regular files or cannot be opened, invalid
    files, copies of a file (same uid: counted once), and single series with
    invalid metadata or values.  A ``reader`` kept between calls (not shared
    by threads) makes a repeated read walk only the records appended since
    the previous one."""
    if enum_mode not in ENUM_MODES:
        raise ValueError(f"enum_mode must be one of {ENUM_MODES}, not {enum_mode!r}")
    if reader is None:
        reader = _mpfile.Reader()
        try:
            return read_directory(path, enum_mode, reader)
        finally:
            reader.close()
    skipped: List[Tuple[str, str]] = []
    files: List[ParsedFile] = []
    archive_path = os.path.join(path, _mpfile.ARCHIVE_NAME)
    with _DirLock(path, exclusive=False) as lock:
        if lock.problem:
            skipped.append((lock.path, lock.problem))
        archive: Optional[ParsedFile] = None
        try:
            archive = _read_archive(path, reader)
        except (CorruptFile, OSError) as e:
            skipped.append((archive_path, str(e)))
        absorbed = archive.absorbed if archive is not None else set()
        for name in _process_files(path):
            file_path = os.path.join(path, name)
            try:
                pf = _expect(reader.read(file_path, probe_live=enum_mode == "pid"), archive=False)
            except FileNotFoundError:
                continue
            except (CorruptFile, OSError) as e:
                skipped.append((file_path, str(e)))
                continue
            if pf.uid not in absorbed:   # else folded into the archive; deletion is pending
                files.append(pf)
    reader.sweep()
    parsed: List[ParsedFile] = []
    for kept, copies in _one_per_uid(files):
        parsed.append(kept)
        skipped += [(copy.path, _copy_reason(kept)) for copy in copies]
    parsed.sort(key=lambda pf: -pf.created_ns)   # newest first: its metadata wins
    if archive is not None:
        parsed.append(archive)

    counters: Dict[SeriesKey, float] = {}
    enums: Dict[Tuple[SeriesKey, Optional[int]], EnumValue] = {}
    families: Dict[str, Meta] = {}
    for pf in parsed:
        skipped += [(pf.path, problem) for problem in pf.problems]
        mismatched: Set[str] = set()
        for key, meta in pf.metas.items():
            family = families.setdefault(meta.name, meta)
            if family is not meta and (family.type != meta.type or family.labelnames != meta.labelnames
                                       or family.states != meta.states):
                mismatched.add(meta.name)
                continue
            if meta.type == "counter":
                counters[key] = counters.get(key, 0.0) + pf.counters[key]
            elif enum_mode == "pid":
                if pf.live:
                    enums[(key, pf.pid)] = pf.enums[key]
            else:
                enum, best = pf.enums[key], enums.get((key, None))
                if best is None or enum.stamp_ns > best.stamp_ns:
                    enums[(key, None)] = enum
        for name in sorted(mismatched):
            skipped.append((pf.path, f"{name}: type, labels or states differ from the newest file; series skipped"))
    return Snapshot(counters, enums, families, skipped, len(parsed))


def _families(snapshot: Snapshot) -> List[Metric]:
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
    first folds the files of exited processes into the archive.  Whatever the
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
        if fcntl is None:
            raise NotImplementedError("fastmetrics multiprocess mode needs POSIX (fcntl.flock)")
        self._path = path
        self._enum_mode = enum_mode
        self._compact = compact
        self._reported: Set[Tuple[str, str]] = set()
        self._reader = _mpfile.Reader()
        self._lock = threading.Lock()   # one scrape at a time uses the reader
        self.skipped: List[Tuple[str, str]] = []
        if registry:
            registry.register(self)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            skipped: List[Tuple[str, str]] = []
            if self._compact:
                try:
                    skipped += compact(self._path, blocking=False).skipped
                except OSError as e:   # e.g. a read-only directory: still serve what is there
                    skipped.append((self._path, f"compaction failed: {e}"))
            snapshot = read_directory(self._path, self._enum_mode, self._reader)
            self.skipped = list(dict.fromkeys(skipped + snapshot.skipped))   # both may report a copy
            for item in self.skipped:
                if item not in self._reported:
                    self._reported.add(item)
                    log.warning("fastmetrics: skipped %s: %s", *item)
        return iter(_families(snapshot))


class CompactionResult(NamedTuple):
    absorbed: int                    # exited processes' files folded in this time
    removed: int                     # files deleted
    skipped: List[Tuple[str, str]]   # (path, reason): entries left out, invalid files set aside
    ran: bool                        # False when another process was compacting, or the lock failed


def compact(path: Optional[str] = None, *, blocking: bool = True) -> CompactionResult:
    """Fold the files of exited processes into ``archive.fm`` and delete them.

    Crash-safe: the new archive (which lists the uids it absorbed) replaces the
    old one atomically before any file is deleted, and readers ignore a file
    whose uid the archive lists.  An invalid exited file is renamed to
    ``*.corrupt``; a series of it with invalid metadata or values is left out
    and the rest folded; an entry that is not a regular file or cannot be
    opened is left in place; copies of a file (same uid) are folded once, and
    never while a file with their uid is live.  All of these are reported in
    ``skipped``.  With ``blocking=False`` it returns at once (``ran=False``)
    if another process is compacting.  ``OSError`` if the archive cannot be
    written.
    """
    path = path or os.environ.get(ENV_DIR)
    if not path:
        raise ValueError(f"no directory given and {ENV_DIR} is not set")
    skipped: List[Tuple[str, str]] = []
    with _DirLock(path, exclusive=True, blocking=blocking) as lock:
        if not lock.held:
            if lock.problem:
                skipped.append((lock.path, lock.problem))
            return CompactionResult(0, 0, skipped, False)
        names = _process_files(path)
        reader = _mpfile.Reader()
        locks: List[int] = []   # descriptors holding exited files' locks until they are deleted
        try:
            entries = _survey(path, names, reader, locks, skipped)
            _remove_stale_temps(path)
            if not any(entry.parsed is not None for entry in entries):
                return CompactionResult(0, 0, skipped, True)
            return _fold_into_archive(path, names, entries, skipped)
        finally:
            reader.close()
            for fd in locks:
                os.close(fd)


class _Entry(NamedTuple):
    """A process file as compaction found it."""

    path: str
    pid: int
    uid: bytes
    parsed: Optional[ParsedFile]   # an exited process's file, read under its lock; None: live


def _survey(path: str, names: List[str], reader: _mpfile.Reader, locks: List[int],
            skipped: List[Tuple[str, str]]) -> List[_Entry]:
    """The process files ``names`` that can be opened: live ones by their
    header, exited ones read in full under their lock (kept in ``locks``).
    An exited file that is invalid is renamed ``*.corrupt``; an entry that
    cannot be opened or read is left in place; both are reported."""
    entries = []
    for name in names:
        file_path = os.path.join(path, name)
        try:
            fd, st = _mpfile.open_entry(file_path)
        except FileNotFoundError:
            continue
        except (CorruptFile, OSError) as e:
            skipped.append((file_path, f"{e}; left in place"))
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:   # its owner is alive
            try:
                head = _mpfile.read_header(fd)
                entries.append(_Entry(file_path, head.pid, head.uid, None))
            except (CorruptFile, OSError):
                pass   # a live file's problem: scrapes report it
            finally:
                os.close(fd)
            continue
        locks.append(fd)
        try:
            pf = _expect(reader.read_open(file_path, fd, st), archive=False)
        except CorruptFile as e:
            _set_aside(file_path, str(e), skipped)
            continue
        except OSError as e:
            skipped.append((file_path, f"{e}; left in place"))
            continue
        entries.append(_Entry(file_path, pf.pid, pf.uid, pf))
    return entries


def _set_aside(file_path: str, reason: str, skipped: List[Tuple[str, str]]) -> None:
    """Rename an invalid exited file ``*.corrupt``, reported."""
    try:
        os.replace(file_path, file_path + ".corrupt")
        skipped.append((file_path, f"{reason}; moved to {os.path.basename(file_path)}.corrupt"))
    except OSError as e:
        skipped.append((file_path, f"{reason}; cannot move it aside: {e}"))


def _fold_into_archive(path: str, names: List[str], entries: List[_Entry],
                       skipped: List[Tuple[str, str]]) -> CompactionResult:
    archive_path = os.path.join(path, _mpfile.ARCHIVE_NAME)
    try:
        archive = _read_archive(path)
    except CorruptFile as e:
        aside = f"{archive_path}.corrupt-{time.time_ns()}"
        os.replace(archive_path, aside)
        skipped.append((archive_path, f"{e}; moved to {os.path.basename(aside)}"))
        archive = None
    except OSError as e:   # its counts cannot be carried over: fold nothing
        skipped.append((archive_path, f"{e}; compaction skipped"))
        return CompactionResult(0, 0, skipped, True)
    counters = dict(archive.counters) if archive else {}
    enums = dict(archive.enums) if archive else {}
    metas = dict(archive.metas) if archive else {}
    if archive:
        skipped += [(archive_path, f"{problem}; dropped from the archive") for problem in archive.problems]
    old_absorbed = archive.absorbed if archive else set()
    present = {entry.uid for entry in entries} | {uid for uid in map(_mpfile.uid_of_name, names) if uid}
    absorbed = old_absorbed & present
    live = {entry.uid for entry in entries if entry.parsed is None}
    folded = 0
    to_delete: List[str] = []
    for kept, copies in _one_per_uid(entries):
        skipped += [(copy.path, _copy_reason(kept)) for copy in copies]
        if kept.uid in live:
            continue   # a live process still writes to a file with this uid
        if kept.uid not in old_absorbed:   # else folded by a compaction that stopped before deleting it
            _fold_file(kept.parsed, counters, enums, metas, skipped)  # type: ignore[arg-type]  # not live: read
            absorbed.add(kept.uid)
            folded += 1
        to_delete += [entry.path for entry in (kept, *copies)]
    if to_delete:
        # A new uid per archive: readers that remember a file by its inode
        # tell a new archive from an old one by the header (inodes are reused).
        _mpfile.write_archive(archive_path, counters, enums, metas, absorbed, _mpfile.new_uid(),
                              archive.created_ns if archive else time.time_ns())
    for file_path in to_delete:
        try:
            os.unlink(file_path)
        except FileNotFoundError:
            pass
        except OSError as e:   # folded: readers skip it until a later compaction deletes it
            skipped.append((file_path, f"folded but not deleted: {e}"))
    return CompactionResult(folded, len(to_delete), skipped, True)


def _fold_file(pf: ParsedFile, counters: Dict[SeriesKey, float], enums: Dict[SeriesKey, EnumValue],
               metas: Dict[SeriesKey, Meta], skipped: List[Tuple[str, str]]) -> None:
    """Add an exited process's file to the archive's series."""
    skipped += [(pf.path, f"{problem}; left out of the archive") for problem in pf.problems]
    for key, meta in pf.metas.items():
        known = metas.setdefault(key, meta)
        if (known.type, known.labelnames, known.states) != (meta.type, meta.labelnames, meta.states):
            skipped.append((pf.path, f"{meta.name}: type, labels or states differ from the archive; dropped"))
            continue
        if meta.type == "counter":
            counters[key] = counters.get(key, 0.0) + pf.counters[key]
        else:
            enum, best = pf.enums[key], enums.get(key)
            if best is None or enum.stamp_ns >= best.stamp_ns:
                enums[key] = enum


def _remove_stale_temps(path: str) -> None:
    """Delete temp files left by a process that died while creating its file:
    old, and nobody holds their lock.  Entries that are not regular files or
    cannot be opened or deleted are left alone (they hold no counts)."""
    now = time.time()
    for name in os.listdir(path):
        if not (name.startswith(".") and name.endswith(".tmp")):
            continue
        file_path = os.path.join(path, name)
        try:
            fd, st = _mpfile.open_entry(file_path)
        except (CorruptFile, OSError):
            continue
        try:
            if now - st.st_mtime > STALE_TEMP_SECONDS and not _mpfile.locked_by_other(fd):
                os.unlink(file_path)
        except OSError:
            pass
        finally:
            os.close(fd)


def _enable_from_environment() -> None:
    if os.environ.get(ENV_DIR):
        enable()
