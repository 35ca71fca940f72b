"""Walks shared by process files whose records are the same bytes.

Workers of one program (pre-fork servers, pools) declare the same metrics in
the same order, so their files hold the same records at the same offsets;
only the payloads of chunk and enum-word records (the counts) differ.  A
:class:`~._reader.Reader` that walked one such file from its first record
keeps the result here as a template; the next file is compared with it byte
for byte everywhere but those payloads (a few ``memcmp`` of the mapping, not
a Python step per record) and, if equal, takes a copy of the template's walk
instead of walking: the walk is a function of exactly those bytes (record
heads, metadata payloads, their offsets), so the result is the one a walk
would give.  An exporter that sees 64 exited workers' files for the first
time then walks one of them, not 64.

Contracts: :meth:`Templates.find` never raises and only reads the mapping
below the template's end, which the caller checked is below the file's
``used`` (immutable there but for the skipped payloads).  Memory: at most
:data:`MAX_TEMPLATES` templates and :data:`MAX_BYTES` compared bytes in all
(a larger walk is not kept).  Not thread-safe (a Reader's).
"""

from __future__ import annotations

import mmap
from typing import Generic, List, Optional, Sequence, Tuple, TypeVar

from . import _format as fmt

MAX_TEMPLATES = 4
MAX_BYTES = 16 << 20

W = TypeVar("W")   # what the caller keeps of a walk


class _Template(Generic[W]):
    __slots__ = ("blobs", "end", "ranges", "size", "walk")

    def __init__(self, ranges: List[Tuple[int, int]], blobs: List[bytes], end: int, walk: W) -> None:
        self.ranges = ranges          # (start, stop) compared: everything in [HDR_SIZE, end) but payloads
        self.blobs = blobs            # their bytes
        self.end = end
        self.walk = walk
        self.size = sum(map(len, blobs))

    def matches(self, mm: mmap.mmap) -> bool:
        return all(mm[start:stop] == blob for (start, stop), blob in zip(self.ranges, self.blobs))


class Templates(Generic[W]):
    """The walks of recently walked process files, most recently used first."""

    def __init__(self) -> None:
        self._templates: List[_Template[W]] = []

    def find(self, mm: mmap.mmap, used: int) -> Optional[Tuple[int, W]]:
        """``(end, walk)`` of the longest template whose bytes ``mm`` holds
        from the first record up to ``end`` (``end <= used``), or None.
        O(templates x compared bytes), in C."""
        best: Optional[_Template[W]] = None
        for template in self._templates:
            if template.end <= used and (best is None or template.end > best.end) and template.matches(mm):
                best = template
        if best is None:
            return None
        self._templates.remove(best)
        self._templates.insert(0, best)
        return best.end, best.walk

    def add(self, mm: mmap.mmap, end: int, payloads: Sequence[int], walk: W) -> None:
        """Keep ``walk``, the walk of ``mm``'s records from the first up to
        ``end``, whose chunk and word payloads start at ``payloads`` (each
        :data:`~._format.CHUNK_BYTES` long, below ``end``).  An empty walk
        is not kept."""
        if end <= fmt.HDR_SIZE:
            return
        ranges = []
        start = fmt.HDR_SIZE
        for payload in sorted(payloads):
            if payload > start:
                ranges.append((start, payload))
            start = payload + fmt.CHUNK_BYTES
        if end > start:
            ranges.append((start, end))
        if sum(stop - start for start, stop in ranges) > MAX_BYTES:
            return
        template = _Template(ranges, [mm[start:stop] for start, stop in ranges], end, walk)
        self._templates.insert(0, template)
        del self._templates[MAX_TEMPLATES:]
        while sum(t.size for t in self._templates) > MAX_BYTES:
            self._templates.pop()

    def clear(self) -> None:
        self._templates.clear()
