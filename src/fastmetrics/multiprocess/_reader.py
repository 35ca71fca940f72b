"""Reading one file: a validating, incremental reader.

What the walk of a file's records cannot step over (a bad header, ``used``,
record length or chunk record) raises :class:`CorruptFile` for the whole file.
A bad value or metadata record costs only its series: it is left out and
described in :attr:`ParsedFile.problems`.  A count is any float a counter can
hold, +Inf included; NaN and negative counts are invalid.  The layout is
:mod:`._format`'s.
"""

from __future__ import annotations

import json
import mmap
import os
import stat
import zlib
from collections import OrderedDict
from typing import Dict, List, NamedTuple, Optional, Set, Tuple, Union

from prometheus_client.metrics_core import Metric

from . import _format as fmt
from . import _reaper
from ._format import EnumValue, Header, Meta, SeriesKey
from ._locks import owner_alive
from ._plan import Plan, make_plan, read_counts, series_name, valid_count, valid_word
from ._segments import Segment, Segments

_FileKey = Tuple[str, int, int]   # (path, device, inode)


class CorruptFile(Exception):
    """A file that is not a valid fastmetrics file (the reason is the message)."""


class ParsedFile(NamedTuple):
    """One file's series, validated."""

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
    live: Optional[bool] = None              # owner alive (see owner_alive), when asked


def read(path: str) -> ParsedFile:
    """Parse and validate one file.  Raises :class:`CorruptFile` (truncated,
    foreign, unsupported version, corrupt, not a regular file) or ``OSError``."""
    reader = Reader()
    try:
        return reader.read(path)
    finally:
        reader.close()


def parse_optional(path: str, reader: Optional[Reader] = None) -> Optional[ParsedFile]:
    """:func:`read` (with ``reader``'s memory, if given), or None if the file
    does not exist."""
    try:
        return reader.read(path) if reader is not None else read(path)
    except FileNotFoundError:
        return None


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
    return _check_header(os.pread(fd, fmt.HDR_USED, 0))


def no_readahead(mm: mmap.mmap) -> None:
    """Fault pages of ``mm`` in one at a time.  A process file is sparse and
    mostly holes; with the default readahead (up to ``read_ahead_kb``, often
    MiBs) the first touch would fill that much page cache with zeros, per file
    and per reader."""
    if hasattr(mmap, "MADV_RANDOM"):
        mm.madvise(mmap.MADV_RANDOM)


def _check_header(head: bytes) -> Header:
    """The fields of validated header bytes 0..63 (``used`` excluded: it moves)."""
    if len(head) < fmt.HDR_USED:
        raise CorruptFile(f"truncated: {len(head)} bytes, shorter than the header")
    fields = Header._make(fmt.HEADER.unpack_from(head))
    if fields.magic != fmt.MAGIC:
        raise CorruptFile("foreign file: bad magic")
    if fields.order != fmt.ORDER_MARK:
        raise CorruptFile("foreign file: other byte order")
    if fields.version not in fmt.WORD_FORMATS:
        raise CorruptFile(f"unsupported version {fields.version}")
    if zlib.crc32(head[:fmt.HDR_CRC_END]) != fields.crc:
        raise CorruptFile("header checksum mismatch")
    return fields


def _load_used(mm: mmap.mmap) -> int:
    """``used``, read with one aligned 8-byte load: its writer may be storing
    it right now, and ``struct`` would read it byte by byte (a torn value)."""
    with memoryview(mm) as view, view[fmt.HDR_USED:fmt.HDR_USED + 8] as field, field.cast("q") as word:
        return int(word[0])


def _checked_body(payload: bytes) -> bytes:
    """The body of a crc + body payload (CorruptFile if the crc fails)."""
    if len(payload) < fmt.CRC.size:
        raise CorruptFile("short metadata record")
    (crc,) = fmt.CRC.unpack_from(payload)
    body = payload[fmt.CRC.size:]
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
    strings = (meta.name, meta.doc, meta.unit, *meta.labelnames, *meta.labelvalues, *meta.states)
    # Names were validated by prometheus_client when the metric was created;
    # here the shape is checked (the CRC catches damaged bytes), and that the
    # collector can build and encode the family (files written before
    # multiprocess mode refused lone surrogates hold some).
    if (meta.type != kind or not all(isinstance(s, str) for s in strings)
            or not meta.name or not all(meta.labelnames)
            or len(meta.labelnames) != len(meta.labelvalues)
            or (kind == fmt.STATESET) != bool(meta.states) or len(meta.states) > fmt.MAX_STATES):
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


