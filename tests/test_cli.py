"""The ``fastmetrics`` command line in process (``fastmetrics._cli``): argparse
subcommands, ``--version``, error forms; the demo's names read from the
handler and its summary; the bench table's statistics and formatter; the
generated blocks of the docs (``bench --update-docs``: markers, rendering,
the checks made before a run).  The demo and bench runs themselves:
``tests/test_demo.py``, ``bench/test_bench_cli.py``."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

import fastmetrics
from fastmetrics import Counter, Enum
from fastmetrics._cli import main
from fastmetrics._cli.bench import cli as bench_cli
from fastmetrics._cli.bench import docs
from fastmetrics._cli.bench.ops import Op, cli_ops
from fastmetrics._cli.bench.report import format_table, summarize, table, thread_scaling
from fastmetrics._cli.bench.run import Case
from fastmetrics._cli.bench.scaling import Cell
from fastmetrics._cli.bench.subjects import FLOOR, FM_C, FM_PY, PROM, PYCTI
from fastmetrics._cli.bench.timing import Workload
from fastmetrics._cli.demo.connector import Tally, expected_samples, exposed_names
from fastmetrics._cli.demo.display import summary

ROOT = Path(__file__).resolve().parents[1]
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


    assert format_table(("op", "ns", "x"), [("a|b", "1.0", "2"), None, ("c", "3", "4")], "<>>", markdown=True) == [
        "| op | ns | x |",
        "|---|---:|---:|",
        "| a\\|b | 1.0 | 2 |",
        "| c | 3 | 4 |",
    ]


# -- the docs' generated blocks (bench --update-docs) -----------------------------------

DOC = """# Title

Intro with a number: 42.
<!-- bench:headline -->
old headline
  with two lines
