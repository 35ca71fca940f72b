"""On-disk format of multiprocess mode, and a validating reader.

One file per process, ``<pid>-<uid>.fm``, plus one archive, ``archive.fm``,
holding what compaction folded in from exited processes.  Native byte order
and word size (the files never leave the machine; a header field proves it).

Header (128 bytes)::

    0   magic       8s   b"FMSHARD\\x00"
    8   version     u32  2 (1 is still read: it differs in the enum word)
    12  flags       u32  bit 0: archive
    16  pid         i64
    24  created_ns  i64  time.time_ns() at creation
    32  capacity    u64  bytes reserved for the file (its size)
    40  uid         16s  random; names the file in the archive's absorbed set
    56  order       u32  0x01020304 written natively (byte-order check)
    60  crc         u32  crc32 of bytes 0..59
    64  used        i64  end of the published records; the writer stores it
                         last (release), so records below it are complete

Records follow, each 128-byte aligned: ``kind u32, length u32, arg i64`` then
the payload, at +128 for data chunks (cache-line aligned) and +16 otherwise.

==========  ====  ==============================================================
kind        arg   payload
==========  ====  ==============================================================
CHUNK       c     512 float64: one thread's partial sums of slots c*512..c*512+511
WORDS       c     512 int64: enum words of those slots (below)
COUNTER     slot  crc u32 + JSON metadata of the counter value in ``slot``; a
                  series may have several slots (one per ``reset()``): summed
ENUM        slot  crc u32 + JSON metadata of the enum in ``slot``
RETIRE      slot  (empty; version 1 writers) the slot was reset: ignore it
TOTAL       0     crc u32 + float64 + JSON metadata (archive: a folded counter)
LAST        0     crc u32 + int64 word + JSON metadata (archive: latest enum word)
ABSORBED    0     crc u32 + 16-byte uids of the process files folded in
==========  ====  ==============================================================

An enum word is ``index | (stamp_ms << 16)`` in version 2, with ``stamp_ms``
the wall clock in milliseconds since the Unix epoch; ``index | (stamp_us <<
12)`` in version 1 (:func:`decode_word` reads both).

A zero ``kind`` below ``used`` is a record not yet visible to this reader: the
walk stops there.  What the walk cannot step over (a bad header, ``used``,
record length or chunk record) raises :class:`CorruptFile` for the whole file.
A bad value or metadata record costs only its series: it is left out and
described in :attr:`ParsedFile.problems`.  A count is any float a counter can
hold, +Inf included; NaN and negative counts are invalid.
"""

from __future__ import annotations

import json
import mmap
import os
import stat
import struct
import zlib
from typing import Any, Dict, List, NamedTuple, Optional, Set, Tuple, Union

from prometheus_client.metrics_core import Metric

try:
    import fcntl
except ImportError:  # Windows: no multiprocess mode (see fastmetrics.multiprocess)
    fcntl = None  # type: ignore[assignment]

MAGIC = b"FMSHARD\x00"
VERSION = 2   # written by every writer (the cores, compaction); version 1 is still read
FLAG_ARCHIVE = 1
ORDER_MARK = 0x01020304
HEADER_SIZE = 128
USED_OFFSET = 64
ALIGN = 128
META_OFF = 16
DATA_OFF = 128
CHUNK_BITS = 9
CHUNK_SLOTS = 1 << CHUNK_BITS
CHUNK_BYTES = 8 * CHUNK_SLOTS
MAX_CHUNKS = 2048
MAX_SLOTS = MAX_CHUNKS * CHUNK_SLOTS
# version -> (state bits, nanoseconds per stamp unit) of an enum word
_WORD_FORMATS = {1: (12, 1_000), 2: (16, 1_000_000)}
STATE_BITS = _WORD_FORMATS[VERSION][0]
MAX_STATES = 1 << STATE_BITS

CHUNK, WORDS, COUNTER, ENUM, RETIRE, TOTAL, LAST, ABSORBED = range(1, 9)

SUFFIX = ".fm"
ARCHIVE_NAME = "archive" + SUFFIX
LOCK_NAME = ".lock"

