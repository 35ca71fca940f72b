"""MultiProcessCollector: what an exporter serves from a directory (families
it never declared, enum modes), a collector kept across scrapes, a directory
lock it cannot take."""

from __future__ import annotations

import os
from typing import Dict, List, Optional

import pytest
from _support import in_forked_child
from _expose import Labels, bounded, enum_states, expected_count_totals, fm_files, scrape, serve, skipped_paths
from _expose import assert_counters, value
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from fastmetrics.multiprocess import MultiProcessCollector, compact

pytest.importorskip("fcntl", reason="multiprocess mode needs POSIX (fcntl.flock)")


def _mp_lines(text: str) -> List[str]:
    lines = [line for line in text.splitlines()
             if (line.startswith("mp_") or line.split(" ", 2)[-1].startswith("mp_")
                 or line.startswith(("# HELP mp_", "# TYPE mp_", "# UNIT mp_")))
             and "_created" not in line]
    return sorted(lines)


def test_an_exporter_that_declared_nothing_serves_the_full_families(mp):
    """This process never declared the workers' metrics, yet the collector
    serves them as the worker's own registry does: same names, HELP (escaped
    newline and backslash), TYPE, UNIT, labels and values, in both exposition
    formats (minus ``_created``, which multiprocess mode drops)."""
    assert not any(family.name.startswith("mp_") for family in REGISTRY.collect())
    msg = mp.run("count", n=10, label="w")
    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(mp.path), enum_mode="mostrecent")
    for fmt, generate, lines in (("text", generate_latest, 20), ("openmetrics", generate_openmetrics, 21)):
        served, declared = _mp_lines(generate(registry).decode()), _mp_lines(msg[fmt])
        assert served == declared, fmt
        assert len(served) == lines   # 5 families, 10 samples (+ 1 UNIT line in OpenMetrics)
    text = generate_latest(registry).decode()
    assert "# HELP mp_bytes_total Bytes moved.\\nSecond line, with a \\\\ backslash.\n" in text
    assert "# TYPE mp_phase gauge\n" in text   # how the text format shows a stateset
    assert "# UNIT mp_bytes bytes\n" in generate_openmetrics(registry).decode()


def test_enum_pid_and_mostrecent_modes(mp):
    """``pid`` mode shows each live process's state with its pid; ``mostrecent``
    shows the state set last in time over all processes, exited ones included,
    and keeps doing so through compaction (an older process's newer state wins
    over a newer file's older state)."""
    def series(pid: Optional[int] = None) -> Labels:
        return (("pid", str(pid)), ("role", "reader")) if pid else (("role", "reader"),)

    def states(mode: str) -> Dict[Labels, str]:
        return enum_states(scrape(mp.path, enum_mode=mode, compact=False)[1], "mp_role")

    p1 = mp.serve()
    p1.call("state", metric="role", labels=["reader"], state="idle")
    p2 = mp.serve()
    p2.call("state", metric="role", labels=["reader"], state="busy")
    assert states("pid") == {series(p1.pid): "idle", series(p2.pid): "busy"}
    p2.exit()
    assert states("pid") == {series(p1.pid): "idle"}
    assert states("mostrecent") == {series(): "busy"}   # the exited process set it last

    p1.call("state", metric="role", labels=["reader"], state="done")   # older file, newer state
    assert states("mostrecent") == {series(): "done"}
    assert compact(str(mp.path)).absorbed == 1   # p2 folded; p1 alive
    assert states("mostrecent") == {series(): "done"}
    assert states("pid") == {series(p1.pid): "done"}

    p1.exit()
    assert compact(str(mp.path)).absorbed == 1
    assert states("mostrecent") == {series(): "done"}
    assert states("pid") == {}
    p3 = mp.serve()
    p3.call("state", metric="role", labels=["reader"], state="busy")
    p3.exit()
    assert compact(str(mp.path)).absorbed == 1   # archive vs archive: the later stamp wins
    assert states("mostrecent") == {series(): "busy"}


