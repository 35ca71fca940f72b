"""Fuzzing the multiprocess reader and compaction with damaged real files.

Real workers of both implementations (``_mp_worker.py``, scenario
``declare``) write the files: two kept intact (``keep_a``, ``keep_b``), and
victims (a process file of each implementation, and an archive folded from
one).  Each case puts a mutated copy of one victim in a fresh directory next
to the intact files and asserts that a scrape (text and OpenMetrics), a
compaction, and a scrape after it all return without raising, within a
deadline, with every series of the intact files exact.  Mutations are drawn
from ``random.Random(1234)``: byte flips (header, record headers, anywhere),
truncations, garbage extensions, zeroed ranges, swapped records, ``used``
values, and records rewritten with valid checksums (metadata JSON, slots,
kinds, header fields, counts, enum words); plus special entries (FIFO,
socket, directory, symlinks, hard link, empty and zero-filled files).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import socket
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Tuple

import _fmfile as fm
import pytest
from _cluster import Cluster
from _expose import bounded, samples
from _support import load
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from fastmetrics.multiprocess import MultiProcessCollector, compact
from fastmetrics.multiprocess import _format as fmt

pytest.importorskip("fcntl", reason="multiprocess mode needs POSIX (fcntl.flock)")

SEED = 1234
CASES = 300
KEEP = ("keep_a", "keep_b")
Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


class Corpus(NamedTuple):
    keep: Dict[str, Tuple[str, bytes]]     # prefix -> (file name, bytes up to ``used``)
    keep_archive: bytes                    # keep_b folded into an archive
    victims: Dict[str, Tuple[str, bytes]]  # "c", "python", "archive" -> (file name, bytes)
    expected: Samples                      # every sample of the intact files


def _used_bytes(path: Path) -> bytes:
    """A process file up to its ``used`` offset: the same content, without
    the tens of MiB of sparse capacity."""
    with open(path, "rb") as f:
        head = f.read(fmt.HDR_SIZE)
        return head + f.read(fm.used_of(head) - fmt.HDR_SIZE)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    keep: Dict[str, Tuple[str, bytes]] = {}
    victims: Dict[str, Tuple[str, bytes]] = {}
    expected: Samples = {}
    archives: Dict[str, bytes] = {}
    for prefix, impl, children in (("keep_a", "c", 20), ("keep_b", "python", 20),
                                   ("victim_c", "c", 520), ("victim_py", "python", 520)):
        cluster = Cluster(load(impl), tmp_path_factory.mktemp(prefix))
        try:
            msg = cluster.run("declare", prefix=prefix, children=children)
        finally:
            cluster.close()
        [name] = os.listdir(cluster.path)
        data = _used_bytes(cluster.path / name)
        if prefix in KEEP:
            keep[prefix] = (name, data)
            expected.update((k, v) for k, v in samples(msg["text"]).items()
                            if k[0].startswith(prefix) and not k[0].endswith("_created"))
        else:
            victims[impl] = (name, data)
        if prefix in ("keep_b", "victim_py"):
            assert compact(str(cluster.path)).absorbed == 1
            archives[prefix] = (cluster.path / "archive.fm").read_bytes()
    victims["archive"] = ("archive.fm", archives["victim_py"])
    assert len(expected) > 40
    return Corpus(keep, archives["keep_b"], victims, expected)


# -- mutations -------------------------------------------------------------------------

def _record_offsets(data: bytes) -> List[int]:
    return [off for off, _, _ in fm.walk(data)]


def flip(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    where = rng.choice(["header", "record", "anywhere"])
    for _ in range(rng.randint(1, 8)):
        if where == "header":
            i = rng.randrange(fmt.HDR_SIZE)
        elif where == "record":
            i = rng.choice(_record_offsets(data)) + rng.randrange(fmt.REC_HEAD.size)
        else:
            i = rng.randrange(len(out))
        out[i] ^= rng.randint(1, 255)
    return bytes(out)


def truncate(rng: random.Random, data: bytes) -> bytes:
    return data[:rng.randrange(len(data))]


def extend(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data + rng.randbytes(rng.randint(1, 4096)))
    if rng.random() < 0.5:   # and publish the garbage
        fmt.USED.pack_into(out, fmt.HDR_USED, fmt.align(len(out)) if rng.random() < 0.5 else len(out))
    return bytes(out)


def zero(rng: random.Random, data: bytes) -> bytes:
    start = rng.randrange(len(data))
    length = min(len(data) - start, rng.choice([1, 8, 64, 128, 1024, 4096]))
    return data[:start] + bytes(length) + data[start + length:]


def used(rng: random.Random, data: bytes) -> bytes:
    value = rng.choice([-1, 0, 64, 127, 129, 2**63 - 1, len(data) + 128, len(data) - 128,
                        rng.randrange(len(data)), rng.randrange(2**40)])
    return data[:fmt.HDR_USED] + fmt.USED.pack(value) + data[fmt.HDR_USED + fmt.USED.size:]


def swap(rng: random.Random, data: bytes) -> bytes:
    parsed = fm.parse(data)
    records = list(parsed.records)
    i, j = rng.randrange(len(records)), rng.randrange(len(records))
    records[i], records[j] = records[j], records[i]
    return fm.rebuild(parsed, records)


_GARBAGE_JSON = [b"", b"null", b"[]", b"{}", b'"x"', b"1e999", b"[" * 5000, b"\xff\xfe{}",
                 b'{"type":"counter"}', b'{"type":"counter","name":1,"doc":"","unit":"","labelnames":[],'
                 b'"labelvalues":[]}']


def _json_variant(rng: random.Random, kind: int) -> bytes:
    type_ = fmt.COUNTER if kind in (fmt.REC_COUNTER, fmt.REC_TOTAL) else fmt.STATESET
    states = None if type_ == "counter" else ["a", "b"]
    surrogate = os.fsdecode(b"\xff")
    variants = [
        *_GARBAGE_JSON,
        fm.meta_body(type_, ""),
        fm.meta_body(type_, "victim bad name", states=states),
        fm.meta_body(type_, "victim_x" + surrogate, states=states),
        fm.meta_body(type_, "victim_x", doc=surrogate, states=states),
        fm.meta_body(type_, "victim_x", labelnames=["k"], labelvalues=[surrogate], states=states),
        fm.meta_body(type_, "victim_x", labelnames=["k"], labelvalues=[], states=states),
        fm.meta_body(type_, "victim_x", labelnames=[""], labelvalues=["v"], states=states),
        fm.meta_body(type_, "victim_x", unit="seconds", states=states),
        fm.meta_body("stateset" if type_ == "counter" else "counter", "victim_x"),
        fm.meta_body("stateset", "victim_x", states=[]),
        fm.meta_body("stateset", "victim_x", states=[str(i) for i in range(65537)]),
        fm.meta_body(type_, "victim_x", doc="d" * 100_000, states=states),
        json.dumps({"type": type_, "name": "victim_x", "doc": "", "unit": "", "labelnames": "ab",
                    "labelvalues": "cd", "states": states or []}).encode(),
    ]
    return rng.choice(variants)


def rewrite(rng: random.Random, data: bytes) -> bytes:
    """One record or header field replaced by another value, checksums valid."""
    parsed = fm.parse(data)
    records = list(parsed.records)
    i = rng.randrange(len(records))
    rec = records[i]
    what = rng.choice(["json", "slot", "kind", "header", "value", "duplicate"])
    if what == "json" and rec.kind in (fmt.REC_COUNTER, fmt.REC_ENUM, fmt.REC_TOTAL, fmt.REC_LAST):
        prefix = rec.payload[fmt.CRC.size:fmt.CRC.size + 8] if rec.kind in (fmt.REC_TOTAL, fmt.REC_LAST) else b""
        records[i] = rec._replace(payload=fmt.checked(prefix + _json_variant(rng, rec.kind)))
    elif what == "slot":
        records[i] = rec._replace(arg=rng.choice([-1, 2**20, 2**40, rng.randrange(1024), 2047, 2048]))
    elif what == "kind":
        records[i] = rec._replace(kind=rng.randrange(12))
    elif what == "header":
        field, choices = rng.choice([("version", [0, 1, 2, 3, 2**32 - 1]), ("flags", [0, 1, 2, 2**32 - 1]),
                                     ("pid", [0, -1, 2**62]), ("created_ns", [0, -1, 2**62]),
                                     ("uid", [bytes(16), os.urandom(16)])])
        return fm.rebuild(parsed, records, **{field: rng.choice(choices)})
    elif what == "value" and rec.kind in (fmt.REC_CHUNK, fmt.REC_WORDS, fmt.REC_TOTAL, fmt.REC_LAST):
        packed = fmt.F64 if rec.kind in (fmt.REC_CHUNK, fmt.REC_TOTAL) else fmt.I64
        new = (rng.choice([math.nan, -1.0, math.inf, -math.inf, 5e-324, 1.7e308]) if packed is fmt.F64
               else rng.choice([-1, 2**63 - 1, rng.randrange(2**63), 65535, 4096]))
        payload = bytearray(rec.payload)
        if rec.kind in fmt.DATA_KINDS:
            packed.pack_into(payload, packed.size * rng.randrange(fmt.CHUNK_SLOTS), new)
        else:
            packed.pack_into(payload, fmt.CRC.size, new)
            payload = bytearray(fmt.checked(bytes(payload[fmt.CRC.size:])))
        records[i] = rec._replace(payload=bytes(payload))
    elif what == "duplicate":
        records.insert(rng.randrange(len(records) + 1), rec)
    else:
        records[i] = rec._replace(payload=rec.payload[:rng.randrange(len(rec.payload) + 1)])
    return fm.rebuild(parsed, records)


MUTATIONS: List[Callable[[random.Random, bytes], bytes]] = [flip, truncate, extend, zero, used, swap, rewrite]


# -- special entries ---------------------------------------------------------------------

def _special(kind: str, corpus: Corpus) -> Callable[[Path], None]:
    keep_name, keep_data = corpus.keep["keep_a"]

    def make(path: Path) -> None:
        target = path / "s.fm"   # short: a socket's path has a length limit
        if kind == "fifo":
            os.mkfifo(target)
        elif kind == "fifo-archive":
            os.mkfifo(path / "archive.fm")
        elif kind == "socket":
            with socket.socket(socket.AF_UNIX) as sock:
                sock.bind(str(target))
        elif kind == "directory":
            target.mkdir()
        elif kind == "symlink-loop":
            os.symlink(path / "t.fm", target)
            os.symlink(target, path / "t.fm")
        elif kind == "symlink-to-keep":
            os.symlink(path / keep_name, target)
        elif kind == "hardlink-to-keep":
            os.link(path / keep_name, target)
        elif kind == "copy-of-keep":
            target.write_bytes(keep_data)
        elif kind == "empty":
            target.write_bytes(b"")
        elif kind == "zeros":
            target.write_bytes(bytes(128))
        elif kind == "sparse-zeros":
            with open(target, "wb") as f:
                f.truncate(1 << 30)
        elif kind == "archive-as-process-file":
            target.write_bytes(corpus.keep_archive)
        elif kind == "process-file-as-archive":
            (path / "archive.fm").write_bytes(corpus.victims["c"][1])
        else:
            raise AssertionError(kind)
    return make


# special entry -> the victim whose layout it goes in ("archive": no archive yet)
SPECIALS = {"fifo": "c", "fifo-archive": "archive", "socket": "c", "directory": "c", "symlink-loop": "c",
            "symlink-to-keep": "c", "hardlink-to-keep": "c", "copy-of-keep": "c", "empty": "c", "zeros": "c",
            "sparse-zeros": "c", "archive-as-process-file": "c", "process-file-as-archive": "archive"}


# -- one case ------------------------------------------------------------------------------

def _layout(path: Path, corpus: Corpus, victim: str) -> None:
    """The intact files: keep_a as a process file, keep_b as a process file
    (when the victim is the archive) or folded into the archive."""
    name, data = corpus.keep["keep_a"]
    (path / name).write_bytes(data)
    if victim == "archive":
        name, data = corpus.keep["keep_b"]
        (path / name).write_bytes(data)
    else:
        (path / "archive.fm").write_bytes(corpus.keep_archive)


def _scrape(path: Path, compacting: bool) -> Samples:
    """Both expositions (they must encode) and the collected samples."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(path), enum_mode="mostrecent", compact=compacting)
    generate_latest(registry)
    generate_openmetrics(registry)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for metric in registry.collect() for s in metric.samples}


