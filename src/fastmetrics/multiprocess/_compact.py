"""Compaction: exited processes' files folded into ``archive.fm`` and deleted,
so a directory holds one file per live process, plus the archive and
``.lock``.  The fold is the scrape's (:mod:`._fold`)."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Dict, List, NamedTuple, Optional, Set

from . import _format as fmt
from . import _reaper
from ._directory import Skipped, copy_reason, directory_from, expect_kind, one_per_uid, process_files, read_archive
from ._fold import fold, series_metas
from ._format import EnumValue, Meta, SeriesKey
from ._locks import DirLock, owner_alive
from ._reader import CorruptFile, ParsedFile, Reader, open_entry, read_header

STALE_TEMP_SECONDS = 60.0


class CompactionResult(NamedTuple):
    absorbed: int                    # exited processes' files folded in this time
    removed: int                     # files deleted
    skipped: Skipped                 # (path, reason): entries left out, invalid files set aside
    ran: bool                        # False when another process was compacting, or the lock failed


def compact(path: Optional[str] = None, *, blocking: bool = True, reader: Optional[Reader] = None) -> CompactionResult:
    """Fold the files of exited processes into ``archive.fm`` and delete them.

    Crash-safe: the new archive (which lists the uids it absorbed) replaces the
    old one atomically before any file is deleted, and readers ignore a file
    whose uid the archive lists.  An invalid exited file is renamed to
    ``*.corrupt``; a series of it with invalid metadata or values is left out
    and the rest folded; an entry that is not a regular file or cannot be
    opened is left in place; copies of a file (same uid) are folded once, and
    never while a file with their uid is live.  All of these are reported in
    ``skipped``.  With ``blocking=False`` it returns at once (``ran=False``)
    if another process is compacting.  ``path`` defaults to
    ``$FASTMETRICS_MULTIPROC_DIR`` (ValueError if neither is set).
    ``reader`` (the caller's, not used by another thread meanwhile) reuses
    what it already parsed of the files, and the descriptors of the folded
    files are then closed off the caller's path (:mod:`._reaper`).
    ``OSError`` if the archive cannot be written.
    """
    path = directory_from(path)
    skipped: Skipped = []
    with DirLock(path, exclusive=True, blocking=blocking) as lock:
        if not lock.held:
            if lock.problem:
                skipped.append((lock.path, lock.problem))
            return CompactionResult(0, 0, skipped, False)
        names = process_files(path)
        own_reader = reader is None
        file_reader = Reader() if reader is None else reader
        locks: List[int] = []   # descriptors holding exited files' locks until they are deleted
        try:
            entries = _survey(path, names, file_reader, locks, skipped)
            _remove_stale_temps(path)
            if not any(entry.parsed is not None for entry in entries):
                return CompactionResult(0, 0, skipped, True)
            return _fold_into_archive(path, names, entries, skipped)
        finally:
            if own_reader:
                file_reader.close()
            for fd in locks:
                if own_reader:
                    os.close(fd)
                else:   # a scrape's: the last close of a deleted file frees it, off the request path
                    _reaper.release(fd)


class _Entry(NamedTuple):
    """A process file as compaction found it."""

    path: str
    pid: int
    uid: bytes
    parsed: Optional[ParsedFile]   # an exited process's file, read under its lock; None: live


def _survey(path: str, names: List[str], reader: Reader, locks: List[int], skipped: Skipped) -> List[_Entry]:
    """The process files ``names`` that can be opened: live ones by their
    header, exited ones read in full under their lock (kept in ``locks``).
    An exited file that is invalid is renamed ``*.corrupt``; an entry that
    cannot be opened or read is left in place; both are reported."""
    entries = []
    for name in names:
        file_path = os.path.join(path, name)
        try:
            fd, st = open_entry(file_path)
        except FileNotFoundError:
            continue
        except (CorruptFile, OSError) as e:
            skipped.append((file_path, f"{e}; left in place"))
            continue
        try:
            alive = owner_alive(fd, hold=True)
        except OSError as e:
            os.close(fd)
            skipped.append((file_path, f"{e}; left in place"))
            continue
        if alive:
            live = _live_entry(file_path, fd)
            if live is not None:
                entries.append(live)
            continue
        locks.append(fd)
        try:
            # map_fd=False: a kept mapping of fd would hold its lock after the
            # fold (a file that could not be deleted would look alive)
            pf = expect_kind(reader.read_open(file_path, fd, st, map_fd=False), archive=False)
        except CorruptFile as e:
            _set_aside(file_path, str(e), skipped)
            continue
        except OSError as e:
            skipped.append((file_path, f"{e}; left in place"))
            continue
        entries.append(_Entry(file_path, pf.pid, pf.uid, pf))
    return entries


def _live_entry(file_path: str, fd: int) -> Optional[_Entry]:
    """A live process's file by its header (None if that is invalid: scrapes
    report it); closes ``fd``."""
    try:
        head = read_header(fd)
        return _Entry(file_path, head.pid, head.uid, None)
    except (CorruptFile, OSError):
        return None
    finally:
        os.close(fd)


def _set_aside(file_path: str, reason: str, skipped: Skipped) -> None:
    """Rename an invalid exited file ``*.corrupt``, reported."""
    aside = fmt.aside_name(os.path.basename(file_path))
    try:
        os.replace(file_path, os.path.join(os.path.dirname(file_path), aside))
        skipped.append((file_path, f"{reason}; moved to {aside}"))
    except OSError as e:
        skipped.append((file_path, f"{reason}; cannot move it aside: {e}"))


def _fold_into_archive(path: str, names: List[str], entries: List[_Entry], skipped: Skipped) -> CompactionResult:
    """Write the archive folded with the exited files of ``entries``, then
    delete those files (and their copies)."""
    archive_path = os.path.join(path, fmt.ARCHIVE_NAME)
    try:
        archive = read_archive(path)
    except CorruptFile as e:
        aside = fmt.aside_name(fmt.ARCHIVE_NAME, time.time_ns())
        os.replace(archive_path, os.path.join(path, aside))
        skipped.append((archive_path, f"{e}; moved to {aside}"))
        archive = None
    except OSError as e:   # its counts cannot be carried over: fold nothing
        skipped.append((archive_path, f"{e}; compaction skipped"))
        return CompactionResult(0, 0, skipped, True)
    if archive is not None:
        skipped += [(archive_path, f"{problem}; dropped from the archive") for problem in archive.problems]
    old_absorbed = archive.absorbed if archive is not None else set()
    present = {entry.uid for entry in entries} | {name.uid for name in map(fmt.parse_name, names) if name.uid}
    absorbed = old_absorbed & present
    live = {entry.uid for entry in entries if entry.parsed is None}
    folded: List[ParsedFile] = []
    to_delete: List[str] = []
    for kept, copies in one_per_uid(entries):
        skipped += [(copy.path, copy_reason(kept)) for copy in copies]
        if kept.parsed is None or kept.uid in live:
            continue   # a live process still writes to a file with this uid
        if kept.uid not in old_absorbed:   # else folded by a compaction that stopped before deleting it
            folded.append(kept.parsed)
            absorbed.add(kept.uid)
        to_delete += [entry.path for entry in (kept, *copies)]
    if to_delete:
        _write_folded(archive_path, archive, folded, absorbed, skipped)
    _delete(to_delete, skipped)
    return CompactionResult(len(folded), len(to_delete), skipped, True)


def _write_folded(archive_path: str, archive: Optional[ParsedFile], files: List[ParsedFile], absorbed: Set[bytes],
                  skipped: Skipped) -> None:
    """Replace the archive with ``archive`` folded with ``files``.  A new uid
    per archive: readers that remember a file by its inode tell a new archive
    from an old one by the header (inodes are reused)."""
    result = fold(files + ([archive] if archive is not None else []))
    skipped += [(pf.path, f"{problem}; left out of the archive") for pf in files for problem in pf.problems]
    skipped += [(file_path, f"{reason}; left out of the archive") for file_path, reason in result.problems]
    write_archive(archive_path, result.counters, result.latest, series_metas(result), absorbed, fmt.new_uid(),
                  archive.created_ns if archive is not None else time.time_ns())


def _delete(paths: List[str], skipped: Skipped) -> None:
    """Delete folded files; one that cannot be deleted is reported (readers
    skip it, its uid being absorbed, until a later compaction deletes it)."""
    for file_path in paths:
        try:
            os.unlink(file_path)
        except FileNotFoundError:
            pass
        except OSError as e:
            skipped.append((file_path, f"folded but not deleted: {e}"))


def write_archive(path: str, counters: Dict[SeriesKey, float], enums: Dict[SeriesKey, EnumValue],
                  metas: Dict[SeriesKey, Meta], absorbed: Set[bytes], uid: bytes, created_ns: int) -> None:
    """Write an archive file of the current version atomically (temp file,
    fsync, rename); ``metas`` holds every series of ``counters`` and
    ``enums``.  ``OSError`` (the temp file removed) if it cannot."""
    records = [fmt.record(fmt.REC_TOTAL, 0, fmt.meta_payload(metas[key], fmt.F64.pack(value)))
               for key, value in counters.items()]
    records += [fmt.record(fmt.REC_LAST, 0, fmt.meta_payload(metas[key], fmt.I64.pack(fmt.encode_word(enum))))
                for key, enum in enums.items()]
    if absorbed:
        records.append(fmt.record(fmt.REC_ABSORBED, 0, fmt.checked(b"".join(sorted(absorbed)))))
    size = fmt.HDR_SIZE + sum(map(len, records))
    head = fmt.header(0, created_ns, size, uid, fmt.FLAG_ARCHIVE, used=size)
    tmp = os.path.join(os.path.dirname(path), fmt.archive_temp_name(os.getpid()))
    try:
        with open(tmp, "wb") as f:
            f.write(head)
            f.writelines(records)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _remove_stale_temps(path: str) -> None:
    """Delete temp files left by a process that died while creating its file:
    old, and nobody holds their lock.  Entries that are not regular files or
    cannot be opened or deleted are left alone (they hold no counts)."""
    now = time.time()
    for name in os.listdir(path):
        if fmt.parse_name(name).role != "temp":
            continue
        file_path = os.path.join(path, name)
        try:
            fd, st = open_entry(file_path)
        except (CorruptFile, OSError):
            continue
        try:
            if now - st.st_mtime > STALE_TEMP_SECONDS and not owner_alive(fd):
                os.unlink(file_path)
        except OSError:
            pass
        finally:
            os.close(fd)
