"""The ``fastmetrics`` command line in process (``fastmetrics._cli``): argparse
subcommands, ``--version``, error forms; the demo's names read from the
handler and its summary; the bench table's statistics and formatter.  The demo
and bench runs themselves: ``tests/test_demo.py``, ``bench/test_bench_cli.py``."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path
from typing import Any, List, Tuple

import pytest

import fastmetrics
from fastmetrics import Counter, Enum
from fastmetrics._cli import main
from fastmetrics._cli.bench.ops import Op
from fastmetrics._cli.bench.report import format_table, summarize
from fastmetrics._cli.bench.run import Case
from fastmetrics._cli.bench.subjects import FLOOR, FM_C, PROM
from fastmetrics._cli.bench.timing import Workload
from fastmetrics._cli.demo.connector import Tally, expected_samples, exposed_names
from fastmetrics._cli.demo.display import summary

VERSION_LINE = f"fastmetrics {fastmetrics.__version__} ({fastmetrics.implementation})\n"


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> Tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# -- the command line -------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(capsys, "--version") == (0, VERSION_LINE, "")


def test_python_dash_m_and_the_console_script_run_main() -> None:
    done = subprocess.run([sys.executable, "-m", "fastmetrics", "--version"], capture_output=True, text=True,
                          timeout=60, cwd=Path(fastmetrics.__file__).parents[1])
    assert (done.returncode, done.stdout) == (0, VERSION_LINE), done.stderr
    try:
        scripts = importlib.metadata.entry_points(group="console_scripts")  # type: ignore[call-arg]
    except TypeError:  # Python 3.9: a dict of groups
        scripts = importlib.metadata.entry_points()["console_scripts"]  # type: ignore[index]
    script = [ep for ep in scripts if ep.name == "fastmetrics"]
    if not script:
        pytest.skip("fastmetrics is not installed (no console script metadata)")
    assert script[0].load() is main


@pytest.mark.parametrize(
    ("argv", "prog"),
    [
        (["nope"], "fastmetrics"),
        ([], "fastmetrics"),
        (["--bogus"], "fastmetrics"),
        (["bench", "--rounds", "0"], "fastmetrics bench"),
        (["bench", "--pycti", "/nonexistent/handler.py"], "fastmetrics bench"),
        (["bench", "--bogus"], "fastmetrics bench"),
        (["demo", "stray"], "fastmetrics demo"),
    ],
    ids=lambda a: " ".join(a) if isinstance(a, list) else None,
)
def test_bad_command_line_exits_2_with_usage_and_one_error(capsys: pytest.CaptureFixture[str], argv: List[str],
                                                           prog: str) -> None:
    code, out, err = run_main(capsys, *argv)
    assert (code, out) == (2, "")
    lines = err.splitlines()
    assert lines[0].startswith(f"usage: {prog} [-h]"), err
    assert lines[-1].startswith(f"{prog}: error: "), err
    assert sum(line.startswith(prog) for line in lines) == 1, err


def test_demo_duration_zero_and_negative_are_one_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    errors = []
    for value in ("0", "-1", "nan"):
        code, out, err = run_main(capsys, "demo", "--duration", value)
        assert (code, out) == (2, "")
        assert err.startswith("usage: fastmetrics demo "), err
        errors.append(err.splitlines()[-1])
    assert errors == [f"fastmetrics demo: error: argument --duration: must be > 0 and <= 1e+09, not {v!r}"
                      for v in ("0", "-1", "nan")]


@pytest.mark.parametrize("argv", [["--help"], ["demo", "--help"], ["bench", "--help"]], ids=lambda a: " ".join(a))
def test_help_is_plain_text(capsys: pytest.CaptureFixture[str], argv: List[str]) -> None:
    code, out, err = run_main(capsys, *argv)
    assert (code, err) == (0, "")
    assert out.startswith("usage: fastmetrics")
    assert "``" not in out and ":func:" not in out and ":class:" not in out, out


# -- the demo: names from the handler, the summary ------------------------------------


class _Handler:
    """What the demo reads of an activated handler: ``_metrics``."""

    def __init__(self, **metrics: Any) -> None:
        self._metrics = metrics


def _renamed_handler() -> _Handler:
    kw: Any = {"namespace": "ns", "subsystem": "sub", "registry": None}
    return _Handler(
        bundle_send=Counter("objects_shipped_total", "Renamed.", **kw),
        record_send=Counter("records_sent_total", "Records.", **kw),
        run_count=Counter("runs_total", "Runs.", **kw),
        client_error_count=Counter("refusals_total", "Renamed.", **kw),
        state=Enum("phase", "Renamed.", states=["idle", "running", "stopped"], **kw),
    )


def test_demo_reads_the_exposed_names_from_the_handler() -> None:
    names = exposed_names(_renamed_handler())
    assert dict(names.counters) == {
        "bundle_send": "ns_sub_objects_shipped_total",
        "record_send": "ns_sub_records_sent_total",
        "run_count": "ns_sub_runs_total",
        "client_error_count": "ns_sub_refusals_total",
    }
    assert names.state == "ns_sub_phase"
    t = Tally()
    t.objects, t.bundles, t.runs, t.client_errors = 10, 3, 2, 1
    assert expected_samples(t, names) == {
        "ns_sub_objects_shipped_total": 10.0,
        "ns_sub_records_sent_total": 10.0,
        "ns_sub_runs_total": 2.0,
        "ns_sub_refusals_total": 1.0,
    }


def test_demo_summary_says_why_the_bundle_counter_counts_objects() -> None:
    names = exposed_names(_renamed_handler())
    t = Tally()
    t.objects, t.bundles, t.runs, t.client_errors = 1_234_567, 20_000, 5_000, 7
    seen = {**expected_samples(t, names), names.state: "stopped"}
    first, checked, *samples = summary(t, 4, 2.0, "http://x/metrics", seen, names).splitlines()
    assert first.startswith("stopped after 2.0s: 1,234,567 objects in 20,000 bundles (pycti sends each object "
                            "as its own bundle: ns_sub_objects_shipped_total counts 1,234,567), 5,000 runs, "), first
    assert checked == "checked http://x/metrics: every value equals the workers' own counts"
    assert samples[0].split() == ["ns_sub_objects_shipped_total", "1234567"]
    assert samples[-1].split() == ["ns_sub_phase", "stopped"]


# -- the bench table ------------------------------------------------------------------


def _case(op: Op, candidate: str, samples: List[float]) -> Case:
    return Case(op, candidate, Workload(), samples=samples)


def test_bench_ratios_are_ratios_of_the_medians_shown() -> None:
    op = Op("counter.inc", "Counter.inc()", "o.inc()", lambda subjects, candidate: None, (FLOOR, FM_C, PROM))
    # Per-round ratios ours/floor are 2, 0.5, 0.75 (median 0.75); the medians are 20 and 10.
    cases = [_case(op, FLOOR, [10.0, 10.0, 40.0]), _case(op, FM_C, [20.0, 5.0, 30.0]),
             _case(op, PROM, [100.0, 400.0, 300.0])]
    rows = {row["candidate"]: row for row in summarize(cases, [op])}
    assert [row["candidate"] for row in summarize(cases, [op])] == [FM_C, FLOOR, PROM]
    assert rows[FM_C]["ns_per_op"] == 20.0 and rows[FLOOR]["ns_per_op"] == 10.0
    assert rows[FM_C]["x_floor"] == 2.0
    assert rows[FM_C]["x_faster_than_prometheus_client"] == 15.0
    assert rows[PROM]["x_floor"] == 30.0 and rows[PROM]["x_faster_than_prometheus_client"] is None


def test_format_table() -> None:
    assert format_table(("name", "n"), [("a", "1"), None, ("long name", "1234")]) == [
        "name          n",
        "---------  ----",
        "a             1",
        "",
        "long name  1234",
    ]
    assert format_table(("k", "why"), [("x", "left")], "<<") == ["k  why", "-  ----", "x  left"]

