"""Turning multiprocess mode on, and what the writer refuses: enabling late,
bad directories and capacities, strings that are not UTF-8, a full file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import _fmfile as fm
import pytest
from _expose import DEADLINE, fm_files, only_file, samples, scrape, serve, value
from _support import Impl

from fastmetrics import multiprocess
from fastmetrics.multiprocess import _format as fmt

pytest.importorskip("fcntl", reason="multiprocess mode needs POSIX (fcntl.flock)")


def test_enable_after_a_metric_exists_raises(mp):
    """enable() in a process that already created a metric raises
    RuntimeError and leaves the mode off: no directory, no exported variable,
    no file left behind, and the metric keeps working in process."""
    target = mp.path / "late"
    msg = mp.run("late_enable", env_dir=False, path=str(target))
    assert msg["error"] is not None
    assert msg["directory"] is None and msg["env"] is None
    assert msg["value"] == 4
    assert [name for name in msg["listing"] or [] if name.endswith((".fm", ".tmp"))] == []


def test_enable_refuses_bad_input_with_clear_errors(mp, tmp_path):
    """enable() without a directory, with a capacity under 64 KiB or not a
    multiple of the page size, or with an unparsable
    FASTMETRICS_MULTIPROC_CAPACITY raises ValueError and leaves the mode off.
    Once enabled, the same directory again is a no-op and another one a
    RuntimeError.  An enum with more states than the file format holds
    (65,536 in version 2 files, 4,096 in version 1) raises ValueError in this
    mode; as many as it holds work."""
    msg = mp.run("enable_errors", env_dir=False, path=str(mp.path), other=str(tmp_path / "other"))
    assert msg["no_directory"] == "ValueError: no directory given and FASTMETRICS_MULTIPROC_DIR is not set"
    assert msg["capacity_small"].startswith("ValueError: capacity must be a multiple of")
    assert msg["capacity_unaligned"].startswith("ValueError: capacity must be a multiple of")
    assert msg["capacity_env"] == "ValueError: FASTMETRICS_MULTIPROC_CAPACITY must be a number of bytes, not '64MiB'"
    assert msg["still_off"] is None
    assert msg["enabled"] == msg["again"] == str(mp.path)
    assert msg["other_directory"] == f"RuntimeError: multiprocess mode is already enabled with {mp.path}"
    [name] = fm_files(mp.path)
    limit = msg["limit"]
    assert limit == fmt.max_states(fm.fields((mp.path / name).read_bytes()).version)
    assert msg["states_over"] == f"ValueError: fastmetrics multiprocess mode supports at most {limit} enum states"
    assert msg["states_at_limit"] == limit - 1
    _, text = scrape(mp.path, enum_mode="mostrecent")
    assert value(text, "mp_big_ok", mp_big_ok=f"s{limit - 1}") == 1


def test_a_full_file_raises_memoryerror_and_keeps_what_was_counted(mp):
    """With a 64 KiB file, creating values and a new thread's first increment
    end in MemoryError naming the full file; everything counted before is in
    the scrape, exactly, and the file stays valid."""
    msg = mp.run("full", extra_env={multiprocess.ENV_CAPACITY: str(64 * 1024)})
    [name] = fm_files(mp.path)
    assert msg["error"] == (f"fastmetrics: the multiprocess file {mp.path / name} is full or detached "
                            "(set FASTMETRICS_MULTIPROC_CAPACITY higher)")
    assert msg["thread_error"] == [msg["error"]]
    assert 100 < msg["done"] < 1000
    collector, text = scrape(mp.path)
    assert collector.skipped == []
    assert sum(v for (name, _), v in samples(text).items() if name == "mp_fill_total") == msg["done"]


def test_strings_that_are_not_utf8_are_refused_before_anything_is_written(mp):
    """In multiprocess mode a label value, help text or enum state holding a
    lone surrogate (``os.fsdecode(b"\\xff")``) raises ValueError naming it,
    before a slot is allocated or a record written; the scrape keeps working."""
    msg = mp.run("surrogates")
    for what, error in msg["errors"].items():
        assert error is not None and error.startswith("ValueError: "), (what, error)
        assert "\\udcff'" in error and "not valid UTF-8" in error, (what, error)
    assert msg["errors"]["label"].startswith("ValueError: label value '\\udcff'")
    assert msg["after"] == msg["before"]
    data = only_file(mp.path).read_bytes()
    assert b"udcff" not in data and b"mp_bad_" not in data
    collector, text, _ = serve(mp.path)
    assert collector.skipped == []
    assert value(text, "mp_work_total", worker="ok") == 2


def test_in_process_mode_accepts_any_label_value(impl, registry):
    """Without multiprocess mode nothing is encoded: a lone surrogate is a
    label value like any other, as with prometheus_client."""
    bad = os.fsdecode(b"\xff")
    c = impl.Counter("surrogate", "Help " + bad, labelnames=["k"], registry=registry)
    c.labels(bad).inc()
    assert c.labels(bad)._value.get() == 1


def _import_in_child(impl: Impl, tmp_path: Path, code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=impl.env(**env),
                          capture_output=True, text=True, timeout=DEADLINE, cwd=tmp_path)


def test_a_capacity_beyond_the_limit_names_the_variable(impl, tmp_path):
    """FASTMETRICS_MULTIPROC_CAPACITY=2**62 fails the import with a
    ValueError naming the variable, its value and the limit (it used to be a
    bare ``OSError: File too large``); so does ``enable(capacity=2**62)``.
    Nothing is left in the directory."""
    path = tmp_path / "mp"
    huge = str(1 << 62)
    proc = _import_in_child(impl, tmp_path, "import fastmetrics",
                            **{multiprocess.ENV_DIR: str(path), multiprocess.ENV_CAPACITY: huge})
    assert proc.returncode != 0
    last_line = proc.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ValueError: ") and multiprocess.ENV_CAPACITY in last_line and huge in last_line
    assert "1 TiB" in last_line
    proc = _import_in_child(impl, tmp_path, (
        "from fastmetrics import multiprocess\n"
        "try:\n"
        f"    multiprocess.enable({str(path)!r}, capacity={huge})\n"
        "except ValueError as e:\n"
        "    print(e)\n"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"capacity={huge} ") and "1 TiB" in proc.stdout
    assert not path.exists() or not any(path.iterdir())


def test_a_capacity_the_file_system_refuses_names_the_variable(impl, tmp_path):
    """Under a file size limit (RLIMIT_FSIZE 1 MiB) the default 64 MiB file
    cannot be reserved: the import fails with a ValueError naming the
    variable and the capacity, not a bare OSError, and no file is left."""
    path = tmp_path / "mp"
    code = ("import resource\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n"
            "import fastmetrics\n")
    proc = _import_in_child(impl, tmp_path, code, **{multiprocess.ENV_DIR: str(path)})
    assert proc.returncode != 0
    last_line = proc.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ValueError: ") and multiprocess.ENV_CAPACITY in last_line, proc.stderr
    assert str(multiprocess.DEFAULT_CAPACITY) in last_line
    assert sorted(p.name for p in path.iterdir()) == []