_HEADER = struct.Struct("=8sIIqqQ16sII")
_USED = struct.Struct("=q")
_RECORD = struct.Struct("=IIq")
_CRC = struct.Struct("=I")
_F64 = struct.Struct("=d")
_I64 = struct.Struct("=q")

SeriesKey = Tuple[str, Tuple[str, ...]]  # (metric name, label values)


class CorruptFile(Exception):
    """A file that is not a valid fastmetrics file (the reason is the message)."""


class Meta(NamedTuple):
    """What an exporter needs to render a series it never declared."""

    type: str                       # "counter" or "stateset"
    name: str
    doc: str
    unit: str
    labelnames: Tuple[str, ...]
    labelvalues: Tuple[str, ...]
    states: Tuple[str, ...]         # enums only

    @property
    def key(self) -> SeriesKey:
        return self.name, self.labelvalues


class EnumValue(NamedTuple):
    """An enum word, decoded."""

    index: int                      # of the current state
    stamp_ns: int                   # wall clock when it was set (ns since the epoch)


class ParsedFile(NamedTuple):
    path: str
    uid: bytes
    pid: int
    created_ns: int
    archive: bool
    counters: Dict[SeriesKey, float]         # summed over the file's slots
    enums: Dict[SeriesKey, EnumValue]
    metas: Dict[SeriesKey, Meta]             # of every series in counters and enums
    absorbed: Set[bytes]
    problems: List[str]                      # series left out, and why
    live: Optional[bool] = None              # owner alive (its flock held), when asked


class Header(NamedTuple):
    """The header fields (see the table above)."""

    magic: bytes
    version: int
    flags: int
    pid: int
    created_ns: int
    capacity: int
    uid: bytes
    order: int
    crc: int


def max_states(version: int) -> int:
    """How many states an enum word of a ``version`` file can hold."""
    return 1 << _WORD_FORMATS[version][0]


def decode_word(version: int, word: int) -> EnumValue:
    """The state index and stamp of an enum word of a ``version`` file (a
    version :func:`read` accepts; ``KeyError`` otherwise)."""
    bits, unit = _WORD_FORMATS[version]
    return EnumValue(word & ((1 << bits) - 1), (word >> bits) * unit)


