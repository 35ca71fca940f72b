"""How a process file's counts are read: its plan, and the read.

A :class:`~._reader.Reader` walks a file's records once (:class:`Plan` is
built from what the walk found) and reads the counts through the plan on
every scrape.  Counters are read in bulk (C-level ``map`` over the mapping's
8-byte words, one batch per number of chunks a series spans), so a file of
S series costs O(S) C steps and O(chunk widths) Python steps; a file whose
series have several slots (a ``reset()``), or whose counts include an
invalid one, is read series by series, with the same result.

Contracts: a plan is never mutated once built, so layouts that describe the
same records may share one; :func:`read_counts` reads only, raises nothing
for bad values (the series is left out and described), and sums each
series' words left to right from 0.0, as the writer's threads' partial sums
are meant to be added.
"""

from __future__ import annotations

import operator
from itertools import repeat
from typing import Dict, Iterable, List, NamedTuple, Optional, Sequence, Set, Tuple, cast

from . import _format as fmt
from ._format import EnumValue, Meta, SeriesKey


def valid_count(value: float) -> bool:
    """Whether ``value`` is a count a counter can hold: +Inf is one (an
    ``inc(inf)``, or a sum past the largest float); NaN and negatives are not."""
    return value >= 0.0   # False for NaN


_valid_counts = (0.0).__le__   # valid_count, as a C callable for map()


def valid_word(version: int, word: int, meta: Meta) -> Optional[EnumValue]:
    """The decoded word, or None if it names no state of ``meta``."""
    if word < 0:
        return None
    enum = fmt.decode_word(version, word)
    return enum if enum.index < len(meta.states) else None


def series_name(meta: Meta) -> str:
    """``'name'{label='value',...}`` for messages."""
    labels = ",".join(f"{k}={v!r}" for k, v in zip(meta.labelnames, meta.labelvalues))
    return f"{meta.name!r}{{{labels}}}" if labels else repr(meta.name)


class Batch(NamedTuple):
    """A plan's counters, for the bulk read: each series once."""

    keys: Tuple[SeriesKey, ...]                                   # plan order
    groups: Tuple[Tuple[int, Tuple[SeriesKey, ...], Tuple[int, ...]], ...]   # (width, keys, width indices per key)
    metas: Dict[SeriesKey, Meta]                                  # plan order


class Plan(NamedTuple):
    """What to read of a file: the counters in bulk form (None when a series
    has several slots), float64 word indices per counter slot (None when
    ``batch`` has them: :func:`counter_entries`), the int64 word index per
    enum, and the enums without a word (problems).  A plan of S series is
    O(1) objects for the garbage collector when it is a one-thread plan."""

    batch: Optional[Batch]
    counters: Optional[List[Tuple[SeriesKey, Meta, Tuple[int, ...]]]]
    enums: List[Tuple[SeriesKey, Meta, int]]
    problems: List[str]


CounterEntries = Iterable[Tuple[SeriesKey, Meta, Tuple[int, ...]]]


def counter_entries(plan: Plan) -> CounterEntries:
    """``(key, meta, float64 indices)`` per counter slot, in plan order."""
    if plan.counters is not None:
        return plan.counters
    assert plan.batch is not None
    return ((key, plan.batch.metas[key], flat[i * width:(i + 1) * width])
            for width, keys, flat in plan.batch.groups for i, key in enumerate(keys))


def make_plan(counter_slots: Dict[int, Meta], counter_keys: Dict[int, SeriesKey], enum_slots: Dict[int, Meta],
              chunks: Dict[int, List[int]], words: Dict[int, int], retired: Set[int]) -> Plan:
    """The plan of a layout's slots (``counter_keys``: the counter slots'
    keys, in the same order; ``chunks``/``words``: chunk index -> payload
    offsets).  O(slots); in C steps when every counter's chunk was written
    by one thread and no slot is retired (the usual file)."""
    if not retired and all(len(starts) == 1 for starts in chunks.values()):
        plan = _one_thread_plan(counter_slots, counter_keys, enum_slots, chunks, words)
        if plan is not None:
            return plan
    return _looped_plan(counter_slots, enum_slots, chunks, words, retired)


def _looped_plan(counter_slots: Dict[int, Meta], enum_slots: Dict[int, Meta], chunks: Dict[int, List[int]],
                 words: Dict[int, int], retired: Set[int]) -> Plan:
    """:func:`make_plan`, slot by slot (any layout)."""
    mask = fmt.CHUNK_SLOTS - 1
    bases = {chunk: tuple(start >> 3 for start in starts) for chunk, starts in chunks.items()}
    counters = []
    for slot, meta in counter_slots.items():
        if slot in retired:
            continue
        chunk_bases = bases.get(slot >> fmt.CHUNK_BITS, ())
        i = slot & mask
        counters.append((meta.key, meta, (chunk_bases[0] + i,) if len(chunk_bases) == 1
                         else tuple(base + i for base in chunk_bases)))
    enums, problems = _enum_plan(enum_slots, words)
    return Plan(_batch(counters), counters, enums, problems)


