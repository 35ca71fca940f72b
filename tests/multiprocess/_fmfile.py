"""Hand-made multiprocess files, and surgery on real ones, for tests that need
files no current writer produces: version 1 files, stamps in 2100, damaged
values or metadata with valid checksums, copies under other names.

The layout (offsets, kinds, structs, encoders) is
``fastmetrics.multiprocess._format``'s, the one definition; ``test_format.py``
pins its bytes.  Nothing here validates: that is the reader under test.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

from fastmetrics.multiprocess import _format as fmt

NS_2024 = 1_718_000_000 * 10**9                     # June 2024
NS_2100 = 4_102_444_800 * 10**9                     # January 2100
_CHUNK_DATA = {fmt.REC_CHUNK: struct.Struct(f"={fmt.CHUNK_SLOTS}d"),   # a chunk record's payload, by kind
               fmt.REC_WORDS: struct.Struct(f"={fmt.CHUNK_SLOTS}q")}


class Record(NamedTuple):
    kind: int
    arg: int
    payload: bytes


def word(version: int, index: int, stamp_ns: int) -> int:
    """An enum word as a writer of ``version`` stores it."""
    return fmt.encode_word(fmt.EnumValue(index, stamp_ns), version)


def meta_body(type_: str, name: str, *, doc: str = "Help.", unit: str = "", labelnames: Sequence[str] = (),
              labelvalues: Sequence[str] = (), states: Optional[Sequence[str]] = None) -> bytes:
    """The JSON of a metadata record, as writers produce it; any values."""
    return fmt.meta_json(fmt.Meta(type_, name, doc, unit, tuple(labelnames), tuple(labelvalues), tuple(states or ())))


def counter(slot: int, name: str, **kw) -> Record:
    return Record(fmt.REC_COUNTER, slot, fmt.checked(meta_body(fmt.COUNTER, name, **kw)))


def enum(slot: int, name: str, states: Sequence[str], **kw) -> Record:
    return Record(fmt.REC_ENUM, slot, fmt.checked(meta_body(fmt.STATESET, name, states=states, **kw)))


def _chunk_record(kind: int, c: int, values: Dict[int, Union[int, float]]) -> Record:
    data = [0] * fmt.CHUNK_SLOTS
    for slot, v in values.items():
        assert slot >> fmt.CHUNK_BITS == c
        data[slot & (fmt.CHUNK_SLOTS - 1)] = v
    return Record(kind, c, _CHUNK_DATA[kind].pack(*data))


def chunk(c: int, values: Dict[int, float]) -> Record:
    """One thread's partial sums of chunk ``c``: slot -> value."""
    return _chunk_record(fmt.REC_CHUNK, c, dict(values))


def words(c: int, values: Dict[int, int]) -> Record:
    """The enum words of chunk ``c``: slot -> word."""
    return _chunk_record(fmt.REC_WORDS, c, dict(values))


def total(name: str, value: float, **kw) -> Record:
    return Record(fmt.REC_TOTAL, 0, fmt.checked(fmt.F64.pack(value) + meta_body(fmt.COUNTER, name, **kw)))


def last(name: str, word_: int, states: Sequence[str], **kw) -> Record:
    body = fmt.I64.pack(word_) + meta_body(fmt.STATESET, name, states=states, **kw)
    return Record(fmt.REC_LAST, 0, fmt.checked(body))


def absorbed(uids: Iterable[bytes]) -> Record:
    return Record(fmt.REC_ABSORBED, 0, fmt.checked(b"".join(sorted(uids))))


def value_of(rec: Record) -> Union[int, float]:
    """The count of a TOTAL record, or the word of a LAST record."""
    return (fmt.F64 if rec.kind == fmt.REC_TOTAL else fmt.I64).unpack_from(rec.payload, fmt.CRC.size)[0]


def build(records: Iterable[Record], *, version: int = 2, archive: bool = False, pid: int = 4_000_001,
          uid: Optional[bytes] = None, created_ns: int = NS_2024, capacity: Optional[int] = None) -> bytes:
    """A whole file: header, then each record; ``used`` is its end."""
    body = b"".join(fmt.record(*rec) for rec in records)
    used = fmt.HDR_SIZE + len(body)
    return fmt.header(pid, created_ns, capacity or used, uid if uid is not None else fmt.new_uid(),
                      fmt.FLAG_ARCHIVE if archive else 0, version, used) + body


def fields(data: bytes) -> fmt.Header:
    """The header fields of ``data`` (no validation)."""
    return fmt.Header._make(fmt.HEADER.unpack_from(data))


def used_of(data: bytes) -> int:
    return fmt.USED.unpack_from(data, fmt.HDR_USED)[0]  # type: ignore[no-any-return]


def walk(data: bytes) -> Iterator[Tuple[int, int, Record]]:
    """(record offset, payload offset, record) of each published record of a
    valid file."""
    off, used = fmt.HDR_SIZE, used_of(data)
    while off < used:
        kind, length, arg = fmt.REC_HEAD.unpack_from(data, off)
        if kind == 0:
            return
        start = off + fmt.payload_offset(kind)
        yield off, start, Record(kind, arg, bytes(data[start:start + length]))
        off = fmt.align(start + length)


class Parsed(NamedTuple):
    fields: fmt.Header
    records: List[Record]


def parse(data: bytes) -> Parsed:
    """Header and published records of a valid file (no validation)."""
    return Parsed(fields(data), [rec for _, _, rec in walk(data)])


def rebuild(parsed: Parsed, records: Optional[List[Record]] = None, **changed) -> bytes:
    """``parsed`` written again, with other records or header fields
    (``capacity`` becomes the size)."""
    f = parsed.fields._replace(**changed)
    return build(parsed.records if records is None else records, version=f.version,
                 archive=bool(f.flags & fmt.FLAG_ARCHIVE), pid=f.pid, uid=f.uid, created_ns=f.created_ns)


def valid_copy(data: bytes, **changed) -> bytearray:
    """A copy that is a valid file of another (dead) process: a new uid,
    ``changed`` header fields, only the published records."""
    return bytearray(rebuild(parse(data), **dict({"uid": fmt.new_uid()}, **changed)))


def counter_value_offsets(data: bytes, name: str) -> List[int]:
    """Offsets of the float64s holding counter ``name``'s partial sums."""
    recs = list(walk(data))
    slots = [rec.arg for _, _, rec in recs
             if rec.kind == fmt.REC_COUNTER and json.loads(rec.payload[fmt.CRC.size:])["name"] == name]
    return [start + 8 * (slot & (fmt.CHUNK_SLOTS - 1)) for slot in slots
            for _, start, rec in recs if rec.kind == fmt.REC_CHUNK and rec.arg == slot >> fmt.CHUNK_BITS]


def fake_process_name() -> str:
    """A process file name of a pid no live process has."""
    return fmt.process_file_name(4_000_000 + int.from_bytes(os.urandom(2), "little"), fmt.new_uid())
