"""A small, independent writer and parser of the multiprocess file format
(documented in ``fastmetrics/multiprocess/_format.py``), for tests that need files no
current writer produces: version 1 files, stamps in 2100, damaged values or
metadata with valid checksums.  It never imports the code under test.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence

MAGIC = b"FMSHARD\x00"
ORDER_MARK = 0x01020304
HEADER = struct.Struct("=8sIIqqQ16sII")
RECORD = struct.Struct("=IIq")
CHUNK, WORDS, COUNTER, ENUM, RETIRE, TOTAL, LAST, ABSORBED = range(1, 9)
DATA_KINDS = (CHUNK, WORDS)
FLAG_ARCHIVE = 1
WORD_BITS = {1: (12, 1_000), 2: (16, 1_000_000)}   # version -> (state bits, ns per stamp unit)
NS_2024 = 1_718_000_000 * 10**9                     # June 2024
NS_2100 = 4_102_444_800 * 10**9                     # January 2100


class Record(NamedTuple):
    kind: int
    arg: int
    payload: bytes


def align(n: int) -> int:
    return (n + 127) & ~127


def word(version: int, index: int, stamp_ns: int) -> int:
    """An enum word as a writer of ``version`` stores it."""
    bits, unit = WORD_BITS[version]
    return index | ((stamp_ns // unit) << bits)


def meta_body(type_: str, name: str, *, doc: str = "Help.", unit: str = "", labelnames: Sequence[str] = (),
              labelvalues: Sequence[str] = (), states: Optional[Sequence[str]] = None) -> bytes:
    """The JSON of a metadata record, as writers produce it (``ensure_ascii``)."""
    doc_ = {"type": type_, "name": name, "doc": doc, "unit": unit,
            "labelnames": list(labelnames), "labelvalues": list(labelvalues)}
    if states is not None:
        doc_["states"] = list(states)
    return json.dumps(doc_, separators=(",", ":")).encode()


def checked(body: bytes) -> bytes:
    """crc32 + ``body``: a metadata (or absorbed) payload."""
    return struct.pack("=I", zlib.crc32(body)) + body


def counter(slot: int, name: str, **kw) -> Record:
    return Record(COUNTER, slot, checked(meta_body("counter", name, **kw)))


def enum(slot: int, name: str, states: Sequence[str], **kw) -> Record:
    return Record(ENUM, slot, checked(meta_body("stateset", name, states=states, **kw)))


def chunk(c: int, values: Dict[int, float]) -> Record:
    """One thread's partial sums of chunk ``c``: slot -> value."""
    data = [0.0] * 512
    for slot, v in values.items():
        assert slot >> 9 == c
        data[slot & 511] = v
    return Record(CHUNK, c, struct.pack("=512d", *data))


def words(c: int, values: Dict[int, int]) -> Record:
    data = [0] * 512
    for slot, w in values.items():
        assert slot >> 9 == c
        data[slot & 511] = w
    return Record(WORDS, c, struct.pack("=512q", *data))


def total(name: str, value: float, **kw) -> Record:
    return Record(TOTAL, 0, checked(struct.pack("=d", value) + meta_body("counter", name, **kw)))


def last(name: str, word_: int, states: Sequence[str], **kw) -> Record:
    return Record(LAST, 0, checked(struct.pack("=q", word_) + meta_body("stateset", name, states=states, **kw)))


def absorbed(uids: Iterable[bytes]) -> Record:
    return Record(ABSORBED, 0, checked(b"".join(sorted(uids))))


def header(version: int, flags: int, pid: int, created_ns: int, capacity: int, uid: bytes, used: int) -> bytes:
    head = HEADER.pack(MAGIC, version, flags, pid, created_ns, capacity, uid, ORDER_MARK, 0)[:60]
    head += struct.pack("=Iq", zlib.crc32(head), used)
    return head.ljust(128, b"\0")


def build(records: Iterable[Record], *, version: int = 2, archive: bool = False, pid: int = 4_000_001,
          uid: Optional[bytes] = None, created_ns: int = NS_2024, capacity: Optional[int] = None) -> bytes:
    """A whole file: header, then each record 128-byte aligned; ``used`` is its end."""
    body = bytearray()
    for rec in records:
        head = RECORD.pack(rec.kind, len(rec.payload), rec.arg)
        raw = head.ljust(128 if rec.kind in DATA_KINDS else 16, b"\0") + rec.payload
        body += raw.ljust(align(len(raw)), b"\0")
    used = 128 + len(body)
    return header(version, FLAG_ARCHIVE if archive else 0, pid, created_ns, capacity or used,
                  uid if uid is not None else os.urandom(16), used) + bytes(body)


class Parsed(NamedTuple):
    fields: Dict[str, object]   # header fields by name
    records: List[Record]


HEADER_FIELDS = ("magic", "version", "flags", "pid", "created_ns", "capacity", "uid", "order", "crc")


def parse(data: bytes) -> Parsed:
    """Header and published records of a valid file (no validation)."""
    fields = dict(zip(HEADER_FIELDS, HEADER.unpack_from(data)))
    used = struct.unpack_from("=q", data, 64)[0]
    recs, off = [], 128
    while off < used:
        kind, length, arg = RECORD.unpack_from(data, off)
        if kind == 0:
            break
        start = off + (128 if kind in DATA_KINDS else 16)
        recs.append(Record(kind, arg, bytes(data[start:start + length])))
        off = align(start + length)
    return Parsed(fields, recs)


def rebuild(parsed: Parsed, records: Optional[List[Record]] = None, **fields) -> bytes:
    """``parsed`` written again, with other records or header fields."""
    f = dict(parsed.fields, **fields)
    return build(parsed.records if records is None else records, version=f["version"],
                 archive=bool(f["flags"] & FLAG_ARCHIVE), pid=f["pid"], uid=f["uid"],
                 created_ns=f["created_ns"])


def process_name(pid: int, uid: bytes) -> str:
    return f"{pid}-{uid.hex()}.fm"
