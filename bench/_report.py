"""Compact summaries printed after pytest-benchmark's tables (no pytest imports).

* :func:`scrape_growth`: one line per (format, metrics, threads) point of the
  scrape grid: the median µs per scrape of each candidate (pooled over
  repetitions), Cython over prometheus_client (median of per-repetition
  ratios, as the gates) and fastmetrics' ``shards_total`` at the time.
* :func:`mp_scrape`: multiprocess scrape time by number of process files:
  fastmetrics reading every file, fastmetrics after compaction, and
  prometheus_client's multiprocess collector, with paired ratios.
* :func:`churn_memory`: per candidate, threads churned, time per short-lived
  thread, RSS and shard counts before the first / after the last repetition.

Both take ``records``: ``(extra_info, per-op times)`` of every benchmark run.
"""

from __future__ import annotations

import statistics
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from _gates import Reps, paired_ratio

from fastmetrics._cli.bench.report import format_table

Record = Tuple[Mapping[str, Any], Sequence[float]]

SCRAPE_COLUMNS = ("fastmetrics_c", "fastmetrics_py", "prometheus_client")


def _paired(num: Reps, den: Reps) -> str:
    """:func:`_gates.paired_ratio` of ``num`` over ``den``, formatted (``-`` for none)."""
    paired = paired_ratio(num, den)
    return "-" if paired is None else f"{paired[0]:.2f}"


def scrape_growth(records: Sequence[Record]) -> List[str]:
    """Scrape cost as metrics and threads grow (empty if no scrape ran)."""
    points: Dict[Tuple[str, int, int], Dict[str, List[float]]] = {}
    by_rep: Dict[Tuple[str, int, int], Dict[str, Dict[int, List[float]]]] = {}
    shards: Dict[Tuple[str, int, int], Dict[str, int]] = {}
    for info, data in records:
        op = str(info.get("op", ""))
        if not op.startswith("scrape."):
            continue
        point = (op.split(".")[1], int(info["metrics"]), int(info["writer_threads"]))
        points.setdefault(point, {}).setdefault(info["candidate"], []).extend(data)
        reps = by_rep.setdefault(point, {}).setdefault(info["candidate"], {})
        reps.setdefault(int(info.get("rep", 0)), []).extend(data)
        if "shards_total" in info:
            seen = shards.setdefault(point, {})
            seen[info["candidate"]] = max(seen.get(info["candidate"], 0), int(info["shards_total"]))
    if not points:
        return []
    head = ("format", "metrics", "threads", *(f"{c} µs" for c in SCRAPE_COLUMNS), "c/prom", "shards (c/py)")
    rows: List[Tuple[str, ...]] = []
    for point in sorted(points):
        medians = {c: statistics.median(v) * 1e6 for c, v in points[point].items() if v}
        cells = [f"{medians[c]:.1f}" if c in medians else "-" for c in SCRAPE_COLUMNS]
        ratio = _paired(by_rep[point].get("fastmetrics_c", {}), by_rep[point].get("prometheus_client", {}))
        seen = shards.get(point, {})
        shard_cell = f"{seen.get('fastmetrics_c', '-')}/{seen.get('fastmetrics_py', '-')}"
        rows.append((point[0], str(point[1]), str(point[2]), *cells, ratio, shard_cell))
    return format_table(head, rows)


def churn_memory(records: Sequence[Record]) -> List[str]:
    """Memory after thread churn, one line per candidate over all its repetitions:
    threads churned, median µs per thread, RSS and shards before the first
    repetition and after the last (empty if none ran)."""
    runs: Dict[str, List[Record]] = {}
    for info, data in records:
        if info.get("op") == "churn.thread" and data:
            runs.setdefault(str(info["candidate"]), []).append((info, data))
    head = ("candidate", "threads", "µs/thread", "RSS before KiB", "RSS after KiB", "RSS delta KiB",
            "shards before", "shards after")
    rows: List[Tuple[str, ...]] = []
    for candidate in sorted(runs):
        reps = sorted(runs[candidate], key=lambda r: int(r[0].get("rep", 0)))
        first, last = reps[0][0], reps[-1][0]
        times = [t for _, data in reps for t in data]
        before, after = first.get("rss_kib_before"), last.get("rss_kib_after")
        delta = str(after - before) if isinstance(before, int) and isinstance(after, int) else "-"
        rows.append((
            candidate,
            str(sum(int(info.get("threads_churned", 0)) for info, _ in reps)),
            f"{statistics.median(times) * 1e6:.1f}",
            str(before if before is not None else "-"),
            str(after if after is not None else "-"),
            delta,
            str(first.get("shards_total_before", "-")),
            str(last.get("shards_total_after", "-")),
        ))
    return format_table(head, rows) if rows else []


def mp_scrape(records: Sequence[Record]) -> List[str]:
    """Multiprocess scrape time as files grow (empty if none ran)."""
    by_files: Dict[int, Dict[str, Dict[int, List[float]]]] = {}
    for info, data in records:
        if str(info.get("op", "")).startswith("mp.scrape.") and data:
            variant = str(info["variant"])
            reps = by_files.setdefault(int(info["files"]), {}).setdefault(variant, {})
            reps.setdefault(int(info.get("rep", 0)), []).extend(data)
    if not by_files:
        return []
    variants = ("uncompacted", "compacted", "prometheus_client")
    head = ("files", "fastmetrics µs", "fastmetrics compacted µs", "prometheus_client µs",
            "prom/fm", "prom/fm compacted")
    rows: List[Tuple[str, ...]] = []
    for files in sorted(by_files):
        reps = by_files[files]
        cells = []
        for variant in variants:
            times = [t for data in reps.get(variant, {}).values() for t in data]
            cells.append(f"{statistics.median(times) * 1e6:.1f}" if times else "-")
        prom = reps.get("prometheus_client", {})
        rows.append((str(files), *cells, _paired(prom, reps.get("uncompacted", {})),
                     _paired(prom, reps.get("compacted", {}))))
    return format_table(head, rows)