<!-- /bench:headline -->
between, kept as it is   \t
<!-- other:thing -->
not ours
<!-- /other:thing -->
<!-- bench:results -->
<!-- /bench:results -->
tail without a newline"""


def test_replace_blocks_rewrites_only_inside_the_markers_and_is_idempotent() -> None:
    contents = {"headline": "| a |\n|---|\n| 1 |\n", "results": "result line"}
    once = docs.replace_blocks(DOC, contents, "bench", "doc.md")
    assert once == DOC.replace("old headline\n  with two lines\n", "| a |\n|---|\n| 1 |\n").replace(
        "<!-- bench:results -->\n", "<!-- bench:results -->\nresult line\n")
    assert docs.replace_blocks(once, contents, "bench", "doc.md") == once
    assert docs.block_content(once, "headline", "bench") == "| a |\n|---|\n| 1 |\n"
    assert docs.block_content(once, "results", "bench") == "result line\n"
    emptied = docs.replace_blocks(once, {"headline": "", "results": ""}, "bench")
    assert docs.block_content(emptied, "headline", "bench") == ""
    assert [b.name for b in docs.find_blocks(DOC, "bench")] == ["headline", "results"]
    assert [b.name for b in docs.find_blocks(DOC, "other")] == ["thing"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a\n<!-- bench:headline -->\nb\n", "doc.md:2: <!-- bench:headline --> has no end marker "
                                             "<!-- /bench:headline -->"),
        ("a\nb\n<!-- /bench:results -->\n", "doc.md:3: <!-- /bench:results --> without its start marker"),
        ("<!-- bench:headline -->\n<!-- bench:results -->\n<!-- /bench:results -->\n<!-- /bench:headline -->\n",
         "doc.md:2: <!-- bench:results --> inside the block <!-- bench:headline --> of line 1"),
        ("<!-- bench:results -->\n<!-- /bench:results -->\n<!-- bench:results -->\n<!-- /bench:results -->\n",
         "doc.md:3: a second <!-- bench:results --> block (the first is at line 1)"),
        ("<!-- bench:headlin -->\n<!-- /bench:headlin -->\n", "doc.md:1: unknown block <!-- bench:headlin -->"),
    ],
    ids=["no end", "no start", "nested", "twice", "unknown"],
)
def test_bad_markers_are_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(docs.MarkerError) as info:
        docs.replace_blocks(text, {"headline": "x", "results": "y"}, "bench", "doc.md")
    assert str(info.value).startswith(message), str(info.value)


def test_update_file_writes_only_on_change(tmp_path: Path) -> None:
    path = tmp_path / "doc.md"
    path.write_bytes(DOC.replace("\n", "\r\n").encode())  # CRLF outside the blocks is kept
    contents = {"headline": "new", "results": "r"}
    assert docs.update_file(str(path), contents, "bench") is True
    first = path.read_bytes()
    assert b"Intro with a number: 42.\r\n" in first and b"\nnew\n" in first
    assert docs.update_file(str(path), contents, "bench") is False
    assert path.read_bytes() == first
    assert docs.check_file(str(path)) == ["headline", "results"]


def _fake_run() -> docs.Run:
    """Rows for every op of the CLI, with made-up medians (ours 10 + i, the floor
    12, prometheus_client and pycti 200 + i ns), as the CLI would have them."""
    cases = []
    for i, op in enumerate(cli_ops()):
        for candidate in op.candidates:
            ns = {FM_C: 10.0 + i, FM_PY: 100.0, FLOOR: 12.0, PROM: 200.0 + i, PYCTI: 300.0 + i}[candidate]
            if op.key.startswith("scrape."):
                ns *= 1000
            cases.append(_case(op, candidate, [ns, ns + 1, ns - 1]))
    rows = summarize(cases, cli_ops())
    env: Dict[str, Any] = {
        "python": "3.11.7", "python_implementation": "CPython", "machine": "x86_64", "cpus": 2, "rounds": 3,
        "pycti": "/x/pycti/connector/opencti_metric_handler.py", "date": "2026-12-01 06:50 UTC",
        "load_average_1min": 0.5, "wall_time_s": 12.3, "fastmetrics": "0.1.0", "implementation": "cython",
        "prometheus_client": "0.26.0", "pycti_version": "7.261026.0",
    }
    table = [Cell(64, 10_000, 0.06, 0.09, 1500, 1300, 6), Cell(1024, 100_000, 0.6, 0.9, None, 4000, 6)]
    return docs.Run(rows, thread_scaling(cases), "the report\n", "python -m fastmetrics bench --update-docs R.md",
                    env, "docs/bench.png", table)


def test_rendered_blocks_show_the_numbers_the_cli_table_prints() -> None:
    run = _fake_run()
    blocks = docs.render(run)
    assert set(blocks) == set(docs.BENCH_BLOCKS)
    # every headline row: our ns/op, x floor and x faster exactly as the CLI table prints them
    printed = table(run.rows, True)
    for op, label, peer in docs.HEADLINE_ROWS:
        title = next(row["title"] for row in run.rows if row["op"] == op)
        cli = next(line for line in printed if line.startswith(f"{title}  ") and " cython " in line).split()
        ns, x_floor, x_prom, x_pycti = cli[-4:]
        md = next(line for line in blocks["headline"].splitlines() if line.startswith(f"| {label} |"))
        cells = md.strip("|").split(" | ")
        assert (cells[1].strip(), cells[2].strip() or "-") == (ns, x_floor), (md, cli)
        assert cells[5].strip() == (x_prom if peer == PROM else x_pycti), (md, cli)
    provenance = docs.provenance(run)
    assert "\n" not in provenance
    for part in ("2026-12-01 06:50 UTC", "`python -m fastmetrics bench --update-docs R.md`", "CPython 3.11.7",
                 "2 CPUs", "load average 0.50", "pycti 7.261026.0", "medians of 3 interleaved rounds", "12 s"):
        assert part in provenance, part
    for name, block in blocks.items():
        assert provenance in block, name
    assert "| `inc(\"bundle_send\")` | 305.0 | 15.0 | 12.0 | 20.33 | 1.25 |" in blocks["handler"]
    assert "For 100,000 objects" in blocks["handler"] and "30.5 ms in pycti's handler and 1.5 ms" in blocks["handler"]
    assert "```\n$ python -m fastmetrics bench --update-docs R.md\nthe report\n```" in blocks["results"]
    assert "`--plot docs/bench.png` of the same run" in blocks["results"]
    assert "| scrape of 10 counters (text format) | 23,000.0 |  | 213,000.0 |  | 9.26 |" in blocks["headline"]
    assert "| 10,000 | 64 | 60.0 ms | 90.0 ms | 0.67 | 1.5 MiB | 1.3 MiB | 1.15 | 6 |" in blocks["threads"]
    assert "| 100,000 | 1,024 | 600.0 ms | 900.0 ms | 0.67 | n/a | 3.9 MiB | n/a | 6 |" in blocks["threads"]
    without = docs.render(dataclasses.replace(run, threads_table=None))
    assert set(without) == set(docs.BENCH_BLOCKS) - {docs.THREADS_BLOCK}
    with pytest.raises(docs.MissingCase, match="--threads-table"):
        docs.threads(dataclasses.replace(run, threads_table=None))


def test_bench_help_names_update_docs(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(capsys, "bench", "--help")
    assert code == 0
    assert "--update-docs FILE.md" in out and "<!-- bench:NAME -->" in " ".join(out.split()), out


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "No such file"),
        ("no markers here\n", "no <!-- bench:NAME --> ... <!-- /bench:NAME --> block (NAME: headline, handler, "
                               "results, threads)"),
        ("<!-- bench:headline -->\n", "has no end marker <!-- /bench:headline -->"),
        ("<!-- bench:nope -->\n<!-- /bench:nope -->\n", "unknown block <!-- bench:nope -->"),
    ],
    ids=["missing file", "no block", "no end marker", "unknown block"],
)
def test_update_docs_checks_its_files_before_measuring(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                       text: Any, message: str) -> None:
    path = tmp_path / "doc.md"
    if text is not None:
        path.write_text(text)
    code, out, err = run_main(capsys, "bench", "--update-docs", str(path))
    assert (code, out) == (2, ""), err
    last = err.splitlines()[-1]
    assert last.startswith("fastmetrics bench: error: argument --update-docs: ") and message in last, err
    assert text is None or path.read_text() == text


def test_update_docs_needs_pycti(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_cli, "find_pycti_handler_file", lambda: None)
    path = tmp_path / "doc.md"
    path.write_text("<!-- bench:results -->\n<!-- /bench:results -->\n")
    code, out, err = run_main(capsys, "bench", "--update-docs", str(path))
    assert (code, out) == (2, ""), err
    assert "the docs compare with pycti's handler, which is not loaded" in err.splitlines()[-1], err


def test_shipped_docs_have_the_bench_blocks_and_quote_the_cli() -> None:
    assert docs.check_file(str(ROOT / "README.md")) == ["headline", "handler"]
    benchmarks = ROOT / "docs" / "benchmarks.md"
    if not benchmarks.exists():
        pytest.skip("docs/ is not in the sdist")
    assert docs.check_file(str(benchmarks)) == ["results", "threads"]
    text = benchmarks.read_text(encoding="utf-8")
    assert f"`fastmetrics bench: error: {bench_cli.PLOT_NEEDS_MATPLOTLIB}`" in text
    assert "'fastmetrics[plot]'" not in text


def test_docs_blocks_carry_no_path_of_the_measuring_machine() -> None:
    from fastmetrics._cli.bench.docs import portable

    line = "bench --pycti /work/v/lib/python3.11/site-packages/pycti/connector/x.py --plot docs/bench.png"
    assert portable(line) == "bench --pycti <site-packages>/pycti/connector/x.py --plot docs/bench.png"
    assert portable("pycti: /usr/lib/python3/dist-packages/pycti/x.py") == "pycti: <site-packages>/pycti/x.py"
