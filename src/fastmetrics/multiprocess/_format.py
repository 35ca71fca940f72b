"""The on-disk layout of multiprocess mode: its one definition.

The reader, the writer, compaction and the tests' hand-made files take every
offset, size, kind and name from here.  The C store (``_shards.h``) and the
pure-Python core write the same layout; ``tests/multiprocess/test_format.py``
asserts that the constants they expose equal these.  Standard library only,
and no import of the cores or of :mod:`fastmetrics.metrics` (the
pure-Python core's arena writer imports this module while the package loads).

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

============  ====  ============================================================
kind          arg   payload
============  ====  ============================================================
REC_CHUNK     c     512 float64: one thread's partial sums of slots c*512..c*512+511
REC_WORDS     c     512 int64: enum words of those slots (below)
REC_COUNTER   slot  crc u32 + JSON metadata of the counter value in ``slot``; a
                    series may have several slots (one per ``reset()``): summed
REC_ENUM      slot  crc u32 + JSON metadata of the enum in ``slot``
REC_RETIRE    slot  (empty; version 1 writers) the slot was reset: ignore it
REC_TOTAL     0     crc u32 + float64 + JSON metadata (archive: a folded counter)
REC_LAST      0     crc u32 + int64 word + JSON metadata (archive: latest enum word)
REC_ABSORBED  0     crc u32 + 16-byte uids of the process files folded in
============  ====  ============================================================

An enum word is ``index | (stamp_ms << 16)`` in version 2, with ``stamp_ms``
the wall clock in milliseconds since the Unix epoch; ``index | (stamp_us <<
12)`` in version 1 (:func:`decode_word` reads both).

A zero ``kind`` below ``used`` is a record not yet visible to a reader.

Directory entries: ``<pid>-<uid>.fm`` (a process file; any other visible
``*.fm`` is read as one too), ``archive.fm``, ``.lock`` (the directory lock),
``.<pid>-<uid>.fm.tmp`` (a process file being created), ``archive.fm.<pid>.tmp``
(an archive being written), ``<name>.corrupt`` and ``archive.fm.corrupt-<ns>``
(invalid files set aside).  :func:`parse_name` is the one parser of these
names; the functions next to it build them.
"""

from __future__ import annotations

import functools
import json
import os
import re
import struct
import zlib
from typing import Dict, List, Literal, NamedTuple, Optional, Tuple, Union

MAGIC = b"FMSHARD\x00"
VERSION = 2   # written by every writer (the cores, compaction); version 1 is still read
FLAG_ARCHIVE = 1
ORDER_MARK = 0x01020304
UID_SIZE = 16

HEADER = struct.Struct("=8sIIqqQ16sII")   # the header up to ``crc`` (see the table)
HDR_CRC_END = 60                           # the crc covers bytes 0..59
HDR_USED = 64                              # int64 ``used``
HDR_SIZE = 128
USED = struct.Struct("=q")

REC_ALIGN = 128                            # every record starts on a cache-line pair
REC_HEAD = struct.Struct("=IIq")           # kind, payload length, arg
REC_META_OFF = 16                          # payload offset of metadata records
REC_DATA_OFF = 128                         # payload offset of chunk records
(REC_CHUNK, REC_WORDS, REC_COUNTER, REC_ENUM, REC_RETIRE,
 REC_TOTAL, REC_LAST, REC_ABSORBED) = range(1, 9)
DATA_KINDS = (REC_CHUNK, REC_WORDS)
CRC = struct.Struct("=I")                  # before a metadata or absorbed payload's body
F64 = struct.Struct("=d")                  # a TOTAL's count, after the crc
I64 = struct.Struct("=q")                  # a LAST's enum word, after the crc

CHUNK_BITS = 9
CHUNK_SLOTS = 1 << CHUNK_BITS
CHUNK_BYTES = 8 * CHUNK_SLOTS
MAX_CHUNKS = 2048
MAX_SLOTS = MAX_CHUNKS * CHUNK_SLOTS

WORD_FORMATS: Dict[int, Tuple[int, int]] = {1: (12, 1_000), 2: (16, 1_000_000)}
"""version -> (state bits, nanoseconds per stamp unit) of an enum word."""
STATE_BITS = WORD_FORMATS[VERSION][0]
MAX_STATES = 1 << STATE_BITS

COUNTER = "counter"                        # Meta.type of a counter
STATESET = "stateset"                      # Meta.type of an enum

SUFFIX = ".fm"
ARCHIVE_NAME = "archive" + SUFFIX
LOCK_NAME = ".lock"
TEMP_SUFFIX = ".tmp"
CORRUPT_SUFFIX = ".corrupt"

SeriesKey = Tuple[str, Tuple[str, ...]]  # (metric name, label values)


class Meta(NamedTuple):
    """What an exporter needs to render a series it never declared."""

    type: str                       # COUNTER or STATESET
    name: str
    doc: str
    unit: str
    labelnames: Tuple[str, ...]
    labelvalues: Tuple[str, ...]
    states: Tuple[str, ...]         # enums only

    @property
    def key(self) -> SeriesKey:
        return self.name, self.labelvalues


EnumValue = NamedTuple("EnumValue", [("index", int), ("stamp_ns", int)])  # noqa: UP014 - see below
"""An enum word, decoded: the index of the current state, and the wall clock
when it was set (ns since the epoch).  (Functional form: a class body could
not name a field ``index``, which ``tuple`` already defines.)"""


