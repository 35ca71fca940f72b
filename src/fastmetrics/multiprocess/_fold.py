"""The one fold of parsed files into series, for the scrape and compaction.

A scrape (:func:`~._directory.read_directory`) folds the archive and every
process file; compaction folds the archive and the exited processes' files
into the next archive.  Both call :func:`fold`, so a scrape shows the same
series before and after a compaction.  The rule:

* **Order.**  Files are taken newest first (``created_ns`` of their header;
  equal stamps keep the order given: both callers give name order), the
  archive last, as the oldest.  (The one way a compaction can change what a
  scrape shows: a live process older than the exited ones it folds, which
  disagrees with them on a metric's type, label names or states, then comes
  before their series in the archive, and its definition wins that name.)
* **Families: newest metadata wins per metric name.**  The first file that
  holds a series of a metric name fixes that name's type, label names and
  states (and its help and unit).  A series of another file whose metadata
  differs in type, label names or states is left out, reported once per file
  and name.
* **Counters** are summed.
* **Enums**: ``latest`` holds, per series, the value with the greatest
  ``(stamp, index)``: the state set last in wall-clock time, and on equal
  stamps the higher state index.  That does not depend on the order of the
  files, so folding some of them first (compaction) cannot change it.
  ``by_pid`` holds each series per live file (``live`` True) and its pid.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, NamedTuple, Set, Tuple

from ._format import COUNTER, EnumValue, Meta, SeriesKey
from ._reader import ParsedFile


class Folded(NamedTuple):
    """Series folded over files."""

    counters: Dict[SeriesKey, float]
    latest: Dict[SeriesKey, EnumValue]                  # enums: the most recent value over every file
    by_pid: Dict[Tuple[SeriesKey, int], EnumValue]      # enums of live files, by pid
    families: Dict[str, Meta]                           # metric name -> the newest file's metadata
    problems: List[Tuple[str, str]]                     # (path, reason): series left out


def fold(files: Iterable[ParsedFile]) -> Folded:
    """Fold ``files`` by the rule above.  The problems each file carries
    (:attr:`ParsedFile.problems`) are not repeated: only the series this
    fold leaves out.  O(files + series); pure (reads nothing, raises nothing)."""
    result = Folded({}, {}, {}, {}, [])
    for pf in sorted(files, key=lambda pf: (pf.archive, -pf.created_ns)):
        _fold_file(pf, result)
    return result


def _fold_file(pf: ParsedFile, into: Folded) -> None:
    families, counters, file_counters = into.families, into.counters, pf.counters   # per series: locals
    mismatched: Set[str] = set()
    for key, meta in pf.metas.items():
        family = families.setdefault(meta.name, meta)
        if family is not meta and (family.type != meta.type or family.labelnames != meta.labelnames
                                   or family.states != meta.states):   # (a Reader shares equal metadata)
            mismatched.add(meta.name)
        elif meta.type == COUNTER:
            counters[key] = counters.get(key, 0.0) + file_counters[key]
        else:
            _fold_enum(pf, key, pf.enums[key], into)
    into.problems.extend((pf.path, f"{name}: type, labels or states differ from the newest file; series skipped")
                         for name in sorted(mismatched))


def _fold_enum(pf: ParsedFile, key: SeriesKey, value: EnumValue, into: Folded) -> None:
    best = into.latest.get(key)
    if best is None or (value.stamp_ns, value.index) > (best.stamp_ns, best.index):
        into.latest[key] = value
    if pf.live:
        into.by_pid[(key, pf.pid)] = value


def series_metas(folded: Folded) -> Dict[SeriesKey, Meta]:
    """Each folded series' metadata: its family's, with its label values."""
    return {key: folded.families[key[0]]._replace(labelvalues=key[1])
            for key in (*folded.counters, *folded.latest)}