class _Walked:
    """What walking some records found (the walk's target: a file's
    :class:`_Layout`, or a segment's, :mod:`._segments`)."""

    __slots__ = ("absorbed", "chunks", "counter_keys", "counter_slots", "counters", "enum_slots", "enums", "metas",
                 "problems", "retired", "words")

    def __init__(self) -> None:
        self.chunks: Dict[int, List[int]] = {}           # chunk index -> payload offsets (one per thread)
        self.words: Dict[int, int] = {}                  # chunk index -> payload offset
        self.counter_slots: Dict[int, Meta] = {}
        self.counter_keys: Dict[int, SeriesKey] = {}     # their keys, in the same order (shared by the files)
        self.enum_slots: Dict[int, Meta] = {}
        self.retired: Set[int] = set()
        self.counters: Dict[SeriesKey, float] = {}       # archive records
        self.enums: Dict[SeriesKey, EnumValue] = {}
        self.metas: Dict[SeriesKey, Meta] = {}
        self.absorbed: Set[bytes] = set()
        self.problems: List[str] = []                    # records left out by the walk

    def extend(self, walked: _Walked) -> None:
        """Add what a walk of the process-file records that follow found, as
        if this walk had gone on over them (CorruptFile as it would)."""
        for chunk, starts in walked.chunks.items():
            self.chunks.setdefault(chunk, []).extend(starts)
        for chunk, start in walked.words.items():
            if self.words.setdefault(chunk, start) != start:
                raise CorruptFile(f"duplicate enum words for chunk {chunk}")
        self.counter_slots.update(walked.counter_slots)
        self.counter_keys.update(walked.counter_keys)
        self.enum_slots.update(walked.enum_slots)
        self.retired |= walked.retired
        self.problems += walked.problems


class _Layout(_Walked):
    """What the records of one file below ``scanned`` say.  Records below
    ``used`` never change once published, so this is walked once and then
    only extended; the counts themselves are re-read on every read, through
    ``plan`` (rebuilt when a walk found new records)."""

    __slots__ = ("head", "header", "plan", "scanned", "segments")

    def __init__(self, head: bytes) -> None:
        super().__init__()
        self.head = head                                 # header bytes 0..63, as validated
        self.header = _check_header(head)
        self.scanned = fmt.HDR_SIZE
        self.plan: Optional[Plan] = None
        # the kept segments walked from the first record up to ``scanned``, in
        # order; None when some records were walked outside one (an archive)
        self.segments: Optional[List[Segment[_Walked]]] = []

    def make_plan(self) -> Plan:
        self.plan = make_plan(self.counter_slots, self.counter_keys, self.enum_slots, self.chunks, self.words,
                              self.retired)
        return self.plan