class Header(NamedTuple):
    """The header fields up to ``crc`` (see the table above)."""

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
    return 1 << WORD_FORMATS[version][0]


def decode_word(version: int, word: int) -> EnumValue:
    """The state index and stamp of an enum word of a ``version`` file
    (``KeyError`` for a version not in :data:`WORD_FORMATS`)."""
    bits, unit = WORD_FORMATS[version]
    return EnumValue(word & ((1 << bits) - 1), (word >> bits) * unit)


def encode_word(value: EnumValue, version: int = VERSION) -> int:
    """``value`` as a word of a ``version`` file (the stamp rounded down)."""
    bits, unit = WORD_FORMATS[version]
    return value.index | ((value.stamp_ns // unit) << bits)


def align(n: int) -> int:
    """``n`` rounded up to :data:`REC_ALIGN`."""
    return (n + REC_ALIGN - 1) & ~(REC_ALIGN - 1)


def payload_offset(kind: int) -> int:
    """Where a record's payload starts, from the record's start."""
    return REC_DATA_OFF if kind in DATA_KINDS else REC_META_OFF


def header(pid: int, created_ns: int, capacity: int, uid: bytes, flags: int = 0, version: int = VERSION,
           used: int = HDR_SIZE) -> bytes:
    """The 128-byte header, its crc computed."""
    head = HEADER.pack(MAGIC, version, flags, pid, created_ns, capacity, uid, ORDER_MARK, 0)[:HDR_CRC_END]
    head += CRC.pack(zlib.crc32(head)) + USED.pack(used)
    return head.ljust(HDR_SIZE, b"\0")


def record(kind: int, arg: int, payload: bytes) -> bytes:
    """One record as published: its head, the payload at its offset, zeros to
    the next :data:`REC_ALIGN` boundary."""
    raw = REC_HEAD.pack(kind, len(payload), arg).ljust(payload_offset(kind), b"\0") + payload
    return raw.ljust(align(len(raw)), b"\0")


def checked(body: bytes) -> bytes:
    """crc32 + ``body``: a metadata or absorbed-uid payload."""
    return CRC.pack(zlib.crc32(body)) + body


def meta_json(meta: Meta) -> bytes:
    """The JSON of ``meta`` in a metadata record (ASCII: ``ensure_ascii``)."""
    doc: Dict[str, Union[str, List[str]]] = {
        "type": meta.type, "name": meta.name, "doc": meta.doc, "unit": meta.unit,
        "labelnames": list(meta.labelnames), "labelvalues": list(meta.labelvalues),
    }
    if meta.type == STATESET:
        doc["states"] = list(meta.states)
    return json.dumps(doc, separators=(",", ":")).encode()


def meta_payload(meta: Meta, prefix: bytes = b"") -> bytes:
    """crc + ``prefix`` (a packed value, for archive records) + JSON."""
    return checked(prefix + meta_json(meta))


# -- names --------------------------------------------------------------------------

Role = Literal["process", "archive", "temp", "other"]


class Name(NamedTuple):
    """What a directory entry's name says it is."""

    role: Role      # "process": read as a process file; "temp": a process file
                    # being created; "archive"; "other": not ours
    pid: int = -1   # pid and uid: of a process file named <pid>-<uid>.fm
    uid: bytes = b""


def new_uid() -> bytes:
    """A random uid for a new file."""
    return os.urandom(UID_SIZE)


def process_file_name(pid: int, uid: bytes) -> str:
    """``<pid>-<uid hex>.fm``."""
    return f"{pid}-{uid.hex()}{SUFFIX}"


def temp_name(name: str) -> str:
    """The hidden name a file is created under before it is published as ``name``."""
    return f".{name}{TEMP_SUFFIX}"


def archive_temp_name(pid: int) -> str:
    """The name a compaction in process ``pid`` writes the next archive under."""
    return f"{ARCHIVE_NAME}.{pid}{TEMP_SUFFIX}"


def aside_name(name: str, stamp_ns: Optional[int] = None) -> str:
    """The name an invalid file ``name`` is set aside under; an archive's
    carries the time (``stamp_ns``), as several may be set aside in turn."""
    return f"{name}{CORRUPT_SUFFIX}" + (f"-{stamp_ns}" if stamp_ns is not None else "")


_PROCESS_FILE_NAME = re.compile(rf"(0|[1-9][0-9]*)-([0-9a-f]{{{2 * UID_SIZE}}}){re.escape(SUFFIX)}\Z")


@functools.lru_cache(maxsize=4096)   # a scrape parses every name of the directory again
def parse_name(name: str) -> Name:
    """The role of a directory entry, and for ``<pid>-<uid>.fm`` (exactly as
    :func:`process_file_name` writes it) its pid and uid.  Hidden names are
    never process files; a visible ``*.fm`` other than the archive always is.
    Never raises; thread-safe."""
    if name.startswith("."):
        return Name("temp" if name.endswith(TEMP_SUFFIX) else "other")
    if name == ARCHIVE_NAME:
        return Name("archive")
    if not name.endswith(SUFFIX):
        return Name("other")
    match = _PROCESS_FILE_NAME.match(name)
    return Name("process", int(match[1]), bytes.fromhex(match[2])) if match else Name("process")
