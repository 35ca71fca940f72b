"""The on-disk layout (``fastmetrics.multiprocess._format``): the cores agree
with it, its bytes are pinned, its names parse, its enum words decode."""

from __future__ import annotations

import json
import subprocess
import sys
import zlib

import _fmfile as fm
import pytest

from fastmetrics.multiprocess import _format as fmt

def test_cores_agree_with_the_format(impl):
    """The arena writer of each implementation (``_arena.h`` in the C core,
    ``_arena_py`` for the twin) exports the layout constants it writes with;
    they are _format's, and so is the shard store's geometry."""
    from fastmetrics import _core
    arena = impl.core if impl.name == "c" else _core.arena()
    layout = arena.arena_layout()
    assert layout == {name: getattr(fmt, name) for name in layout}
    assert set(layout) == {"HDR_USED", "REC_META_OFF", "REC_DATA_OFF", "REC_ALIGN", "REC_CHUNK", "REC_WORDS",
                           "STATE_BITS", "CHUNK_SLOTS", "MAX_CHUNKS"}
    assert impl.core.MAX_SLOTS == fmt.MAX_SLOTS


def _u32(n: int) -> bytes:
    return n.to_bytes(4, sys.byteorder)


def _i64(n: int) -> bytes:
    return n.to_bytes(8, sys.byteorder, signed=True)


def test_the_layout_is_pinned():
    """A header, each shape of record, a metadata payload and an enum word,
    spelled out byte by byte (native byte order).  A change to _format that
    moves a byte fails here: files already written must stay readable (a new
    layout is a new VERSION)."""
    uid = bytes(range(16))
    head = b"FMSHARD\x00" + _u32(2) + _u32(fmt.FLAG_ARCHIVE) + _i64(7) + _i64(9) + _i64(4096) + uid + _u32(0x01020304)
    assert fmt.header(7, 9, 4096, uid, fmt.FLAG_ARCHIVE, used=256) == head + _u32(zlib.crc32(head)) + _i64(256) + \
        bytes(56)
    assert fmt.header(7, 9, 4096, uid)[8:16] == _u32(2) + _u32(0)
    assert fmt.header(7, 9, 4096, uid)[64:72] == _i64(128)
    assert tuple(range(1, 9)) == (fmt.REC_CHUNK, fmt.REC_WORDS, fmt.REC_COUNTER, fmt.REC_ENUM, fmt.REC_RETIRE,
                                  fmt.REC_TOTAL, fmt.REC_LAST, fmt.REC_ABSORBED)
    assert fmt.record(fmt.REC_COUNTER, 5, b"abc") == _u32(3) + _u32(3) + _i64(5) + b"abc" + bytes(128 - 19)
    data = bytes(range(256)) * 16
    assert fmt.record(fmt.REC_WORDS, 2, data) == _u32(2) + _u32(4096) + _i64(2) + bytes(112) + data
    body = b'{"type":"stateset","name":"a","doc":"d\\u00e9","unit":"","labelnames":["k"],"labelvalues":["v"],' \
           b'"states":["x","y"]}'
    meta = fmt.Meta("stateset", "a", "d\u00e9", "", ("k",), ("v",), ("x", "y"))
    assert fmt.meta_payload(meta, b"12345678") == _u32(zlib.crc32(b"12345678" + body)) + b"12345678" + body
    assert fmt.encode_word(fmt.EnumValue(3, 5_000_000_123)) == 3 | (5_000 << 16)
    assert fmt.encode_word(fmt.EnumValue(3, 5_000_000_123), version=1) == 3 | (5_000_000 << 12)


@pytest.mark.parametrize("name, parsed", [
    ("12-000102030405060708090a0b0c0d0e0f.fm", fmt.Name("process", 12, bytes(range(16)))),
    ("copy.fm", fmt.Name("process")),                                          # read, reported as a copy
    ("012-000102030405060708090a0b0c0d0e0f.fm", fmt.Name("process")),          # not as a writer names it
    ("12-000102030405060708090A0B0C0D0E0F.fm", fmt.Name("process")),
    ("\uff11\uff12-000102030405060708090a0b0c0d0e0f.fm", fmt.Name("process")),  # fullwidth digits
    ("12-0001.fm", fmt.Name("process")),
    ("archive.fm", fmt.Name("archive")),
    (".12-000102030405060708090a0b0c0d0e0f.fm.tmp", fmt.Name("temp")),
    ("archive.fm.77.tmp", fmt.Name("other")),
    (".lock", fmt.Name("other")),
    (".hidden.fm", fmt.Name("other")),
    ("12-000102030405060708090a0b0c0d0e0f.fm.corrupt", fmt.Name("other")),
    ("archive.fm.corrupt-1718000000000000000", fmt.Name("other")),
])
def test_one_parser_for_every_name(name, parsed):
    """parse_name tells every entry a directory can hold, and gives the pid
    and uid only of a name exactly as process_file_name writes it."""
    assert fmt.parse_name(name) == parsed


def test_names_as_written():
    uid = bytes(range(16))
    name = fmt.process_file_name(12, uid)
    assert name == "12-000102030405060708090a0b0c0d0e0f.fm"
    assert fmt.temp_name(name) == "." + name + ".tmp"
    assert fmt.archive_temp_name(77) == "archive.fm.77.tmp"
    assert (fmt.ARCHIVE_NAME, fmt.LOCK_NAME) == ("archive.fm", ".lock")
    assert fmt.aside_name(name) == name + ".corrupt"
    assert fmt.aside_name(fmt.ARCHIVE_NAME, 17) == "archive.fm.corrupt-17"


def test_the_format_loads_without_the_cores_or_metrics():
    """The pure-Python core's arena writer imports _format while fastmetrics
    itself is loading: importing it, and the package around it, must import
    neither a core nor fastmetrics.metrics (or the import would cycle)."""
    code = (
        "import importlib.util, json, sys\n"
        "spec = importlib.util.find_spec('fastmetrics')\n"
        "sys.modules['fastmetrics'] = importlib.util.module_from_spec(spec)   # as mid-import: __init__ not run\n"
        "import fastmetrics.multiprocess._format\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('fastmetrics.')"
        " and not m.startswith('fastmetrics.multiprocess'))))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def test_enum_words_of_both_versions_decode_to_index_and_wall_clock():
    """Version 2 stores ``index | stamp_ms << 16`` (65,536 states, good for
    millennia); version 1, still read, ``index | stamp_us << 12``."""
    assert (fmt.VERSION, fmt.STATE_BITS, fmt.MAX_STATES) == (2, 16, 65536)
    assert fmt.decode_word(1, fm.word(1, 4095, fm.NS_2024)) == (4095, fm.NS_2024)
    assert fmt.decode_word(2, fm.word(2, 65535, fm.NS_2100 + 999_999)) == (65535, fm.NS_2100)
    assert fmt.decode_word(2, 0) == (0, 0)
