"""Multiprocess mode against hostile directories and extreme values.

Each test reproduces one finding of an audit (issue 11): a FIFO that blocked
every scrape, an infinite count that dropped a whole process, a label value
that broke every scrape for good, entries that stopped compaction, a copied
file counted twice, an unusable capacity.  Writes happen in real worker
processes (``tests/_mp_worker.py``) where the writer is under test, and in
files built by hand (``tests/_fmfile.py``) where the content must be one no
current writer produces.  Every operation that could hang runs in a thread
with a deadline.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict

from fastmetrics import multiprocess
from test_multiprocess import _pytest_process_stays_out_of_multiprocess_mode, implementation  # noqa: F401 - fixtures

DEADLINE = 60.0   # seconds; every bounded operation takes milliseconds


# -- helpers ---------------------------------------------------------------------------

def worker_env(implementation: str, **extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in (multiprocess.ENV_DIR, multiprocess.ENV_CAPACITY, "FASTMETRICS_NO_EXTENSIONS")}
    if implementation == "python":
        env["FASTMETRICS_NO_EXTENSIONS"] = "1"
    env.update(extra)
    return env


# -- 15. capacities the file system cannot hold --------------------------------------------------

def _import_in_child(implementation: str, tmp_path: Path, code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=worker_env(implementation, **env),
                          capture_output=True, text=True, timeout=DEADLINE, cwd=tmp_path)


def test_a_capacity_beyond_the_limit_names_the_variable(implementation, tmp_path):
    """FASTMETRICS_MULTIPROC_CAPACITY=2**62 fails the import with a
    ValueError naming the variable, its value and the limit (it used to be a
    bare ``OSError: File too large``); so does ``enable(capacity=2**62)``.
    Nothing is left in the directory."""
    path = tmp_path / "mp"
    huge = str(1 << 62)
    proc = _import_in_child(implementation, tmp_path, "import fastmetrics",
                            **{multiprocess.ENV_DIR: str(path), multiprocess.ENV_CAPACITY: huge})
    assert proc.returncode != 0
    last_line = proc.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ValueError: ") and multiprocess.ENV_CAPACITY in last_line and huge in last_line
    assert "1 TiB" in last_line
    proc = _import_in_child(implementation, tmp_path, (
        "from fastmetrics import multiprocess\n"
        "try:\n"
        f"    multiprocess.enable({str(path)!r}, capacity={huge})\n"
        "except ValueError as e:\n"
        "    print(e)\n"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"capacity={huge} ") and "1 TiB" in proc.stdout
    assert not path.exists() or not any(path.iterdir())


def test_a_capacity_the_file_system_refuses_names_the_variable(implementation, tmp_path):
    """Under a file size limit (RLIMIT_FSIZE 1 MiB) the default 64 MiB file
    cannot be reserved: the import fails with a ValueError naming the
    variable and the capacity, not a bare OSError, and no file is left."""
    path = tmp_path / "mp"
    code = ("import resource\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))\n"
            "import fastmetrics\n")
    proc = _import_in_child(implementation, tmp_path, code, **{multiprocess.ENV_DIR: str(path)})
    assert proc.returncode != 0
    last_line = proc.stderr.strip().splitlines()[-1]
    assert last_line.startswith("ValueError: ") and multiprocess.ENV_CAPACITY in last_line, proc.stderr
    assert str(multiprocess.DEFAULT_CAPACITY) in last_line
    assert sorted(p.name for p in path.iterdir()) == []