def test_one_collector_follows_a_live_process_and_lets_it_be_compacted(mp):
    """The same collector scrapes again and again while a live worker adds
    values, labelled children, threads (new chunks) and enum states: each
    scrape is exact.  Files that collectors keep mapped between scrapes do not
    look alive: once the worker exits and a second collector has read its
    file, the first collector's compaction still folds it."""
    registry = CollectorRegistry()
    collector = MultiProcessCollector(registry, str(mp.path))

    def text() -> str:
        out = generate_latest(registry).decode()
        assert collector.skipped == []
        return out

    worker = mp.serve()
    worker.call("inc", metric="ops", amount=2)
    assert value(text(), "mp_ops_total") == 2
    worker.call("inc", metric="ops", times=1000, threads=4)
    for code in range(40):   # new series: metadata records appended after the first scrape
        worker.call("inc", metric="bytes", labels=["in", str(code)], amount=code)
    worker.call("state", metric="role", labels=["writer"], state="busy")
    out = text()
    assert value(out, "mp_ops_total") == 4002
    assert [value(out, "mp_bytes_total", direction="in", code=str(code)) for code in range(40)] == \
        [float(code) for code in range(40)]
    assert enum_states(out, "mp_role") == {(("pid", str(worker.pid)), ("role", "writer")): "busy"}
    worker.call("reset", metric="ops")
    worker.call("inc", metric="ops", amount=5)
    assert value(text(), "mp_ops_total") == 5
    assert fm_files(mp.path) != ["archive.fm"]

    worker.exit()
    lazy_registry = CollectorRegistry()   # maps the exited worker's file and keeps it mapped
    MultiProcessCollector(lazy_registry, str(mp.path), compact=False)
    assert value(generate_latest(lazy_registry).decode(), "mp_ops_total") == 5
    out = text()
    assert fm_files(mp.path) == ["archive.fm"]
    assert value(out, "mp_ops_total") == 5
    assert value(out, "mp_bytes_total", direction="in", code="39") == 39
    assert enum_states(out, "mp_role") == {}


def test_a_lock_that_is_a_directory_is_reported_and_the_scrape_served(mp):
    """``.lock`` is a directory: the scrape reads without the lock and
    reports it, compaction does not run (reported), nothing raises."""
    mp.run("count", n=10, label="w")
    lock = mp.path / ".lock"
    lock.mkdir()
    collector, text, _ = serve(mp.path)
    assert_counters(text, expected_count_totals({"w": 10}))
    assert skipped_paths(collector.skipped) == [str(lock)]
    result = bounded(lambda: compact(str(mp.path)))
    assert result.ran is False and skipped_paths(result.skipped) == [str(lock)]
    assert len(fm_files(mp.path)) == 1 and "archive.fm" not in fm_files(mp.path)


def test_a_new_collector_per_scrape_reparses_nothing(mp, monkeypatch):
    """prometheus_client's per-request pattern: a fresh collector per scrape
    reuses what earlier collectors of the directory parsed (files are
    append-only): no record is walked and no metadata parsed again, and the
    counts are today's; a directory recreated at the same path is read anew."""
    from fastmetrics.multiprocess import _reader, _shared

    _shared.forget_all()
    mp.run("count", n=10, label="w")
    expected = expected_count_totals({"w": 10})
    _, text = scrape(mp.path, compact=False)
    assert_counters(text, expected)
    calls = {"walk": 0, "meta": 0}
    real_walk, real_meta = _reader.Reader._walk, _reader._parse_meta

    def walk(self, *args):
        calls["walk"] += 1
        return real_walk(self, *args)

    def parse_meta(*args):
        calls["meta"] += 1
        return real_meta(*args)

    monkeypatch.setattr(_reader.Reader, "_walk", walk)
    monkeypatch.setattr(_reader, "_parse_meta", parse_meta)
    for _ in range(3):
        _, text = scrape(mp.path, compact=False)   # a new collector each time
        assert_counters(text, expected)
    assert calls == {"walk": 0, "meta": 0}
    mp.run("count", n=5, label="w")   # a new file: walked once, counted
    five = expected_count_totals({"w": 5})
    expected = {key: value + five[key] for key, value in expected.items()}
    _, text = scrape(mp.path, compact=False)
    assert calls["walk"] == 1
    assert_counters(text, expected)
    _, text = scrape(mp.path)   # compaction reuses the parsed files too
    assert_counters(text, expected)
    assert fm_files(mp.path) == ["archive.fm"]
    assert calls["walk"] == 2   # the new archive only


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_fork_child_scrapes_while_the_parent_holds_the_shared_reader(mp):
    """The shared reader's lock is held by a parent's scrape at fork(): the
    child's collectors do not wait for it (they start without shared readers)."""
    from fastmetrics.multiprocess import _shared

    mp.run("count", n=3, label="w")
    _, lock = _shared.reader_for(str(mp.path))
    with lock:   # a scrape in progress in the parent
        report = in_forked_child(lambda: {"ok": "mp_ops_total" in bounded(lambda: scrape(mp.path, compact=False))[1]},
                                 timeout=90)   # past bounded()'s own deadline
    assert report == {"ok": True}