class Reader:
    """Reads files, remembering per file (path, device, inode) the records it
    already walked and per metadata payload its parsed form, so reading the
    same files again costs one walk of what was appended plus the counts.

    A file not read before is walked in segments shared with the files read
    before it (:mod:`._segments`), so workers of one program cost one walk
    of the records they have in common; files walked in the same segments
    share their plan (:mod:`._plan`).

    Validation is the same as a fresh read: a file whose header bytes change
    (its random uid is in them) is walked again from the start.  Not
    thread-safe (a collector serialises its scrapes); memory is O(files read
    since the last :meth:`sweep` + distinct metadata), plus the kept
    segments (at most :data:`~._segments.MAX_BYTES` of their bytes) and
    :attr:`_MAX_PLANS` plans.
    """

    _META_CACHE_MAX = 16384
    _MAX_PLANS = 8

    def __init__(self) -> None:
        self._layouts: Dict[_FileKey, _Layout] = {}
        self._touched: Set[_FileKey] = set()
        self._metas: Dict[Tuple[bytes, str], Union[Meta, str]] = {}
        self._segments: Segments[_Walked] = Segments()
        # plans by the segments a layout was walked in: files with the same
        # records share one (a plan is never mutated)
        self._plans: OrderedDict[Tuple[Segment[_Walked], ...], Plan] = OrderedDict()
        # Mappings kept between reads (a fresh one costs ~10 us: mmap, faults,
        # munmap); each holds a descriptor, so at most a quarter of the limit.
        self._mapped: Dict[_FileKey, Tuple[mmap.mmap, int]] = {}
        self._max_mapped = _descriptor_budget()

    def sweep(self) -> None:
        """Forget the files not read since the previous sweep, and unmap them
        off the request path (:mod:`._reaper`: they were most likely deleted
        by a compaction, and the last mapping of a deleted file is what pays
        for freeing it)."""
        for key in [key for key in self._layouts if key not in self._touched]:
            del self._layouts[key]
        for key in [key for key in self._mapped if key not in self._touched]:
            mapped = self._mapped.pop(key)
            _reaper.release(mapped[0])
        self._touched.clear()

    def close(self) -> None:
        """Unmap every file (the reader stays usable)."""
        for key in list(self._mapped):
            self._unmap(key)

    def _unmap(self, key: _FileKey) -> None:
        mapped = self._mapped.pop(key, None)
        if mapped is not None:
            mapped[0].close()

    def read(self, path: str, probe_live: bool = False) -> ParsedFile:
        """Parse and validate one file (opened with :func:`open_entry`); see
        :func:`read`.  With ``probe_live`` the result's ``live`` says whether
        a live process owns the file (:func:`~._locks.owner_alive`)."""
        fd, st = open_entry(path)
        try:
            pf = self.read_open(path, fd, st)
            return pf._replace(live=owner_alive(fd)) if probe_live else pf
        finally:
            os.close(fd)

    def read_open(self, path: str, fd: int, st: os.stat_result, map_fd: bool = True) -> ParsedFile:
        """:meth:`read` of a file the caller opened with :func:`open_entry`
        (``st`` its fstat), e.g. to hold a lock on it while reading.  With
        ``map_fd=False`` no mapping of ``fd`` outlives the call (a kept
        mapping would keep ``fd``'s lock after the caller closes it); one kept
        from an earlier read is still used."""
        if st.st_size < fmt.HDR_SIZE:
            raise CorruptFile(f"truncated: {st.st_size} bytes, shorter than the header")
        key = (path, st.st_dev, st.st_ino)
        self._touched.add(key)
        mm, keep = self._mapping(key, fd, st.st_size, map_fd)
        try:
            return self._parse(key, mm, st.st_size)
        except CorruptFile:
            self._layouts.pop(key, None)
            self._unmap(key)
            raise
        finally:
            if not keep:
                mm.close()

    def _mapping(self, key: _FileKey, fd: int, size: int, keep_new: bool = True) -> Tuple[mmap.mmap, bool]:
        """A read-only mapping of ``size`` bytes of the file, and whether it
        is kept (else the caller closes it): the one kept from an earlier read
        when the size is the same, else a new one, kept within the budget
        (and only if ``keep_new``)."""
        mapped = self._mapped.get(key)
        if mapped is not None and mapped[1] == size:
            return mapped[0], True
        self._unmap(key)
        mm = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
        no_readahead(mm)
        keep = keep_new and len(self._mapped) < self._max_mapped
        if keep:
            self._mapped[key] = (mm, size)
        return mm, keep

    def _parse(self, key: _FileKey, mm: mmap.mmap, size: int) -> ParsedFile:
        layout = self._layouts.get(key)
        if layout is None or mm[:fmt.HDR_USED] != layout.head:
            layout = self._layouts[key] = _Layout(mm[:fmt.HDR_USED])
        head = layout.header
        used = _load_used(mm)
        if not fmt.HDR_SIZE <= used <= head.capacity or used % fmt.REC_ALIGN or used < layout.scanned:
            raise CorruptFile(f"bad used offset {used}")
        if size < used:
            raise CorruptFile(f"truncated: {size} bytes, {used} in use")
        archive = bool(head.flags & fmt.FLAG_ARCHIVE)
        if used > layout.scanned:
            self._walk(mm, layout, used, archive)
        if archive:
            return ParsedFile(key[0], head.uid, head.pid, head.created_ns, True, dict(layout.counters),
                              dict(layout.enums), dict(layout.metas), set(layout.absorbed), list(layout.problems))
        return self._read_counts(key[0], mm, used, layout)

    def _read_counts(self, path: str, mm: mmap.mmap, used: int, layout: _Layout) -> ParsedFile:
        """A process file's series, its counts read now through its plan."""
        head = layout.header
        plan = layout.plan or self._plan(layout)
        if plan.counters or plan.enums or (plan.batch is not None and plan.batch.keys):
            # Counts are being stored right now: read them with 8-byte loads.
            with memoryview(mm) as whole, whole[:used] as view, view.cast("d") as as_f64, \
                    view.cast("q") as as_i64:
                counters, enums, metas, problems = read_counts(plan, as_f64, as_i64, head.version)
        else:
            counters, enums, metas, problems = {}, {}, {}, list(plan.problems)
        return ParsedFile(path, head.uid, head.pid, head.created_ns, False, counters, enums, metas, set(),
                          layout.problems + problems)

    def _plan(self, layout: _Layout) -> Plan:
        """The plan of ``layout``, shared with the files walked in the same
        segments (the :data:`_MAX_PLANS` most recently used are kept)."""
        if layout.segments is None:
            return layout.make_plan()
        key = tuple(layout.segments)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = layout.make_plan()
            while len(self._plans) > self._MAX_PLANS:
                self._plans.popitem(last=False)
        else:
            self._plans.move_to_end(key)
            layout.plan = plan
        return plan

    def _walk(self, mm: mmap.mmap, layout: _Layout, used: int, archive: bool) -> None:
        """Walk the records from ``layout.scanned`` up to ``used``: a process
        file segment by segment, each taken from :mod:`._segments` if a file
        walked before holds the same one, else walked and kept there."""
        layout.plan = None
        if archive:
            layout.segments = None
            layout.scanned = self._walk_records(mm, layout, layout.scanned, used, layout.header.version)[1]
            return
        off = layout.scanned
        while off < used:
            segment = self._segments.find(mm, off, used)
            if segment is not None:
                layout.extend(segment.walked)
                ended = False
            else:
                walked = _Walked()
                stop, next_ = self._walk_records(mm, walked, off, used, None)
                if next_ == off:
                    break   # a record not visible yet
                layout.extend(walked)
                segment = self._segments.add(mm, off, stop, next_, walked)
                ended = stop == next_ and next_ < used   # on a record not visible yet
            if segment is None:
                layout.segments = None
            elif layout.segments is not None:
                layout.segments.append(segment)
            off = next_ if segment is None else segment.next
            if ended:
                break
        layout.scanned = off

    def _walk_records(self, mm: mmap.mmap, into: _Walked, off: int, used: int,
                      archive_version: Optional[int]) -> Tuple[int, int]:
        """Walk the records from ``off`` up to ``used`` one by one, into
        ``into`` (an archive's if ``archive_version`` is its version, else a
        process file's, whose walk stops after a chunk or word record).
        ``(stop, next)``: ``next`` is the offset of the first record not
        walked, and ``stop`` the start of the last record's payload if it was
        a chunk or word record (``next`` otherwise).  A record whose kind is
        still zero (published after this reader looked, on a weakly ordered
        CPU) ends the walk before it."""
        archive = archive_version is not None
        while off < used:
            if used - off < fmt.REC_HEAD.size:
                raise CorruptFile(f"record header past the end at {off}")
            kind, length, arg = fmt.REC_HEAD.unpack_from(mm, off)
            if kind == 0:
                break
            start = off + fmt.payload_offset(kind)
            end = fmt.align(start + length)
            if end > used:
                raise CorruptFile(f"record at {off} runs past the end")
            if kind in fmt.DATA_KINDS:
                self._chunk_record(into, kind, arg, start, length, archive, off)
                if not archive:
                    return start, end
            elif kind in (fmt.REC_COUNTER, fmt.REC_ENUM, fmt.REC_RETIRE) and not archive:
                self._slot_record(mm, into, kind, arg, start, length, off)
            elif kind in (fmt.REC_TOTAL, fmt.REC_LAST) and archive_version is not None:
                self._archive_record(mm[start:start + length], into, kind, off, archive_version)
            elif kind == fmt.REC_ABSORBED and archive:
                body = _checked_body(mm[start:start + length])
                if len(body) % fmt.UID_SIZE:
                    raise CorruptFile("bad absorbed-uid record")
                into.absorbed.update(body[i:i + fmt.UID_SIZE] for i in range(0, len(body), fmt.UID_SIZE))
            else:
                raise CorruptFile(f"unknown record kind {kind} at {off}")
            off = end
        return off, off

    @staticmethod
    def _chunk_record(layout: _Walked, kind: int, chunk: int, start: int, length: int, archive: bool,
                      off: int) -> None:
        """A CHUNK or WORDS record (CorruptFile if it is not a valid one)."""
        if archive or length != fmt.CHUNK_BYTES or not 0 <= chunk < fmt.MAX_CHUNKS:
            raise CorruptFile(f"bad chunk record at {off}")
        if kind == fmt.REC_CHUNK:
            layout.chunks.setdefault(chunk, []).append(start)
        elif layout.words.setdefault(chunk, start) != start:
            raise CorruptFile(f"duplicate enum words for chunk {chunk}")

    def _slot_record(self, mm: mmap.mmap, layout: _Walked, kind: int, slot: int, start: int, length: int,
                     off: int) -> None:
        """A COUNTER, ENUM or RETIRE record: a bad one is left out, described."""
        if not 0 <= slot < fmt.MAX_SLOTS:
            layout.problems.append(f"record at {off}: bad slot {slot}; skipped")
        elif kind == fmt.REC_RETIRE:
            layout.retired.add(slot)
        else:
            meta = self._meta(mm[start:start + length], fmt.COUNTER if kind == fmt.REC_COUNTER else fmt.STATESET, 0)
            if isinstance(meta, str):
                layout.problems.append(f"record at {off} (slot {slot}): {meta}; series skipped")
            elif kind == fmt.REC_COUNTER:
                layout.counter_slots[slot] = meta
                layout.counter_keys[slot] = meta.key
            else:
                layout.enum_slots[slot] = meta

    def _archive_record(self, payload: bytes, layout: _Walked, kind: int, off: int, version: int) -> None:
        """A TOTAL or LAST record of an archive: a bad one is left out, described."""
        total = kind == fmt.REC_TOTAL
        packed = fmt.F64 if total else fmt.I64   # the value, between the crc and the JSON
        meta = self._meta(payload, fmt.COUNTER if total else fmt.STATESET, packed.size)
        if isinstance(meta, str):
            layout.problems.append(f"record at {off}: {meta}; series skipped")
            return
        if total:
            (value,) = packed.unpack_from(payload, fmt.CRC.size)
            if not valid_count(value):
                layout.problems.append(f"{series_name(meta)}: invalid count {value!r}; series skipped")
                return
            layout.counters[meta.key] = layout.counters.get(meta.key, 0.0) + value
        else:
            (word,) = packed.unpack_from(payload, fmt.CRC.size)
            enum = valid_word(version, word, meta)
            if enum is None:
                layout.problems.append(f"{series_name(meta)}: invalid enum word {word}; series skipped")
                return
            layout.enums[meta.key] = enum
        layout.metas[meta.key] = meta

    def _meta(self, payload: bytes, kind: str, prefix: int) -> Union[Meta, str]:
        """The metadata in ``payload`` (crc + ``prefix`` bytes + JSON), or why
        it is invalid; checked once per distinct payload: every process
        declares the same metrics.  An archive record's payload (``prefix``:
        its value) is checked against its crc each time, and its JSON parsed
        once: every archive repeats the metadata of the one before."""
        key: Tuple[bytes, str] = (payload, kind)
        if prefix:
            try:
                key = (_checked_body(payload)[prefix:], kind + "/json")
            except CorruptFile as e:
                return str(e)
        meta = self._metas.get(key)
        if meta is None:
            try:
                meta = _parse_meta(key[0] if prefix else _checked_body(payload), kind)
            except CorruptFile as e:
                meta = str(e)
            if len(self._metas) >= self._META_CACHE_MAX:
                self._metas.clear()
            self._metas[key] = meta
        return meta
