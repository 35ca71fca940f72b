"""Smoke test of ``python -m fastmetrics bench`` (a subprocess: it starts activated
handlers, which register in that process's default REGISTRY).  No timing is
asserted: only the shape of the output.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List

import fastmetrics


def _run(args: List[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # The subprocess imports the same fastmetrics as this process (installed, or src/).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(fastmetrics.__file__).parents[1]),
                                                      env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "fastmetrics", "bench", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_json_has_every_op_for_both_implementations(tmp_path: Path) -> None:
    proc = _run(["--quick", "--rounds", "1", "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    rows = {(row["op"], row["impl"]) for row in report["rows"]}
    for op in ("counter.inc", "child.inc", "labels.inc", "enum.state", "handler.inc", "handler.state",
               "scrape.text.m10", "threads.enum.state.t2"):
        assert (op, "cython") in rows or report["environment"]["python_implementation"] != "CPython", op
        assert (op, "python") in rows, op
    assert set(report["enum_state_2_threads_vs_1"]) >= {"python", "prometheus_client"}
    assert all(row["ns_per_op"] > 0 for row in report["rows"])


def test_cli_table_says_how_its_ratios_are_made(tmp_path: Path) -> None:
    proc = _run(["--quick", "--rounds", "1"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "x faster than prometheus_client" in proc.stdout
    assert "Enum.state(s) throughput, 2 threads vs 1" in proc.stdout
    assert "every ratio is of the medians shown" in proc.stdout


def test_cli_plot(tmp_path: Path) -> None:
    png = tmp_path / "bench.png"
    proc = _run(["--quick", "--rounds", "1", "--plot", str(png)], tmp_path)
    if importlib.util.find_spec("matplotlib") is None:
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.splitlines()[-1].startswith("fastmetrics bench: error: argument --plot: needs matplotlib")
        return
    assert proc.returncode == 0, proc.stderr
    assert png.stat().st_size > 0


FAKE_PYCTI = '''
class OpenCTIMetricHandler:
    """Stands in for pycti's handler file: the constructor and hot path, doing nothing."""

    def __init__(self, connector_logger, activated=False, namespace="", subsystem="", port=9095):
        self._metrics = {}

    def inc(self, name, n=1):
        pass

    def state(self, state, name="state"):
        pass
'''


def test_cli_update_docs_fills_the_blocks_from_the_run(tmp_path: Path) -> None:
    handler = tmp_path / "opencti_metric_handler.py"
    handler.write_text(FAKE_PYCTI)
    readme, results = tmp_path / "README.md", tmp_path / "benchmarks.md"
    readme.write_text("# top\n<!-- bench:headline -->\nold\n<!-- /bench:headline -->\nmiddle\n"
                      "<!-- bench:handler -->\n<!-- /bench:handler -->\nend\n")
    results.write_text("<!-- bench:results -->\nold\n<!-- /bench:results -->\n")
    proc = _run(["--quick", "--rounds", "1", "--pycti", str(handler), "--update-docs", "README.md", "benchmarks.md"],
                tmp_path)
    if proc.returncode == 2 and "Cython core" in proc.stderr:  # FASTMETRICS_NO_EXTENSIONS=1
        return
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines()[-2:] == ["fastmetrics bench: updated README.md",
                                             "fastmetrics bench: updated benchmarks.md"]
    top = readme.read_text()
    assert top.startswith("# top\n<!-- bench:headline -->\n| operation | fastmetrics ns |"), top
    assert "\n<!-- /bench:headline -->\nmiddle\n<!-- bench:handler -->\n| call | pycti ns |" in top, top
    assert top.endswith("<!-- /bench:handler -->\nend\n"), top
    command = (f"python -m fastmetrics bench --quick --rounds 1 --pycti {handler} "
               "--update-docs README.md benchmarks.md")
    assert top.count(f"by one run of `{command}`") == 2, top
    report = results.read_text()
    assert f"```\n$ {command}\n{proc.stdout}```\n" in report, report  # the report exactly as printed
    assert "This run drew no chart" in report
