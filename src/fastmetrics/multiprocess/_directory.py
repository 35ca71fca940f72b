"""A multiprocess directory: its entries, and the scrape's read of them.

:func:`read_directory` reads the archive and every process file under the
shared directory lock and folds them (:func:`~._fold.fold`).  The helpers
here (which entries are process files, the archive, copies of a file) are
also compaction's.
"""

from __future__ import annotations

import os
from typing import Dict, List, NamedTuple, Optional, Protocol, Tuple, TypeVar

from . import _format as fmt
from ._fold import fold
from ._format import EnumValue, Meta, SeriesKey
from ._locks import DirLock
from ._reader import CorruptFile, ParsedFile, Reader, parse_optional

ENV_DIR = "FASTMETRICS_MULTIPROC_DIR"
ENUM_MODES = ("pid", "mostrecent")

Skipped = List[Tuple[str, str]]   # (path, reason)


def directory_from(path: Optional[str]) -> str:
    """``path``, or ``$FASTMETRICS_MULTIPROC_DIR`` when it is empty or None
    (ValueError if both are)."""
    path = path or os.environ.get(ENV_DIR)
    if not path:
        raise ValueError(f"no directory given and {ENV_DIR} is not set")
    return path


def process_files(path: str) -> List[str]:
    """The names of the entries of ``path`` read as process files, sorted."""
    return sorted(name for name in os.listdir(path) if fmt.parse_name(name).role == "process")


def expect_kind(pf: ParsedFile, archive: bool) -> ParsedFile:
    """``pf`` if it is the kind of file its name says (CorruptFile if not)."""
    if pf.archive != archive:
        raise CorruptFile("an archive under a process file's name" if pf.archive
                          else "a process file under the archive's name")
    return pf


def read_archive(path: str, reader: Optional[Reader] = None) -> Optional[ParsedFile]:
    """The archive of directory ``path``, or None if there is none;
    CorruptFile or OSError as :func:`~._reader.read`."""
    pf = parse_optional(os.path.join(path, fmt.ARCHIVE_NAME), reader)
    return expect_kind(pf, archive=True) if pf is not None else None


class _Owned(Protocol):
    """A file as known by its path and header."""

    @property
    def path(self) -> str: ...
    @property
    def pid(self) -> int: ...
    @property
    def uid(self) -> bytes: ...


_F = TypeVar("_F", bound=_Owned)


def one_per_uid(files: List[_F]) -> List[Tuple[_F, List[_F]]]:
    """``files`` grouped by uid, as (the file kept, its copies), in order.  A
    uid names one process's file, so files sharing one are copies: the one
    named after its own header (``<pid>-<uid>.fm``) is kept, else the first."""
    groups: Dict[bytes, List[_F]] = {}
    for f in files:
        groups.setdefault(f.uid, []).append(f)
    result = []
    for group in groups.values():
        kept = next((f for f in group if _named_after_header(f)), group[0])
        result.append((kept, [f for f in group if f is not kept]))
    return result


def _named_after_header(f: _Owned) -> bool:
    return os.path.basename(f.path) == fmt.process_file_name(f.pid, f.uid)


def copy_reason(kept: _Owned) -> str:
    """Why a copy of ``kept`` is skipped."""
    return f"same uid as {kept.path}: a copy, counted once"


class Snapshot(NamedTuple):
    """What :func:`read_directory` found: the folded series and the skipped files."""

    counters: Dict[SeriesKey, float]
    enums: Dict[Tuple[SeriesKey, Optional[int]], EnumValue]   # (series, pid or None) -> state
    families: Dict[str, Meta]                                  # name -> the newest metadata
    skipped: Skipped                                           # (path, reason)
    files: int


def read_directory(path: str, enum_mode: str = "pid", reader: Optional[Reader] = None) -> Snapshot:
    """Fold the archive and every process file in ``path`` (:mod:`._fold`'s
    rule).  Counters are summed; enums are per live process (``pid``) or the
    most recent state (``mostrecent``).  What cannot be read is skipped and
    listed, never raised: entries that are not regular files or cannot be
    opened, invalid files, copies of a file (same uid: counted once), and
    single series with invalid metadata or values.  A ``reader`` kept
    between calls (not shared by threads) makes a repeated read walk only the
    records appended since the previous one.  ValueError for another
    ``enum_mode``."""
    if enum_mode not in ENUM_MODES:
        raise ValueError(f"enum_mode must be one of {ENUM_MODES}, not {enum_mode!r}")
    if reader is None:
        reader = Reader()
        try:
            return read_directory(path, enum_mode, reader)
        finally:
            reader.close()
    skipped: Skipped = []
    with DirLock(path, exclusive=False) as lock:
        if lock.problem:
            skipped.append((lock.path, lock.problem))
        files = _read_files(path, reader, enum_mode == "pid", skipped)
    reader.sweep()
    folded = fold(files)
    for pf in files:
        skipped += [(pf.path, problem) for problem in pf.problems]
    skipped += folded.problems
    enums: Dict[Tuple[SeriesKey, Optional[int]], EnumValue]
    if enum_mode == "pid":
        enums = {(key, pid): value for (key, pid), value in folded.by_pid.items()}
    else:
        enums = {(key, None): value for key, value in folded.latest.items()}
    return Snapshot(folded.counters, enums, folded.families, skipped, len(files))


def _read_files(path: str, reader: Reader, probe_live: bool, skipped: Skipped) -> List[ParsedFile]:
    """The archive and the process files of ``path`` it did not absorb, one
    per uid; what cannot be read, and copies, added to ``skipped``."""
    archive_path = os.path.join(path, fmt.ARCHIVE_NAME)
    archive: Optional[ParsedFile] = None
    try:
        archive = read_archive(path, reader)
    except (CorruptFile, OSError) as e:
        skipped.append((archive_path, str(e)))
    absorbed = archive.absorbed if archive is not None else set()
    files: List[ParsedFile] = []
    for name in process_files(path):
        file_path = os.path.join(path, name)
        try:
            pf = expect_kind(reader.read(file_path, probe_live=probe_live), archive=False)
        except FileNotFoundError:
            continue
        except (CorruptFile, OSError) as e:
            skipped.append((file_path, str(e)))
            continue
        if pf.uid not in absorbed:   # else folded into the archive; deletion is pending
            files.append(pf)
    kept: List[ParsedFile] = []
    for pf, copies in one_per_uid(files):
        kept.append(pf)
        skipped += [(copy.path, copy_reason(pf)) for copy in copies]
    return kept + ([archive] if archive is not None else [])
