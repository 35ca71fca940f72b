"""On-disk format of multiprocess mode, and a validating reader.

One file per process, ``<pid>-<uid>.fm``, plus one archive, ``archive.fm``,
holding what compaction folded in from exited processes.  Native byte order
and word size (the files never leave the machine; a header field proves it).

Header (128 bytes)::

    0   magic       8s   b"FMSHARD\\x00"
    8   version     u32  1
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
WORDS       c     512 int64: enum words of those slots, index | (stamp_us << 12)
COUNTER     slot  crc u32 + JSON metadata of the counter value in ``slot``
ENUM        slot  crc u32 + JSON metadata of the enum in ``slot``
RETIRE      slot  (empty) the slot was replaced by ``reset()``; ignore it
TOTAL       0     crc u32 + float64 + JSON metadata (archive: a folded counter)
LAST        0     crc u32 + int64 word + JSON metadata (archive: latest enum word)
ABSORBED    0     crc u32 + 16-byte uids of the process files folded in
==========  ====  ==============================================================

A zero ``kind`` below ``used`` is a record not yet visible to this reader: the
walk stops there.  Anything else that does not fit raises :class:`CorruptFile`.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
import zlib
from typing import Any, Dict, List, NamedTuple, Optional, Set, Tuple

MAGIC = b"FMSHARD\x00"
VERSION = 1
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
STATE_BITS = 12
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


class ParsedFile(NamedTuple):
    path: str
    uid: bytes
    pid: int
    created_ns: int
    archive: bool
    counters: Dict[SeriesKey, float]         # summed over the file's slots
    enums: Dict[SeriesKey, int]               # the word: index | stamp << 12
    metas: Dict[SeriesKey, Meta]
    absorbed: Set[bytes]


def align(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def header(pid: int, created_ns: int, capacity: int, uid: bytes, flags: int = 0) -> bytes:
    """The 128-byte header with ``used`` = end of the header."""
    head = _HEADER.pack(MAGIC, VERSION, flags, pid, created_ns, capacity, uid, ORDER_MARK, 0)[:60]
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
    try:
        doc = json.loads(body)
        meta = Meta(doc["type"], doc["name"], doc["doc"], doc["unit"], tuple(doc["labelnames"]),
                    tuple(doc["labelvalues"]), tuple(doc.get("states", ())))
    except (ValueError, KeyError, TypeError) as e:
        raise CorruptFile(f"bad metadata: {e}") from None
    strings = (meta.name, meta.doc, meta.unit) + meta.labelnames + meta.labelvalues + meta.states
    # Names were validated by prometheus_client when the metric was created;
    # here only the shape is checked (the CRC catches damaged bytes).
    if (meta.type != kind or not all(isinstance(s, str) for s in strings)
            or not meta.name or not all(meta.labelnames)
            or len(meta.labelnames) != len(meta.labelvalues)
            or (kind == "stateset") != bool(meta.states) or len(meta.states) > MAX_STATES):
        raise CorruptFile(f"invalid metadata for {meta.name!r}")
    return meta


def read(path: str) -> ParsedFile:
    """Parse and validate one file.  Raises :class:`CorruptFile` (truncated,
    foreign, unsupported version, corrupt) or ``OSError``."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < HEADER_SIZE:
            raise CorruptFile(f"truncated: {size} bytes, shorter than the header")
        with mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as mm:
            return _parse(path, mm, size)


