"""Generated blocks in Markdown files: ``fastmetrics bench --update-docs FILE...``.

Contract:

* A block is the lines between a start marker ``<!-- PREFIX:NAME -->`` and its
  end marker ``<!-- /PREFIX:NAME -->``, each alone on its line.  Blocks do
  not nest, and a name appears at most once per file.
* :func:`find_blocks` lists a text's blocks in order; :func:`replace_blocks`
  replaces the lines inside every block with that block's new content and
  leaves every other character of the text as it was, so a second run with
  the same contents changes nothing.  Both raise :class:`MarkerError` (the
  file, the line, what is wrong) for a marker without its partner, a nested or
  repeated block, or (``replace_blocks``) a block it has no content for.
* :func:`render` makes the ``bench`` blocks (:data:`BENCH_BLOCKS`) from one
  run's rows, with :func:`provenance` (date, interpreter, machine, load,
  versions, the command line) in each: ``headline`` (the README's first
  table), ``handler`` (the OpenCTI handler against pycti's), ``results``
  (the report exactly as the run printed it) and ``threads`` (scrape and
  memory with T threads x S series against prometheus_client,
  :mod:`.scaling`; present only when the run measured that table).  Numbers are the run's own,
  formatted as its table formats them (:func:`.report.fmt_ns`,
  :func:`.report.fmt_x`), in tables made by :func:`.report.format_table`.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .report import fmt_ns, fmt_x, format_table
from .scaling import Cell, markdown_table
from .subjects import FM_C, FLOOR, PROM, PYCTI

#: The ``<!-- bench:NAME -->`` blocks ``fastmetrics bench --update-docs`` fills.
BENCH_PREFIX = "bench"
BENCH_BLOCKS: Tuple[str, ...] = ("headline", "handler", "results", "threads")
#: The block that needs the threads table (``--threads-table``).
THREADS_BLOCK = "threads"

_MARKER = re.compile(r"^[ \t]*<!--[ \t]*(?P<end>/?)(?P<prefix>[A-Za-z0-9_-]+):(?P<name>[A-Za-z0-9_-]+)"
                     r"[ \t]*-->[ \t\r]*$")
TIMES = "\N{MULTIPLICATION SIGN}"


class MarkerError(ValueError):
    """Markers that do not delimit blocks (the message names the file and line)."""


@dataclass(frozen=True)
class Block:
    """One block: its name and the 0-based line numbers of its two markers."""

    name: str
    start: int
    end: int


def _start(prefix: str, name: str) -> str:
    return f"<!-- {prefix}:{name} -->"


def _end(prefix: str, name: str) -> str:
    return f"<!-- /{prefix}:{name} -->"


def find_blocks(text: str, prefix: str, where: str = "<text>") -> List[Block]:
    """The ``<!-- prefix:NAME -->`` blocks of ``text``, in order (markers of
    other prefixes are ignored); :class:`MarkerError` if they do not pair up."""
    blocks: List[Block] = []
    seen: Dict[str, int] = {}
    opened: Optional[Tuple[str, int]] = None
    for number, line in enumerate(text.split("\n")):
        match = _MARKER.match(line)
        if match is None or match["prefix"] != prefix:
            continue
        name, closing = match["name"], bool(match["end"])
        if opened is None:
            if closing:
                raise MarkerError(f"{where}:{number + 1}: {_end(prefix, name)} without its start marker "
                                  f"{_start(prefix, name)} above it")
            if name in seen:
                raise MarkerError(f"{where}:{number + 1}: a second {_start(prefix, name)} block "
                                  f"(the first is at line {seen[name] + 1})")
            opened = (name, number)
            seen[name] = number
        elif closing and name == opened[0]:
            blocks.append(Block(name, opened[1], number))
            opened = None
        else:
            raise MarkerError(f"{where}:{number + 1}: {match.group(0).strip()} inside the block "
                              f"{_start(prefix, opened[0])} of line {opened[1] + 1}, whose end marker "
                              f"{_end(prefix, opened[0])} is missing (blocks do not nest)")
    if opened is not None:
        raise MarkerError(f"{where}:{opened[1] + 1}: {_start(prefix, opened[0])} has no end marker "
                          f"{_end(prefix, opened[0])}")
    return blocks


def block_content(text: str, name: str, prefix: str, where: str = "<text>") -> str:
    """The text inside block ``name`` (each line ending in a newline);
    :class:`MarkerError` if there is no such block."""
    lines = text.split("\n")
    for block in find_blocks(text, prefix, where):
        if block.name == name:
            return "".join(line + "\n" for line in lines[block.start + 1:block.end])
    raise MarkerError(f"{where}: no {_start(prefix, name)} ... {_end(prefix, name)} block")


def replace_blocks(text: str, contents: Mapping[str, str], prefix: str, where: str = "<text>") -> str:
    """``text`` with the inside of each ``prefix`` block replaced by
    ``contents[name]`` (a trailing newline is implied); every character
    outside the blocks, the markers included, is kept.  :class:`MarkerError`
    for unpaired markers or a block that ``contents`` has nothing for."""
    blocks = find_blocks(text, prefix, where)
    for block in blocks:
        if block.name not in contents:
            known = ", ".join(_start(prefix, name) for name in contents)
            raise MarkerError(f"{where}:{block.start + 1}: unknown block {_start(prefix, block.name)} "
                              f"(known: {known})")
    lines = text.split("\n")
    out: List[str] = []
    done = 0
    for block in blocks:
        out += lines[done:block.start + 1]
        body = contents[block.name].rstrip("\n")
        if body:
            out += body.split("\n")
        done = block.end
    out += lines[done:]
    return "\n".join(out)


def update_file(path: str, contents: Mapping[str, str], prefix: str) -> bool:
    """Replace the blocks of the file at ``path`` (:func:`replace_blocks`),
    writing it (atomically) only if that changes it; True if it changed."""
    with open(path, encoding="utf-8", newline="") as f:
        old = f.read()
    new = replace_blocks(old, contents, prefix, path)
    if new == old:
        return False
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".fastmetrics-docs-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(new)
        os.chmod(tmp, os.stat(path).st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return True


def check_file(path: str, prefix: str = BENCH_PREFIX, names: Sequence[str] = BENCH_BLOCKS) -> List[str]:
    """The names of the ``prefix`` blocks in the file at ``path``, checked
    before a run: :class:`MarkerError` for unpaired markers, an unknown name
    or no block at all; ``OSError`` if it cannot be read."""
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    blocks = find_blocks(text, prefix, path)
    known = ", ".join(names)
    if not blocks:
        raise MarkerError(f"{path}: no {_start(prefix, 'NAME')} ... {_end(prefix, 'NAME')} block "
                          f"(NAME: {known})")
    for block in blocks:
        if block.name not in names:
            raise MarkerError(f"{path}:{block.start + 1}: unknown block {_start(prefix, block.name)} "
                              f"(NAME: {known})")
    return [block.name for block in blocks]


# -- the bench blocks ----------------------------------------------------------------

#: README's headline rows: (op key, label, the peer the speedup is against).
HEADLINE_ROWS: Tuple[Tuple[str, str, str], ...] = (
    ("counter.inc", "`Counter.inc()`", PROM),
    ("child.inc", "labelled child `inc()`", PROM),
    ("labels.inc", "`labels('x').inc()`", PROM),
    ("enum.state", "`Enum.state(s)`", PROM),
    ("handler.inc", 'handler `inc("bundle_send")`', PYCTI),
    ("handler.inc_n", 'handler `inc("record_send", 5)`', PYCTI),
    ("handler.state", 'handler `state("running")`', PYCTI),
    ("scrape.text.m10", "scrape of 10 counters (text format)", PROM),
)
#: The handler block's rows: (op key, label).
HANDLER_ROWS: Tuple[Tuple[str, str], ...] = (
    ("handler.inc", '`inc("bundle_send")`'),
    ("handler.inc_n", '`inc("record_send", 5)`'),
    ("handler.state", '`state("running")`'),
    ("handler_off.inc", '`inc("bundle_send")`, not activated'),
    ("handler_off.inc_n", '`inc("record_send", 5)`, not activated'),
    ("handler_off.state", '`state("running")`, not activated'),
)
#: The headline's thread-scaling line: display name -> what it says (in this order).
SCALING_NAMES: Tuple[Tuple[str, str], ...] = (("cython", "fastmetrics"), ("prometheus_client", "prometheus_client"),
                                              ("floor", "the no-op method"))
#: Objects a connector sends, for the handler block's closing sentence.
OBJECTS = 100_000


@dataclass(frozen=True)
class Run:
    """What one run gives the blocks: its rows (:func:`.report.summarize`), the
    2-threads-vs-1 ratios (:func:`.report.thread_scaling`), the report as
    printed (:func:`.report.text`), the command line, ``environment`` (see
    :func:`provenance`) and the chart it drew, if any."""

    rows: Sequence[Mapping[str, Any]]
    scaling: Mapping[str, Optional[float]]
    report: str
    command: str
    env: Mapping[str, Any]
    plot: Optional[str] = None
    threads_table: Optional[Sequence[Cell]] = None   # measured only with --threads-table


def provenance(run: Run) -> str:
    """One line: when, where and how the numbers were measured."""
    env = run.env
    load = env.get("load_average_1min")
    load_text = "" if load is None else f", 1-minute load average {load:.2f} when it started"
    pycti = env.get("pycti_version")
    return (f"Measured {env['date']} by one run of `{run.command}`: {env['python_implementation']} "
            f"{env['python']} on {env['machine']}, {env['cpus']} CPUs{load_text}; fastmetrics "
            f"{env['fastmetrics']} ({env['implementation']}), prometheus_client {env['prometheus_client']}, "
            f"pycti {pycti or 'handler from ' + str(env['pycti'])}; medians of {env['rounds']} interleaved "
            f"rounds, {_seconds(env['wall_time_s'])} in all. Absolute times move with the machine's load; the "
            f"ratios hold better.")


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"


class MissingCase(LookupError):
    """A block needs an (op, candidate) the run did not measure."""


def _index(rows: Sequence[Mapping[str, Any]]) -> Dict[Tuple[str, str], Mapping[str, Any]]:
    return {(row["op"], row["candidate"]): row for row in rows}


def _get(index: Mapping[Tuple[str, str], Mapping[str, Any]], op: str, candidate: str) -> Mapping[str, Any]:
    try:
        return index[(op, candidate)]
    except KeyError:
        raise MissingCase(f"the run has no {candidate} case for {op}") from None


def _pycti_name(run: Run) -> str:
    version = run.env.get("pycti_version")
    return f"pycti {version}" if version else "pycti"


def headline(run: Run) -> str:
    """README's first table: fastmetrics' Cython core per operation, x floor,
    the peer's time and how many times faster; the thread-scaling line; the
    provenance."""
    index = _index(run.rows)
    lines: List[Tuple[str, ...]] = []
    for op, label, peer in HEADLINE_ROWS:
        ours = _get(index, op, FM_C)
        other = _get(index, op, peer)
        faster = ours["x_faster_than_prometheus_client" if peer == PROM else "x_faster_than_pycti"]
        lines.append((
            label,
            fmt_ns(ours["ns_per_op"]),
            "" if ours["x_floor"] is None else fmt_x(ours["x_floor"]),
            fmt_ns(other["ns_per_op"]) if peer == PROM else "",
            fmt_ns(other["ns_per_op"]) if peer == PYCTI else "",
            fmt_x(faster),
        ))
    head = ("operation", "fastmetrics ns", f"{TIMES} floor¹", "prometheus_client ns", "pycti handler ns",
            f"{TIMES} faster²")
    scaling = ", ".join(f"{name} {fmt_x(run.scaling.get(impl))}" for impl, name in SCALING_NAMES
                        if impl in run.scaling)
    return "\n".join([
        *format_table(head, lines, markdown=True),
        "",
        "¹ fastmetrics' time over the floor's: a no-op Python method with the same signature "
        "(`def inc(self, amount=1, exemplar=None): pass`; for `labels('x').inc()`, a no-op `labels()` "
        "returning `self` and then `inc()`); below 1 is faster than that call.",
        "",
        f"² the peer's time over fastmetrics': prometheus_client for the metrics and the scrape, "
        f"{_pycti_name(run)}'s own `OpenCTIMetricHandler` for the handler.",
        "",
        f"`Enum.state(s)` on 2 threads, throughput relative to 1 thread: {scaling}.",
        "",
        provenance(run),
    ]) + "\n"



def handler(run: Run) -> str:
    """README's speedup table of the OpenCTI handler against pycti's, what
    :data:`OBJECTS` objects cost, and the provenance."""
    index = _index(run.rows)
    lines: List[Tuple[str, ...]] = []
    for op, label in HANDLER_ROWS:
        ours = _get(index, op, FM_C)
        lines.append((
            label,
            fmt_ns(_get(index, op, PYCTI)["ns_per_op"]),
            fmt_ns(ours["ns_per_op"]),
            fmt_ns(_get(index, op, FLOOR)["ns_per_op"]),
            fmt_x(ours["x_faster_than_pycti"]),
            fmt_x(ours["x_floor"]),
        ))
    head = ("call", f"{_pycti_name(run)} ns", "fastmetrics ns", "no-op method (floor) ns", f"{TIMES} faster",
            f"{TIMES} floor")
    pycti_ms = _get(index, "handler.inc", PYCTI)["ns_per_op"] * OBJECTS / 1e6
    ours_ms = _get(index, "handler.inc", FM_C)["ns_per_op"] * OBJECTS / 1e6
    return "\n".join([
        *format_table(head, lines, markdown=True),
        "",
        f"For {OBJECTS:,} objects (one `inc(\"bundle_send\")` each) that is {pycti_ms:.1f} ms in "
        f"pycti's handler and {ours_ms:.1f} ms in fastmetrics'.",
        "",
        provenance(run),
    ]) + "\n"


def results(run: Run) -> str:
    """docs/benchmarks.md's results: the provenance, then the report exactly as
    the run printed it, and which chart it drew."""
    chart = (f"The chart below is `--plot {run.plot}` of the same run." if run.plot else
             "This run drew no chart (no `--plot`): the chart below is from another run.")
    return "\n".join([
        provenance(run),
        "",
        "```",
        f"$ {run.command}",
        run.report.rstrip("\n"),
        "```",
        "",
        chart,
    ]) + "\n"


# An installed package's absolute path (a venv's site-packages): committed docs
# show it as <site-packages>/..., so they carry no path of the measuring machine.
_SITE_PACKAGES = re.compile(r"(?:/[^\s`/]+)*/(?:site|dist)-packages/")


def portable(text: str) -> str:
    """``text`` with every absolute ``.../site-packages/`` prefix written as
    ``<site-packages>/``."""
    return _SITE_PACKAGES.sub("<site-packages>/", text)


def threads(run: Run) -> str:
    """docs/benchmarks.md's T x S table (:func:`.scaling.markdown_table`) and
    the provenance."""
    if run.threads_table is None:
        raise MissingCase("the run did not measure the threads table (--threads-table)")
    return "\n".join([
        *markdown_table(run.threads_table),
        "",
        "Each cell: one Counter with S labelled children, each incremented once by each of T parked "
        "threads; scrape = median `generate_latest` time of each library's registry in one worker process "
        "holding both (alternating); RSS added = resident set size after the T threads incremented minus "
        "before they started, in a fresh worker per library; shards = fastmetrics' shards (exclusive + "
        "stripes) in the scrape worker.",
        "",
        provenance(run),
    ]) + "\n"


def render(run: Run) -> Dict[str, str]:
    """Every bench block's content for ``run`` (:class:`MissingCase` if the
    run lacks a case a block needs), with installed paths made portable; the
    ``threads`` block only when the run measured its table."""
    blocks = {"headline": headline(run), "handler": handler(run), "results": results(run)}
    if run.threads_table is not None:
        blocks[THREADS_BLOCK] = threads(run)
    return {name: portable(content) for name, content in blocks.items()}