def _one_thread_plan(counter_slots: Dict[int, Meta], counter_keys: Dict[int, SeriesKey], enum_slots: Dict[int, Meta],
                     chunks: Dict[int, List[int]], words: Dict[int, int]) -> Optional[Plan]:
    """:func:`make_plan`'s result when each chunk has one payload and no
    slot is retired, by C-level maps over the slots; None if a counter's
    chunk is missing (:func:`make_plan` then loops)."""
    base = {chunk: starts[0] >> 3 for chunk, starts in chunks.items()}
    slots = list(counter_slots)
    bases = list(map(base.get, map(operator.rshift, slots, repeat(fmt.CHUNK_BITS))))
    if None in bases:
        return None
    flat: Tuple[int, ...] = tuple(map(operator.add, cast(List[int], bases),
                                      map(operator.and_, slots, repeat(fmt.CHUNK_SLOTS - 1))))
    metas = list(counter_slots.values())
    keys = tuple(counter_keys.values())
    enums, problems = _enum_plan(enum_slots, words)
    by_key = dict(zip(keys, metas))
    if len(by_key) == len(keys):
        return Plan(Batch(keys, ((1, keys, flat),) if flat else (), by_key), None, enums, problems)
    return Plan(None, list(zip(keys, metas, zip(flat))), enums, problems)


def _enum_plan(enum_slots: Dict[int, Meta], words: Dict[int, int]) -> Tuple[List[Tuple[SeriesKey, Meta, int]],
                                                                           List[str]]:
    mask = fmt.CHUNK_SLOTS - 1
    enums, problems = [], []
    for slot, meta in enum_slots.items():
        start = words.get(slot >> fmt.CHUNK_BITS)
        if start is None:
            problems.append(f"{series_name(meta)}: enum without a word record; series skipped")
        else:
            enums.append((meta.key, meta, (start >> 3) + (slot & mask)))
    return enums, problems


def _batch(counters: List[Tuple[SeriesKey, Meta, Tuple[int, ...]]]) -> Optional[Batch]:
    keys = tuple(key for key, _, _ in counters)
    metas = {key: meta for key, meta, _ in counters}
    if len(metas) != len(keys):
        return None   # a series in several slots: read series by series
    by_width: Dict[int, Tuple[List[SeriesKey], List[int]]] = {}
    for key, _, indices in counters:
        group_keys, flat = by_width.setdefault(len(indices), ([], []))
        group_keys.append(key)
        flat.extend(indices)
    return Batch(keys, tuple((width, tuple(group_keys), tuple(flat))
                             for width, (group_keys, flat) in by_width.items()), metas)


Counts = Tuple[Dict[SeriesKey, float], Dict[SeriesKey, EnumValue], Dict[SeriesKey, Meta], List[str]]


def read_counts(plan: Plan, as_f64: Sequence[float], as_i64: Sequence[int], version: int) -> Counts:
    """``(counters, enums, metas, problems)`` of a file, read now through
    ``plan`` from its words (``as_f64`` / ``as_i64``: the file below
    ``used``, cast; every load is one 8-byte load, as writers store them
    concurrently).  A series with an invalid count or word is left out and
    described in ``problems``."""
    counters = _bulk_counters(plan.batch, as_f64) if plan.batch is not None else None
    metas: Dict[SeriesKey, Meta]
    bad: Dict[SeriesKey, str] = {}
    if counters is not None:
        metas = dict(plan.batch.metas) if plan.batch is not None else {}
    else:
        counters, metas = {}, {}
        for series, meta, indices in counter_entries(plan):
            value = 0.0
            for i in indices:
                value += as_f64[i]
            if valid_count(value):
                counters[series] = counters.get(series, 0.0) + value
                metas[series] = meta
            else:
                bad.setdefault(series, f"{series_name(meta)}: invalid count {value!r}; series skipped")
    enums: Dict[SeriesKey, EnumValue] = {}
    for series, meta, i in plan.enums:
        word = as_i64[i]
        enum = valid_word(version, word, meta)
        if enum is not None:
            enums[series] = enum
            metas[series] = meta
        else:
            bad.setdefault(series, f"{series_name(meta)}: invalid enum word {word}; series skipped")
    for series in bad:
        counters.pop(series, None)
        enums.pop(series, None)
        metas.pop(series, None)
    return counters, enums, metas, plan.problems + list(bad.values())


def _bulk_counters(batch: Batch, as_f64: Sequence[float]) -> Optional[Dict[SeriesKey, float]]:
    """Every counter of ``batch``, or None if one is invalid (the caller then
    reads series by series, to describe it).  Sums are those of the series
    loop: 0.0, plus each word left to right."""
    load = as_f64.__getitem__
    if len(batch.groups) == 1 and batch.groups[0][0] == 1:   # every series in one chunk record: the usual file
        _, keys, flat = batch.groups[0]
        values = list(map(operator.add, repeat(0.0), map(load, flat)))
        return dict(zip(keys, values)) if all(map(_valid_counts, values)) else None
    counters: Dict[SeriesKey, float] = dict.fromkeys(batch.keys, 0.0)
    for width, keys, flat in batch.groups:
        if width == 0:
            continue   # no chunk yet: 0.0
        words = list(map(load, flat))
        sums = list(map(operator.add, repeat(0.0), words[0::width]))
        for j in range(1, width):
            sums = list(map(operator.add, sums, words[j::width]))
        if not all(map(_valid_counts, sums)):
            return None
        counters.update(zip(keys, sums))
    return counters
