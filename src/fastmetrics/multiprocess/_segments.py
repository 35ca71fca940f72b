"""Walks shared by process files whose records are the same bytes.

Workers of one program (pre-fork servers, pools) declare the same metrics in
the same order, so their files hold the same records at the same offsets;
what differs is the payloads of chunk and enum-word records (the counts), and
here and there a record (a label value of the worker's own).  A
:class:`~._reader.Reader` walks a file in *segments*: the records from one
offset up to and including the next chunk or word record's head (or up to
the end of what was published).  What the walk of a segment found depends
only on its bytes and its offset, so each walked segment is kept here, by
offset, with its bytes; a segment of another file at the same offset with the
same bytes (one ``memcmp`` of the mapping, not a Python step per record)
takes that walk instead of walking.  An exporter that sees 64 exited
workers' files for the first time walks the records of one of them, plus the
records that differ.

Contracts: :meth:`Segments.find` never raises, and compares only the
mapping between ``off`` and a kept segment's end, below ``used``
(immutable there: the payloads that change are left out).  Memory: at most
:data:`MAX_BYTES` kept bytes in all, oldest out first, and
:data:`MAX_PER_OFFSET` segments per offset, most recently used first.  Not
thread-safe (a Reader's).
"""

from __future__ import annotations

import mmap
from collections import deque
from typing import Deque, Dict, Generic, List, Optional, TypeVar

MAX_BYTES = 16 << 20
MAX_PER_OFFSET = 4

W = TypeVar("W")   # what a walk of a segment found


class Segment(Generic[W]):
    """Records ``[start, stop)`` of a file: ``blob``, their bytes, and
    ``walked``, what walking them found; the next record is at ``next``
    (after the payload of a chunk or word record that ends the segment, else
    ``stop``)."""

    __slots__ = ("blob", "next", "start", "stop", "walked")

    def __init__(self, start: int, stop: int, next_: int, blob: bytes, walked: W) -> None:
        self.start, self.stop, self.next = start, stop, next_
        self.blob = blob
        self.walked = walked


class Segments(Generic[W]):
    """Walked segments, by offset."""

    def __init__(self) -> None:
        self._by_start: Dict[int, List[Segment[W]]] = {}
        self._order: Deque[Segment[W]] = deque()   # oldest first
        self._bytes = 0

    def find(self, mm: mmap.mmap, off: int, used: int) -> Optional[Segment[W]]:
        """The longest kept segment that starts at ``off``, ends (payload
        included) at or below ``used``, and whose bytes ``mm`` holds; None if
        there is none.  O(segments at ``off`` x their bytes), in C."""
        candidates = self._by_start.get(off)
        if not candidates:
            return None
        best: Optional[Segment[W]] = None
        for segment in candidates:
            if segment.next <= used and (best is None or segment.next > best.next) \
                    and mm[off:segment.stop] == segment.blob:
                best = segment
        if best is not None and candidates[0] is not best:
            candidates.remove(best)
            candidates.insert(0, best)
        return best

    def add(self, mm: mmap.mmap, start: int, stop: int, next_: int, walked: W) -> Optional[Segment[W]]:
        """Keep ``walked``, the walk of ``mm``'s records in ``[start, stop)``
        (the next one at ``next_``): the segment kept, or None for an empty
        or oversized one (not kept)."""
        if not start < stop or stop - start > MAX_BYTES:
            return None
        segment = Segment(start, stop, next_, mm[start:stop], walked)
        candidates = self._by_start.setdefault(start, [])
        candidates.insert(0, segment)
        self._order.append(segment)
        self._bytes += len(segment.blob)
        if len(candidates) > MAX_PER_OFFSET:
            self._forget(candidates[-1])
        while self._bytes > MAX_BYTES:
            self._forget(self._order[0])
        return segment

    def _forget(self, segment: Segment[W]) -> None:
        self._order.remove(segment)
        self._bytes -= len(segment.blob)
        # Layouts and plans still hold the segment (as a key, and for its
        # walk); never compared again, its bytes go now, or they would
        # outlive MAX_BYTES.
        segment.blob = b""
        candidates = self._by_start[segment.start]
        candidates.remove(segment)
        if not candidates:
            del self._by_start[segment.start]

    def __len__(self) -> int:
        return len(self._order)