def _check(path: Path, corpus: Corpus, case: str) -> None:
    def intact(got: Samples, when: str) -> None:
        kept = {k: v for k, v in got.items() if k[0].startswith(KEEP)}
        assert kept == corpus.expected, f"{case}: {when}: series of the intact files differ"

    intact(bounded(lambda: _scrape(path, compacting=False), path), "scrape")
    bounded(lambda: compact(str(path)), path)
    intact(bounded(lambda: _scrape(path, compacting=True), path), "scrape after compaction")


def test_fuzz_damaged_files_never_break_a_scrape_or_the_intact_series(corpus, tmp_path):
    rng = random.Random(SEED)
    cases: List[Tuple[str, str, Callable[[Path], None]]] = []   # (description, victim, make)
    for kind, victim in SPECIALS.items():
        cases.append((f"special {kind}", victim, _special(kind, corpus)))
    for n in range(CASES - len(SPECIALS)):
        victim = rng.choice(sorted(corpus.victims))
        mutation = rng.choice(MUTATIONS)
        name, data = corpus.victims[victim]
        mutated = mutation(rng, data)

        def make(path: Path, name: str = name, mutated: bytes = mutated) -> None:
            (path / name).write_bytes(mutated)
        cases.append((f"random #{n}: {mutation.__name__} of the {victim} victim", victim, make))

    for i, (case, victim, make) in enumerate(cases):
        path = tmp_path / f"c{i}"
        path.mkdir()
        _layout(path, corpus, victim)
        make(path)
        _check(path, corpus, case)
        shutil.rmtree(path, ignore_errors=True)