def _parse(path: str, mm: mmap.mmap, size: int) -> ParsedFile:
    magic, version, flags, pid, created_ns, capacity, uid, order, crc = _HEADER.unpack_from(mm)
    if magic != MAGIC:
        raise CorruptFile("foreign file: bad magic")
    if order != ORDER_MARK:
        raise CorruptFile("foreign file: other byte order")
    if version != VERSION:
        raise CorruptFile(f"unsupported version {version}")
    if zlib.crc32(mm[:60]) != crc:
        raise CorruptFile("header checksum mismatch")
    (used,) = _USED.unpack_from(mm, USED_OFFSET)
    if not HEADER_SIZE <= used <= capacity or used % ALIGN:
        raise CorruptFile(f"bad used offset {used}")
    if size < used:
        raise CorruptFile(f"truncated: {size} bytes, {used} in use")

    chunks: Dict[int, List[int]] = {}   # chunk index -> payload offsets (one per thread)
    words: Dict[int, int] = {}          # chunk index -> payload offset
    counter_slots: Dict[int, Meta] = {}
    enum_slots: Dict[int, Meta] = {}
    retired: Set[int] = set()
    counters: Dict[SeriesKey, float] = {}
    enums: Dict[SeriesKey, int] = {}
    metas: Dict[SeriesKey, Meta] = {}
    absorbed: Set[bytes] = set()
    archive = bool(flags & FLAG_ARCHIVE)

    off = HEADER_SIZE
    while off < used:
        if used - off < _RECORD.size:
            raise CorruptFile(f"record header past the end at {off}")
        kind, length, arg = _RECORD.unpack_from(mm, off)
        if kind == 0:
            break  # published after this reader looked: not visible yet
        data_kind = kind in (CHUNK, WORDS)
        start = off + (DATA_OFF if data_kind else META_OFF)
        end = align(start + length)
        if end > used:
            raise CorruptFile(f"record at {off} runs past the end")
        if data_kind:
            if archive or length != CHUNK_BYTES or not 0 <= arg < MAX_CHUNKS:
                raise CorruptFile(f"bad chunk record at {off}")
            if kind == CHUNK:
                chunks.setdefault(arg, []).append(start)
            elif words.setdefault(arg, start) != start:
                raise CorruptFile(f"duplicate enum words for chunk {arg}")
        elif kind in (COUNTER, ENUM, RETIRE) and not archive:
            if not 0 <= arg < MAX_CHUNKS * CHUNK_SLOTS:
                raise CorruptFile(f"bad slot {arg} at {off}")
            if kind == RETIRE:
                retired.add(arg)
            else:
                meta = _parse_meta(_checked_body(mm[start:start + length]),
                                   "counter" if kind == COUNTER else "stateset")
                (counter_slots if kind == COUNTER else enum_slots)[arg] = meta
        elif kind in (TOTAL, LAST) and archive:
            body = _checked_body(mm[start:start + length])
            meta = _parse_meta(body[8:], "counter" if kind == TOTAL else "stateset")
            if kind == TOTAL:
                (value,) = _F64.unpack_from(body)
                counters[meta.key] = counters.get(meta.key, 0.0) + _valid_count(value, meta)
            else:
                (word,) = _I64.unpack_from(body)
                enums[meta.key] = _valid_word(word, meta)
            metas[meta.key] = meta
        elif kind == ABSORBED and archive:
            body = _checked_body(mm[start:start + length])
            if len(body) % 16:
                raise CorruptFile("bad absorbed-uid record")
            absorbed.update(body[i:i + 16] for i in range(0, len(body), 16))
        else:
            raise CorruptFile(f"unknown record kind {kind} at {off}")
        off = end

    if counter_slots or enum_slots:
        view = memoryview(mm)[:used]
        as_f64, as_i64 = view.cast("d"), view.cast("q")
        try:
            for slot, meta in counter_slots.items():
                if slot in retired:
                    continue
                c, i = slot >> CHUNK_BITS, slot & (CHUNK_SLOTS - 1)
                value = 0.0
                for start in chunks.get(c, ()):
                    value += as_f64[(start >> 3) + i]
                counters[meta.key] = counters.get(meta.key, 0.0) + _valid_count(value, meta)
                metas[meta.key] = meta
            for slot, meta in enum_slots.items():
                words_start = words.get(slot >> CHUNK_BITS)
                if words_start is None:
                    raise CorruptFile(f"enum {meta.name!r} has no word")
                word = as_i64[(words_start >> 3) + (slot & (CHUNK_SLOTS - 1))]
                enums[meta.key] = _valid_word(word, meta)
                metas[meta.key] = meta
        finally:
            as_f64.release()
            as_i64.release()
            view.release()
    return ParsedFile(path, uid, pid, created_ns, archive, counters, enums, metas, absorbed)


def _valid_count(value: float, meta: Meta) -> float:
    if not (value >= 0.0 and math.isfinite(value)):
        raise CorruptFile(f"invalid count {value!r} for {meta.name!r}")
    return value


def _valid_word(word: int, meta: Meta) -> int:
    if word < 0 or (word & (MAX_STATES - 1)) >= len(meta.states):
        raise CorruptFile(f"invalid enum word {word!r} for {meta.name!r}")
    return word


def write_archive(path: str, counters: Dict[SeriesKey, float], enums: Dict[SeriesKey, int],
                  metas: Dict[SeriesKey, Meta], absorbed: Set[bytes], uid: bytes, created_ns: int) -> None:
    """Write an archive file atomically (temp file, fsync, rename)."""
    records = []
    for key, value in counters.items():
        records.append((TOTAL, meta_payload(metas[key], _F64.pack(value))))
    for key, word in enums.items():
        records.append((LAST, meta_payload(metas[key], _I64.pack(word))))
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


def parse_optional(path: str) -> Optional[ParsedFile]:
    """:func:`read`, or None if the file does not exist."""
    try:
        return read(path)
    except FileNotFoundError:
        return None
