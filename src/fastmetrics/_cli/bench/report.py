"""Statistics and output of ``fastmetrics bench``: rows, the table, the plot.

Contract:

* ns/op of a case is the median over its rounds; every ratio is the ratio of
  two such medians (``x floor`` = ours / the floor's, ``x faster`` = the
  peer's / ours), so the ratio columns agree with the ns/op column shown.
* :func:`format_table` is the one table formatter of the project: plain text
  (the CLI table here, and the gate and summary tables of ``bench/``) and
  Markdown (the generated blocks of the docs, :mod:`.docs`, and the gates
  table of ``docs/benchmarks.md``).  :func:`fmt_ns` and :func:`fmt_x` format
  every number the CLI prints, so the docs show the same digits.
"""

from __future__ import annotations

import importlib
import os
import platform
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from . import PROG
from .ops import ENUM_T1, ENUM_T2, Op
from .run import Case
from .subjects import FLOOR, LABELS, METRIC_CANDIDATES, OURS, PROM, PYCTI

#: The table's footer: what its columns are.
FOOTER = ("ns/op: median over the rounds; x floor: that median over the no-op method's;\n"
          "x faster: the peer's median over ours (every ratio is of the medians shown); "
          "thread rows: wall time / total ops.")


def format_table(header: Sequence[str], rows: Iterable[Optional[Sequence[str]]], align: str = "",
                 markdown: bool = False) -> List[str]:
    """Lines of a table: ``header``, a rule under it, then one line per row.

    ``align[i]`` is ``"<"`` (left) or ``">"`` (right) for column ``i``; by
    default the first column is left-aligned and the others right-aligned.
    Every row has ``len(header)`` cells.

    Plain text (the default): a rule of dashes under each column, cells padded
    to their column's widest cell and joined by two spaces, trailing spaces
    stripped; a ``None`` row is a blank line.  ``markdown=True``: a GitHub
    Markdown table (``| a | b |``, the rule ``|---|---:|`` carrying the
    alignment), cells unpadded, ``|`` in a cell escaped, ``None`` rows left out.
    """
    body = [None if row is None else tuple(row) for row in rows]
    align = align or "<" + ">" * (len(header) - 1)
    if markdown:
        def cells(row: Sequence[str]) -> str:
            return "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"

        rule_md = "|" + "|".join("---:" if side == ">" else "---" for side in align) + "|"
        return [cells(header), rule_md] + [cells(row) for row in body if row is not None]
    widths = [max([len(header[i])] + [len(row[i]) for row in body if row is not None]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(width) if side == "<" else cell.rjust(width)
                         for cell, width, side in zip(cells, widths, align)).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return [line(header), rule] + ["" if row is None else line(row) for row in body]


def ratio(numerator: Optional[Case], denominator: Optional[Case]) -> Optional[float]:
    """``numerator``'s median ns/op over ``denominator``'s, or None if either is missing."""
    if numerator is None or denominator is None:
        return None
    bottom = denominator.median_ns
    return numerator.median_ns / bottom if bottom > 0 else None


def summarize(cases: Sequence[Case], ops: Sequence[Op]) -> List[Dict[str, Any]]:
    """One row per measured (op, candidate), ops in order, candidates in
    :data:`LABELS` order: median ns/op, x floor (ours / floor), x faster
    (peer / ours, for our candidates only)."""
    by_key: Dict[Tuple[str, str], Case] = {(c.op.key, c.candidate): c for c in cases}
    rows: List[Dict[str, Any]] = []
    for op in ops:
        floor = by_key.get((op.key, FLOOR))
        prom = by_key.get((op.key, PROM))
        pycti = by_key.get((op.key, PYCTI))
        for candidate in LABELS:
            case = by_key.get((op.key, candidate))
            if case is None:
                continue
            ours = candidate in OURS
            rows.append({
                "op": op.key,
                "title": op.title,
                "impl": LABELS[candidate],
                "candidate": candidate,
                "ns_per_op": case.median_ns,
                "x_floor": ratio(case, floor),
                "x_faster_than_prometheus_client": ratio(prom, case) if ours else None,
                "x_faster_than_pycti": ratio(pycti, case) if ours else None,
                "pycti_applicable": PYCTI in op.candidates,
            })
    return rows


def thread_scaling(cases: Sequence[Case]) -> Dict[str, Optional[float]]:
    """Per metric candidate (display name): ``Enum.state(s)`` throughput on 2
    threads over 1 thread (the 1-thread row's median ns/op over the 2-thread row's)."""
    by_key = {(c.op.key, c.candidate): c for c in cases}
    out: Dict[str, Optional[float]] = {}
    for candidate in METRIC_CANDIDATES:
        one = by_key.get((ENUM_T1.key, candidate))
        two = by_key.get((ENUM_T2.key, candidate))
        if one is not None and two is not None:
            out[LABELS[candidate]] = ratio(one, two)
    return out


def fmt_x(value: Optional[float]) -> str:
    """A ratio as shown: two decimals, ``-`` for none."""
    return "-" if value is None else f"{value:.2f}"


def fmt_ns(value: float) -> str:
    """A time in ns as shown: one decimal, thousands separated (``67,220.9``)."""
    return f"{value:,.1f}"


def table(rows: Sequence[Mapping[str, Any]], pycti_available: bool) -> List[str]:
    """The CLI table of :func:`summarize`'s rows, a blank line between operations.

    ``x faster`` cells are ``-`` for the peers' own rows and where the peer has
    no such operation; the pycti cell reads ``n/a`` when pycti was not loaded.
    """
    head = ("op", "impl", "ns/op", "x floor", "x faster than prometheus_client", "x faster than pycti")
    lines: List[Optional[Tuple[str, ...]]] = []
    previous = None
    for row in rows:
        if previous is not None and row["op"] != previous:
            lines.append(None)
        previous = row["op"]
        ours = row["candidate"] in OURS
        if not ours or not row["pycti_applicable"]:
            pycti = "-"
        elif not pycti_available:
            pycti = "n/a"
        else:
            pycti = fmt_x(row["x_faster_than_pycti"])
        lines.append((
            row["title"],
            row["impl"],
            fmt_ns(row["ns_per_op"]),
            fmt_x(row["x_floor"]),
            fmt_x(row["x_faster_than_prometheus_client"]) if ours else "-",
            pycti,
        ))
    return format_table(head, lines, "<<>>>>")


def plot(rows: Sequence[Mapping[str, Any]], path: str, title: str) -> None:
    """Horizontal bars of ns/op per operation and candidate (log scale), the
    scrapes in a second panel (µs per scrape), saved as ``path``.  Needs
    matplotlib (``ImportError`` without it)."""
    matplotlib = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt = importlib.import_module("matplotlib.pyplot")

    colors = {"floor": "#9e9e9e", "cython": "#1b5e20", "python": "#81c784",
              "prometheus_client": "#e65100", "pycti": "#1565c0"}
    order = [LABELS[c] for c in (FLOOR, *OURS, PROM, PYCTI)]
    panels: List[List[str]] = [[], []]  # op titles: calls, scrapes
    for row in rows:
        panel = panels[1 if row["op"].startswith("scrape.") else 0]
        if row["title"] not in panel:
            panel.append(row["title"])
    values = {(row["title"], row["impl"]): row["ns_per_op"] for row in rows}
    sizes = [sum(1 for op in ops for impl in order if (op, impl) in values) + len(ops) for ops in panels]
    panels_present = [(ops, size) for ops, size in zip(panels, sizes) if ops]
    fig, axes = plt.subplots(len(panels_present), 1, squeeze=False,
                             figsize=(9, 0.19 * sum(size for _, size in panels_present) + 1.6),
                             gridspec_kw={"height_ratios": [size for _, size in panels_present]})
    seen = set()
    for ax, (ops, _) in zip(axes[:, 0], panels_present):
        scrape = ops is panels[1]
        scale = 1e-3 if scrape else 1.0
        y, ticks = 0.0, []
        for op in ops:
            impls = [impl for impl in order if (op, impl) in values]
            ticks.append(y + (len(impls) - 1) / 2)
            for impl in impls:
                label = None if impl in seen else impl
                seen.add(impl)
                ax.barh(y, values[(op, impl)] * scale, height=0.85, color=colors[impl], label=label)
                y += 1
            y += 1
        ax.set_yticks(ticks)
        ax.set_yticklabels(ops)
        ax.invert_yaxis()
        if scrape:
            ax.set_xlabel("µs per scrape (lower is better)")
        else:
            ax.set_xscale("log")
            ax.set_xlabel("ns per call (log scale; lower is better)")
        ax.grid(axis="x", which="both", alpha=0.3)
    axes[0, 0].set_title(title)
    axes[0, 0].legend(loc="lower right", fontsize="small", framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def environment(rounds: int, pycti: str) -> Dict[str, Any]:
    """Where and how the run was made (the JSON ``environment``, the text header)."""
    return {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "rounds": rounds,
        "pycti": pycti,
    }


def document(env: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], scaling: Mapping[str, Optional[float]],
             missing: Mapping[Tuple[str, str], str]) -> Dict[str, Any]:
    """The ``--json`` document: environment, rows, thread scaling, and why each
    unavailable (op, candidate) was not measured."""
    unavailable = [{"op": op, "candidate": candidate, "reason": reason}
                   for (op, candidate), reason in sorted(missing.items())]
    return {"environment": dict(env), "rows": list(rows), "enum_state_2_threads_vs_1": dict(scaling),
            "unavailable": unavailable}


def text(env: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], scaling: Mapping[str, Optional[float]],
         missing: Mapping[Tuple[str, str], str], pycti_available: bool) -> str:
    """The human report: a header, :func:`table`, thread scaling, :data:`FOOTER`,
    and why any of our cases (or pycti's, when loaded) was not measured."""
    hint = "" if pycti_available else " (pass --pycti FILE: pycti's connector/opencti_metric_handler.py)"
    lines = [
        f"{PROG}: {env['python_implementation']} {env['python']} on {env['machine']} ({env['cpus']} CPUs), "
        f"median of {env['rounds']} interleaved rounds; ns per call",
        f"pycti: {env['pycti']}{hint}",
        "",
        *table(rows, pycti_available),
        "",
        "Enum.state(s) throughput, 2 threads vs 1: " + ", ".join(f"{impl} {fmt_x(v)}x" for impl, v in scaling.items()),
        FOOTER,
    ]
    reasons = sorted({reason for (_, candidate), reason in missing.items()
                      if candidate in OURS or (candidate == PYCTI and pycti_available)})
    lines += [f"not measured: {reason}" for reason in reasons]
    return "\n".join(lines) + "\n"