def encode_word(value: EnumValue) -> int:
    """``value`` as a word of the current :data:`VERSION` (the stamp rounded down)."""
    bits, unit = _WORD_FORMATS[VERSION]
    return value.index | ((value.stamp_ns // unit) << bits)


def align(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def header(pid: int, created_ns: int, capacity: int, uid: bytes, flags: int = 0, version: int = VERSION) -> bytes:
    """The 128-byte header with ``used`` = end of the header."""
    head = _HEADER.pack(MAGIC, version, flags, pid, created_ns, capacity, uid, ORDER_MARK, 0)[:60]
    head += _CRC.pack(zlib.crc32(head)) + _USED.pack(HEADER_SIZE)
    return head.ljust(HEADER_SIZE, b"\0")


def meta_payload(meta: Meta, prefix: bytes = b"") -> bytes:
    """crc + ``prefix`` (a packed value, for archive records) + JSON."""
    doc: Dict[str, Any] = {
        "type": meta.type, "name": meta.name, "doc": meta.doc, "unit": meta.unit,
        "labelnames": list(meta.labelnames), "labelvalues": list(meta.labelvalues),
    }
    if meta.type == "stateset":
        doc["states"] = list(meta.states)
    body = prefix + json.dumps(doc, separators=(",", ":")).encode()
    return _CRC.pack(zlib.crc32(body)) + body


def _checked_body(payload: bytes) -> bytes:
    if len(payload) < 4:
        raise CorruptFile("short metadata record")
    (crc,) = _CRC.unpack_from(payload)
    body = payload[4:]
    if zlib.crc32(body) != crc:
        raise CorruptFile("metadata checksum mismatch")
    return body


def _parse_meta(body: bytes, kind: str) -> Meta:
    """The metadata in ``body``, if an exporter can serve it; CorruptFile if not."""
    try:
        doc = json.loads(body)
        meta = Meta(doc["type"], doc["name"], doc["doc"], doc["unit"], tuple(doc["labelnames"]),
                    tuple(doc["labelvalues"]), tuple(doc.get("states", ())))
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise CorruptFile(f"bad metadata: {type(e).__name__}: {str(e)[:200]}") from None
    strings = (meta.name, meta.doc, meta.unit) + meta.labelnames + meta.labelvalues + meta.states
    # Names were validated by prometheus_client when the metric was created;
    # here the shape is checked (the CRC catches damaged bytes), and that the
    # collector can build and encode the family (files written before
    # multiprocess mode refused lone surrogates hold some).
    if (meta.type != kind or not all(isinstance(s, str) for s in strings)
            or not meta.name or not all(meta.labelnames)
            or len(meta.labelnames) != len(meta.labelvalues)
            or (kind == "stateset") != bool(meta.states) or len(meta.states) > MAX_STATES):
        raise CorruptFile(f"invalid metadata for {meta.name!r}")
    try:
        for s in strings:
            s.encode("utf-8")
    except UnicodeEncodeError:
        raise CorruptFile(f"metadata of {meta.name!r} is not valid UTF-8 ({s!r})") from None
    try:
        Metric(meta.name, meta.doc, meta.type, meta.unit)
    except ValueError as e:
        raise CorruptFile(f"metadata of {meta.name!r} cannot be served: {e}") from None
    return meta


def read(path: str) -> ParsedFile:
    """Parse and validate one file.  Raises :class:`CorruptFile` (truncated,
    foreign, unsupported version, corrupt, not a regular file) or ``OSError``."""
    reader = Reader()
    try:
        return reader.read(path)
    finally:
        reader.close()


_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0)
_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket",
          stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device"}


def open_entry(path: str) -> Tuple[int, os.stat_result]:
    """Open a directory entry for reading: ``(descriptor, its fstat)``, for a
    regular file only.  Never blocks (a FIFO opens at once, then is refused)
    and never follows a symbolic link (``ELOOP``); the descriptor is not
    inherited by child processes (Python's default).  The caller closes it.
    Raises FileNotFoundError (gone), :class:`CorruptFile` (not a regular
    file) or another ``OSError`` (cannot be opened)."""
    fd = os.open(path, _OPEN_FLAGS)
    try:
        st = os.fstat(fd)
    except BaseException:
        os.close(fd)
        raise
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise CorruptFile(f"not a regular file ({_KINDS.get(stat.S_IFMT(st.st_mode), 'unknown type')})")
    return fd, st


def read_header(fd: int) -> Header:
    """The validated header of an open file (CorruptFile if invalid)."""
    return _check_header(os.pread(fd, USED_OFFSET, 0))


def no_readahead(mm: mmap.mmap) -> None:
    """Fault pages of ``mm`` in one at a time.  A process file is sparse and
    mostly holes; with the default readahead (up to ``read_ahead_kb``, often
    MiBs) the first touch would fill that much page cache with zeros, per file
    and per reader."""
    if hasattr(mmap, "MADV_RANDOM"):
        mm.madvise(mmap.MADV_RANDOM)


def _load_used(mm: mmap.mmap) -> int:
    """``used``, read with one aligned 8-byte load: its writer may be storing
    it right now, and ``struct`` would read it byte by byte (a torn value)."""
    with memoryview(mm) as view, view[USED_OFFSET:USED_OFFSET + 8] as field, field.cast("q") as word:
        return int(word[0])


# What a plan reads: (counters: (key, meta, float64 indices), enums: (key, meta, int64 index),
# problems: enums without a word)
_Plan = Tuple[List[Tuple[SeriesKey, Meta, Tuple[int, ...]]], List[Tuple[SeriesKey, Meta, int]], List[str]]


class _Layout:
    """What the records of one file below ``scanned`` say.  Records below
    ``used`` never change once published, so this is walked once and then
    only extended; the counts themselves are re-read on every read, through
    ``plan`` (rebuilt when a walk found new records)."""

    __slots__ = ("head", "header", "scanned", "chunks", "words", "counter_slots", "enum_slots", "retired",
                 "counters", "enums", "metas", "absorbed", "problems", "plan")

    def __init__(self, head: bytes) -> None:
        self.head = head                                 # header bytes 0..63, as validated
        self.header = _check_header(head)
        self.scanned = HEADER_SIZE
        self.chunks: Dict[int, List[int]] = {}           # chunk index -> payload offsets (one per thread)
        self.words: Dict[int, int] = {}                  # chunk index -> payload offset
        self.counter_slots: Dict[int, Meta] = {}
        self.enum_slots: Dict[int, Meta] = {}
        self.retired: Set[int] = set()
        self.counters: Dict[SeriesKey, float] = {}       # archive records
        self.enums: Dict[SeriesKey, EnumValue] = {}
        self.metas: Dict[SeriesKey, Meta] = {}
        self.absorbed: Set[bytes] = set()
        self.problems: List[str] = []                    # records left out by the walk
        self.plan: Optional[_Plan] = None

    def make_plan(self) -> _Plan:
        mask = CHUNK_SLOTS - 1
        counters = [(meta.key, meta, tuple((start >> 3) + (slot & mask)
                                           for start in self.chunks.get(slot >> CHUNK_BITS, ())))
                    for slot, meta in self.counter_slots.items() if slot not in self.retired]
        enums, problems = [], []
        for slot, meta in self.enum_slots.items():
            start = self.words.get(slot >> CHUNK_BITS)
            if start is None:
                problems.append(f"{_series_name(meta)}: enum without a word record; series skipped")
            else:
                enums.append((meta.key, meta, (start >> 3) + (slot & mask)))
        self.plan = (counters, enums, problems)
        return self.plan


class Reader:
    """Reads files, remembering per file (path, device, inode) the records it
    already walked and per metadata payload its parsed form, so reading the
    same files again costs one walk of what was appended plus the counts.

    Validation is the same as a fresh read: a file whose header bytes change
    (its random uid is in them) is walked again from the start.  Not
    thread-safe (a collector serialises its scrapes); memory is O(files read
    since the last :meth:`sweep` + distinct metadata).
    """

    _META_CACHE_MAX = 16384

    def __init__(self) -> None:
        self._layouts: Dict[Tuple[str, int, int], _Layout] = {}
        self._touched: Set[Tuple[str, int, int]] = set()
        self._metas: Dict[Tuple[bytes, str], Union[Meta, str]] = {}
        # Mappings kept between reads (a fresh one costs ~10 us: mmap, faults,
        # munmap); each holds a descriptor, so at most a quarter of the limit.
        self._mapped: Dict[Tuple[str, int, int], Tuple[mmap.mmap, int]] = {}
        self._max_mapped = _descriptor_budget()

    def sweep(self) -> None:
        """Forget (and unmap) the files not read since the previous sweep."""
        for key in [key for key in self._layouts if key not in self._touched]:
            del self._layouts[key]
        for key in [key for key in self._mapped if key not in self._touched]:
            self._unmap(key)
        self._touched.clear()

    def close(self) -> None:
        """Unmap every file (the reader stays usable)."""
        for key in list(self._mapped):
            self._unmap(key)

    def _unmap(self, key: Tuple[str, int, int]) -> None:
        mapped = self._mapped.pop(key, None)
        if mapped is not None:
            mapped[0].close()

    def read(self, path: str, probe_live: bool = False) -> ParsedFile:
        """Parse and validate one file (opened with :func:`open_entry`); see
        :func:`read`.  With ``probe_live`` the result's ``live`` says whether
        the file's owner holds its lock."""
        fd, st = open_entry(path)
        try:
            pf = self.read_open(path, fd, st)
            return pf._replace(live=locked_by_other(fd)) if probe_live else pf
        finally:
            os.close(fd)

    def read_open(self, path: str, fd: int, st: os.stat_result) -> ParsedFile:
        """:meth:`read` of a file the caller opened with :func:`open_entry`
        (``st`` its fstat), e.g. to hold a lock on it while reading."""
        if st.st_size < HEADER_SIZE:
            raise CorruptFile(f"truncated: {st.st_size} bytes, shorter than the header")
        key = (path, st.st_dev, st.st_ino)
        self._touched.add(key)
        mapped = self._mapped.get(key)
        if mapped is not None and mapped[1] != st.st_size:
            self._unmap(key)
            mapped = None
        if mapped is not None:
            mm, keep = mapped[0], True
        else:
            mm = mmap.mmap(fd, st.st_size, access=mmap.ACCESS_READ)
            no_readahead(mm)
            keep = len(self._mapped) < self._max_mapped
            if keep:
                self._mapped[key] = (mm, st.st_size)
        try:
            return self._parse(key, mm, st.st_size)
        except CorruptFile:
            self._layouts.pop(key, None)
            self._unmap(key)
            raise
        finally:
            if not keep:
                mm.close()

    def _parse(self, key: Tuple[str, int, int], mm: mmap.mmap, size: int) -> ParsedFile:
        layout = self._layouts.get(key)
        if layout is None or mm[:USED_OFFSET] != layout.head:
            layout = self._layouts[key] = _Layout(mm[:USED_OFFSET])
        head = layout.header
        used = _load_used(mm)
        if not HEADER_SIZE <= used <= head.capacity or used % ALIGN or used < layout.scanned:
            raise CorruptFile(f"bad used offset {used}")
        if size < used:
            raise CorruptFile(f"truncated: {size} bytes, {used} in use")
        archive = bool(head.flags & FLAG_ARCHIVE)
        if used > layout.scanned:
            self._walk(mm, layout, used, archive)
        if archive:
            return ParsedFile(key[0], head.uid, head.pid, head.created_ns, True, dict(layout.counters),
                              dict(layout.enums), dict(layout.metas), set(layout.absorbed), list(layout.problems))
        counter_plan, enum_plan, plan_problems = layout.plan or layout.make_plan()
        counters: Dict[SeriesKey, float] = {}
        enums: Dict[SeriesKey, EnumValue] = {}
        metas: Dict[SeriesKey, Meta] = {}
        bad: Dict[SeriesKey, str] = {}
        if counter_plan or enum_plan:
            # Counts are being stored right now: read them with 8-byte loads.
            with memoryview(mm) as whole, whole[:used] as view, view.cast("d") as as_f64, \
                    view.cast("q") as as_i64:
                for series, meta, indices in counter_plan:
                    value = 0.0
                    for i in indices:
                        value += as_f64[i]
                    if _valid_count(value):
                        counters[series] = counters.get(series, 0.0) + value
                        metas[series] = meta
                    else:
                        bad.setdefault(series, f"{_series_name(meta)}: invalid count {value!r}; series skipped")
                for series, meta, i in enum_plan:
                    word = as_i64[i]
                    enum = _valid_word(head.version, word, meta)
                    if enum is not None:
                        enums[series] = enum
                        metas[series] = meta
                    else:
                        bad.setdefault(series, f"{_series_name(meta)}: invalid enum word {word}; series skipped")
        for series in bad:
            counters.pop(series, None)
            enums.pop(series, None)
            metas.pop(series, None)
        return ParsedFile(key[0], head.uid, head.pid, head.created_ns, False, counters, enums, metas, set(),
                          layout.problems + plan_problems + list(bad.values()))

    def _walk(self, mm: mmap.mmap, layout: _Layout, used: int, archive: bool) -> None:
        """Walk the records from ``layout.scanned`` up to ``used``."""
        layout.plan = None
        off = layout.scanned
        while off < used:
            if used - off < _RECORD.size:
                raise CorruptFile(f"record header past the end at {off}")
            kind, length, arg = _RECORD.unpack_from(mm, off)
            if kind == 0:
                break  # published after this reader looked (weakly ordered CPU): not visible yet
            data_kind = kind in (CHUNK, WORDS)
            start = off + (DATA_OFF if data_kind else META_OFF)
            end = align(start + length)
            if end > used:
                raise CorruptFile(f"record at {off} runs past the end")
            if data_kind:
                if archive or length != CHUNK_BYTES or not 0 <= arg < MAX_CHUNKS:
                    raise CorruptFile(f"bad chunk record at {off}")
                if kind == CHUNK:
                    layout.chunks.setdefault(arg, []).append(start)
                elif layout.words.setdefault(arg, start) != start:
                    raise CorruptFile(f"duplicate enum words for chunk {arg}")
            elif kind in (COUNTER, ENUM, RETIRE) and not archive:
                self._slot_record(mm, layout, kind, arg, start, length, off)
            elif kind in (TOTAL, LAST) and archive:
                self._archive_record(mm[start:start + length], layout, kind, off)
            elif kind == ABSORBED and archive:
                body = _checked_body(mm[start:start + length])
                if len(body) % 16:
                    raise CorruptFile("bad absorbed-uid record")
                layout.absorbed.update(body[i:i + 16] for i in range(0, len(body), 16))
            else:
                raise CorruptFile(f"unknown record kind {kind} at {off}")
            off = end
        layout.scanned = off

    def _slot_record(self, mm: mmap.mmap, layout: _Layout, kind: int, slot: int, start: int, length: int,
                     off: int) -> None:
        """A COUNTER, ENUM or RETIRE record: a bad one is left out, described."""
        if not 0 <= slot < MAX_SLOTS:
            layout.problems.append(f"record at {off}: bad slot {slot}; skipped")
        elif kind == RETIRE:
            layout.retired.add(slot)
        else:
            meta = self._meta(mm[start:start + length], "counter" if kind == COUNTER else "stateset", 0)
            if isinstance(meta, str):
                layout.problems.append(f"record at {off} (slot {slot}): {meta}; series skipped")
            else:
                (layout.counter_slots if kind == COUNTER else layout.enum_slots)[slot] = meta

    def _archive_record(self, payload: bytes, layout: _Layout, kind: int, off: int) -> None:
        """A TOTAL or LAST record of an archive: a bad one is left out, described."""
        meta = self._meta(payload, "counter" if kind == TOTAL else "stateset", 8)
        if isinstance(meta, str):
            layout.problems.append(f"record at {off}: {meta}; series skipped")
            return
        if kind == TOTAL:
            (value,) = _F64.unpack_from(payload, 4)
            if not _valid_count(value):
                layout.problems.append(f"{_series_name(meta)}: invalid count {value!r}; series skipped")
                return
            layout.counters[meta.key] = layout.counters.get(meta.key, 0.0) + value
        else:
            (word,) = _I64.unpack_from(payload, 4)
            enum = _valid_word(layout.header.version, word, meta)
            if enum is None:
                layout.problems.append(f"{_series_name(meta)}: invalid enum word {word}; series skipped")
                return
            layout.enums[meta.key] = enum
        layout.metas[meta.key] = meta

    def _meta(self, payload: bytes, kind: str, prefix: int) -> Union[Meta, str]:
        """The metadata in ``payload`` (crc + ``prefix`` bytes + JSON), or why
        it is invalid; checked once per distinct payload: every process
        declares the same metrics."""
        meta = self._metas.get((payload, kind))
        if meta is None:
            try:
                meta = _parse_meta(_checked_body(payload)[prefix:], kind)
            except CorruptFile as e:
                meta = str(e)
            if len(self._metas) >= self._META_CACHE_MAX:
                self._metas.clear()
            self._metas[(payload, kind)] = meta
        return meta


def _series_name(meta: Meta) -> str:
    """``'name'{label='value',...}`` for messages."""
    labels = ",".join(f"{k}={v!r}" for k, v in zip(meta.labelnames, meta.labelvalues))
    return f"{meta.name!r}{{{labels}}}" if labels else repr(meta.name)


def _descriptor_budget() -> int:
    """How many files a :class:`Reader` keeps mapped: a quarter of this
    process's descriptor limit, at most 1024."""
    try:
        import resource
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return 0
    if soft == resource.RLIM_INFINITY:
        return 1024
    return max(0, min(1024, soft // 4))


def locked_by_other(fd: int) -> bool:
    """Whether another open file description holds an exclusive ``flock`` on
    ``fd``'s file (a live owner).  The shared lock taken to find out is
    released at once: a kept mapping shares ``fd``'s open file description,
    and would otherwise keep the lock and make the file look alive."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def _check_header(head: bytes) -> Header:
    """The fields of validated header bytes 0..63 (``used`` excluded: it moves)."""
    if len(head) < USED_OFFSET:
        raise CorruptFile(f"truncated: {len(head)} bytes, shorter than the header")
    fields = Header(*_HEADER.unpack_from(head))
    if fields.magic != MAGIC:
        raise CorruptFile("foreign file: bad magic")
    if fields.order != ORDER_MARK:
        raise CorruptFile("foreign file: other byte order")
    if fields.version not in _WORD_FORMATS:
        raise CorruptFile(f"unsupported version {fields.version}")
    if zlib.crc32(head[:60]) != fields.crc:
        raise CorruptFile("header checksum mismatch")
    return fields


def _valid_count(value: float) -> bool:
    """Whether ``value`` is a count a counter can hold: +Inf is one (an
    ``inc(inf)``, or a sum past the largest float); NaN and negatives are not."""
    return value >= 0.0   # False for NaN


def _valid_word(version: int, word: int, meta: Meta) -> Optional[EnumValue]:
    """The decoded word, or None if it names no state of ``meta``."""
    if word < 0:
        return None
    enum = decode_word(version, word)
    return enum if enum.index < len(meta.states) else None


def write_archive(path: str, counters: Dict[SeriesKey, float], enums: Dict[SeriesKey, EnumValue],
                  metas: Dict[SeriesKey, Meta], absorbed: Set[bytes], uid: bytes, created_ns: int) -> None:
    """Write an archive file of the current version atomically (temp file,
    fsync, rename)."""
    records = []
    for key, value in counters.items():
        records.append((TOTAL, meta_payload(metas[key], _F64.pack(value))))
    for key, enum in enums.items():
        records.append((LAST, meta_payload(metas[key], _I64.pack(encode_word(enum)))))
    if absorbed:
        body = b"".join(sorted(absorbed))
        records.append((ABSORBED, _CRC.pack(zlib.crc32(body)) + body))
    chunks = []
    for kind, payload in records:
        rec = _RECORD.pack(kind, len(payload), 0) + payload
        chunks.append(rec.ljust(align(len(rec)), b"\0"))
    size = HEADER_SIZE + sum(len(c) for c in chunks)
    head = bytearray(header(0, created_ns, size, uid, FLAG_ARCHIVE))
    _USED.pack_into(head, USED_OFFSET, size)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(head)
            f.writelines(chunks)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def new_uid() -> bytes:
    return os.urandom(16)


def process_file_name(pid: int, uid: bytes) -> str:
    return f"{pid}-{uid.hex()}{SUFFIX}"


def is_process_file(name: str) -> bool:
    return name.endswith(SUFFIX) and name != ARCHIVE_NAME and not name.startswith(".")


def uid_of_name(name: str) -> Optional[bytes]:
    """The uid a :func:`process_file_name` carries, or None if ``name`` is
    not one."""
    pid, sep, rest = name.partition("-")
    uid_hex = rest[:-len(SUFFIX)]
    if (not sep or not pid.isdigit() or not rest.endswith(SUFFIX) or len(uid_hex) != 32
            or uid_hex.strip("0123456789abcdef")):
        return None
    return bytes.fromhex(uid_hex)


def parse_optional(path: str, reader: Optional[Reader] = None) -> Optional[ParsedFile]:
    """:func:`read` (with ``reader``'s memory, if given), or None if the file
    does not exist."""
    try:
        return reader.read(path) if reader is not None else read(path)
    except FileNotFoundError:
        return None
