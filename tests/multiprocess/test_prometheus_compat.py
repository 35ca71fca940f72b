"""The prometheus_client-compatible multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``).

Every case runs in child processes (the mode is chosen at import), on both
implementations, and reads the directory with prometheus_client's own,
unmodified ``MultiProcessCollector`` (or its ``MmapedDict`` reader):

- the differential test runs ``_prom_scenario.py`` (threads, fork, spawn, a
  SIGKILLed worker, reset, remove) once with prometheus_client's ``Counter``
  and once with fastmetrics', and asserts the same exposition (families,
  help, types, samples and values; the collector's own family and sample
  order follows ``glob`` and is not part of it), the same warnings and the
  same in-process values;
- the enum exposition, exactly;
- the files: one per process and thread, named as prometheus_client's, a
  dead process's file with the same pid never reused, a full file followed by
  a new one, thread exit pooling the files with their counts;
- exact totals under threads with scrapes that never go backwards;
- the errors at import, naming the variable.

``.ci/prometheus-client.sh`` runs this module against the lowest and the
highest supported prometheus_client.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
from prometheus_client.parser import text_string_to_metric_families

from _expose import samples
from _parity import canonical
from _support import Impl, free_port, package_env

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")

HERE = Path(__file__).parent
SCENARIO = HERE / "_prom_scenario.py"


def run(impl: Impl, code: str, directory: Path, **env: str) -> str:
    """Run ``code`` (after the implementation check) in a child with
    ``PROMETHEUS_MULTIPROC_DIR=directory``; its stdout."""
    child_env = package_env(impl.env(PROMETHEUS_MULTIPROC_DIR=str(directory), **env))
    proc = subprocess.run([sys.executable, "-c", impl.prologue + textwrap.dedent(code)], env=child_env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def scenario(lib: str, impl: Impl, directory: Path) -> Tuple[str, List[str], Dict[str, float]]:
    env = package_env(impl.env(PROMETHEUS_MULTIPROC_DIR=str(directory), FM_SCENARIO_LIB=lib))
    proc = subprocess.run([sys.executable, str(SCENARIO)], env=env, capture_output=True, text=True, timeout=300,
                          cwd=str(HERE))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    exposition = "\n".join(line for line in lines if not line.startswith("#W") and not line.startswith("#V")) + "\n"
    warnings = [line for line in lines if line.startswith("#WARNING")]
    value_line = next(line for line in lines if line.startswith("#VALUE")).split()[1:]
    values = {value_line[i]: float(value_line[i + 1]) for i in range(0, len(value_line), 2)}
    return exposition, warnings, values


def test_same_exposition_as_prometheus_client(impl: Impl, tmp_path: Path) -> None:
    (tmp_path / "upstream").mkdir()
    (tmp_path / "fastmetrics").mkdir()
    upstream = scenario("prometheus_client", impl, tmp_path / "upstream")
    ours = scenario("fastmetrics", impl, tmp_path / "fastmetrics")
    assert canonical(ours[0]) == canonical(upstream[0])
    assert ours[1:] == upstream[1:]
    # the scenario's totals, spelled out: 4 threads x 2500, the fork's 2, the
    # spawned worker's 7, the SIGKILLed worker's 100, and 0.25
    families = {f[0]: f[3] for f in canonical(ours[0])}
    assert families["jobs"] == [("jobs_total", (), 10109.25)]
    assert ("requests_total", (("method", "GET"), ("path", "/x")), 20005.0) in families["requests"]
    assert ("requests_total", (("method", "GET"), ("path", "/killed")), 11.0) in families["requests"]
    assert families["resets"] == [("resets_total", (), 3.0)]   # child's 1 after its reset, parent's 2 after its
    assert len(upstream[1]) == 2   # remove() warned twice


def test_enum_is_a_most_recent_gauge_per_state(impl: Impl, tmp_path: Path) -> None:
    out = run(impl, """
        import os, time
        from fastmetrics import Enum
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        def scrape():
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry).decode()

        phase = Enum("phase", "What it does.", ["worker"], states=["starting", "serving", "stopping"])
        phase.labels("a")                  # declared: its first state until someone sets one
        print(scrape(), end="")
        print("--")
        pid = os.fork()
        if pid == 0:
            phase.labels("a").state("serving")
            phase.labels("b").state("stopping")
            os._exit(0)
        os.waitpid(pid, 0)
        print(scrape(), end="")
        print("--")
        time.sleep(0.01)
        phase.labels("a").state("stopping")   # newer than the child's: wins
        try:
            phase.labels("a").state("nope")
        except ValueError as e:
            print("ValueError", e)
        print(phase.labels("a")._value, phase.labels("b")._value)
        print(scrape(), end="")
        """, tmp_path)
    first, second, third = out.split("--\n")
    assert first == ('# HELP phase What it does.\n# TYPE phase gauge\n'
                     'phase{phase="starting",worker="a"} 1.0\n'
                     'phase{phase="serving",worker="a"} 0.0\n'
                     'phase{phase="stopping",worker="a"} 0.0\n')
    assert canonical(second) == canonical('# HELP phase What it does.\n# TYPE phase gauge\n'
                                          'phase{phase="starting",worker="a"} 0.0\n'
                                          'phase{phase="serving",worker="a"} 1.0\n'
                                          'phase{phase="stopping",worker="a"} 0.0\n'
                                          'phase{phase="starting",worker="b"} 0.0\n'
                                          'phase{phase="serving",worker="b"} 0.0\n'
                                          'phase{phase="stopping",worker="b"} 1.0\n')
    lines = third.splitlines()
    assert lines[0] == "ValueError 'nope' is not in list"
    assert lines[1] == "2 0"   # this process's own view: b was set in the child only
    assert canonical("\n".join(lines[2:]) + "\n") == canonical(
        '# HELP phase What it does.\n# TYPE phase gauge\n'
        'phase{phase="starting",worker="a"} 0.0\n'
        'phase{phase="serving",worker="a"} 0.0\n'
        'phase{phase="stopping",worker="a"} 1.0\n'
        'phase{phase="starting",worker="b"} 0.0\n'
        'phase{phase="serving",worker="b"} 0.0\n'
        'phase{phase="stopping",worker="b"} 1.0\n')


def test_threads_count_exactly_and_scrapes_never_go_back(impl: Impl, tmp_path: Path) -> None:
    out = run(impl, """
        import threading
        from fastmetrics import Counter, implementation
        from fastmetrics import _core
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        c = Counter("hits", "Hits.", ["k"])
        N, T = (20000, 8) if implementation == "cython" else (3000, 4)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        done = threading.Event()
        seen = []

        def reader():
            while not done.is_set():
                total = sum(s.value for m in registry.collect() for s in m.samples)
                seen.append(total)

        def writer(i):
            child = c.labels(str(i % 2))
            for _ in range(N):
                child.inc()
                c.labels("shared").inc(0.5)

        r = threading.Thread(target=reader)
        r.start()
        ts = [threading.Thread(target=writer, args=(i,)) for i in range(T)]
        for t in ts: t.start()
        for t in ts: t.join()
        done.set(); r.join()
        final = {tuple(s.labels.items()): s.value for m in registry.collect() for s in m.samples}
        assert final == {(("k", "0"),): N * T / 2, (("k", "1"),): N * T / 2, (("k", "shared"),): N * T / 2}, final
        assert all(a <= b for a, b in zip(seen, seen[1:])), "a scrape went back"
        assert c.labels("shared")._value.get() == N * T / 2
        print(len(seen), _core.core.pf_files())
        """, tmp_path)
    scrapes, files = map(int, out.split())
    assert scrapes >= 1
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == files
    assert all(n.startswith("counter_") and n.endswith(".db") for n in names), names


def test_files_are_per_thread_pooled_and_never_reuse_a_dead_process_file(impl: Impl, tmp_path: Path) -> None:
    """A thread writes only its own file; an exited thread's file (counts
    kept) is adopted by the next thread; a file left by a dead process with
    this pid is summed, never overwritten."""
    out = run(impl, """
        import os, threading
        from prometheus_client.mmap_dict import MmapedDict, mmap_key
        from fastmetrics import _core

        # a dead process with our pid left a prometheus_client file: kept and summed
        d = os.environ["PROMETHEUS_MULTIPROC_DIR"]
        old = MmapedDict(os.path.join(d, f"counter_{os.getpid()}_0.db"))
        old.write_value(mmap_key("jobs", "jobs_total", [], [], "Jobs."), 40.0, 0.0)
        old.close()

        from fastmetrics import Counter
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector
        c = Counter("jobs", "Jobs.")
        c.inc()
        for _ in range(50):   # one at a time: each adopts the pooled file of the last
            t = threading.Thread(target=c.inc, args=(2,))
            t.start(); t.join()
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        print([s.value for m in registry.collect() for s in m.samples], c._value.get(), _core.core.pf_files())
        """, tmp_path)
    total, value, files = out.split()
    assert (total, value) == ("[141.0]", "101.0")
    # the main thread's file + pooled thread files: an OS thread's exit hook
    # may run just after join() returns, so the next thread may not find it
    # pooled yet, but 50 threads never make 50 files
    assert 2 <= int(files) <= 5
    assert len(list(tmp_path.glob("counter_*.db"))) == int(files) + 1
    assert not list(tmp_path.glob(".*"))   # no temporary file left


def test_a_full_file_continues_in_a_new_one(impl: Impl, tmp_path: Path) -> None:
    """Entries are appended to a fixed-size mapping; when it is full the
    thread starts a new file (a key larger than a file gets a larger one)."""
    out = run(impl, """
        from fastmetrics import Counter, _core
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector
        big = Counter("big", "h" * 400_000, ["n"])
        for i in range(5):
            big.labels(str(i)).inc(i)
        huge = Counter("huge", "x" * 3_000_000)
        huge.inc(3)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        print(sorted((s.name, s.labels.get("n"), s.value) for m in registry.collect() for s in m.samples),
              _core.core.pf_files())
        """, tmp_path)
    values, files = out.rsplit(" ", 1)
    assert values == str(sorted([("big_total", str(i), float(i)) for i in range(5)] + [("huge_total", None, 3.0)]))
    assert int(files) == 4   # 2 entries of 400 KB per 1 MiB file, then a 4 MiB one for the 3 MB key


def test_reset_zeroes_this_process_only_and_keeps_two_entries(impl: Impl, tmp_path: Path) -> None:
    out = run(impl, """
        import os
        from fastmetrics import Counter
        from prometheus_client.mmap_dict import MmapedDict
        c = Counter("r", "R.")
        c.inc(5)
        pid = os.fork()
        if pid == 0:
            c.inc(7)
            os._exit(0)
        os.waitpid(pid, 0)
        for _ in range(100):
            c.reset()
            c.inc()
        d = os.environ["PROMETHEUS_MULTIPROC_DIR"]
        for name in sorted(os.listdir(d)):
            entries = list(MmapedDict.read_all_values_from_file(os.path.join(d, name)))
            print(name.split("_")[1] == str(os.getpid()), [(k, v) for k, v, _, _ in entries])
        print(c._value.get())
        """, tmp_path)
    key = '["r", "r_total", {}, "R."]'
    lines = sorted(out.splitlines())
    # 100 resets: back on the first slot (the first entry); the spare holds 0
    assert lines == sorted([f"True {[(key, 1.0), (key, 0.0)]}", f"False {[(key, 7.0)]}", "1.0"])


def test_a_dead_counters_entries_stay_and_its_slots_are_never_reused(impl: Impl, tmp_path: Path) -> None:
    # As upstream: a collected metric's file entries outlive it.  Its slots
    # (and a copy's shared one, and a reset's spare) are never recycled: a
    # new counter on a reused slot would add into the dead one's entries.
    out = run(impl, """
        import copy, gc, os
        from fastmetrics import Counter
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector
        a = Counter("gone_a", "A.", registry=None)
        a.inc(5)
        a.reset()
        a.inc(2)
        b = Counter("gone_b", "B.", registry=None)
        b.inc(3)
        b2 = copy.copy(b)
        b2.inc(4)
        del a, b, b2
        gc.collect()
        fresh = [Counter(f"fresh{i}", "F.", registry=None) for i in range(8)]
        for i, c in enumerate(fresh):
            c.inc(100 + i)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        print(generate_latest(registry).decode())
        """, tmp_path)
    values = {(f.name, s.name): s.value for f in text_string_to_metric_families(out) for s in f.samples}
    assert values == {("gone_a", "gone_a_total"): 2.0, ("gone_b", "gone_b_total"): 7.0,
                      **{(f"fresh{i}", f"fresh{i}_total"): 100.0 + i for i in range(8)}}, values


@pytest.mark.parametrize(("env", "error"), [
    ({"FASTMETRICS_MULTIPROC_DIR": "{dir}"}, "RuntimeError: both PROMETHEUS_MULTIPROC_DIR and "
                                             "FASTMETRICS_MULTIPROC_DIR are set"),
    ({"PROMETHEUS_MULTIPROC_DIR": ""}, "ValueError: PROMETHEUS_MULTIPROC_DIR is set but empty"),
    ({"PROMETHEUS_MULTIPROC_DIR": "{dir}/missing"}, "ValueError: PROMETHEUS_MULTIPROC_DIR="),
    ({"PROMETHEUS_MULTIPROC_DIR": "{dir}/file"}, "is not a directory"),
], ids=["both", "empty", "missing", "a-file"])
def test_an_unusable_setting_fails_at_import_naming_the_variable(impl: Impl, tmp_path: Path, env: Dict[str, str],
                                                                 error: str) -> None:
    (tmp_path / "file").write_text("")
    child_env = package_env(impl.env(PROMETHEUS_MULTIPROC_DIR=str(tmp_path)))
    child_env.update({k: v.format(dir=tmp_path) for k, v in env.items()})
    proc = subprocess.run([sys.executable, "-c", "import fastmetrics"], env=child_env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert error in proc.stderr, proc.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]   # nothing written


def test_enabling_fastmetrics_own_mode_too_is_refused(impl: Impl, tmp_path: Path) -> None:
    out = run(impl, """
        import os
        import fastmetrics.multiprocess
        try:
            fastmetrics.multiprocess.enable(os.environ["OWN_DIR"])
        except RuntimeError as e:
            print(e)
        """, tmp_path, OWN_DIR=str(tmp_path / "own"))
    assert out.startswith("PROMETHEUS_MULTIPROC_DIR is set")
    assert not (tmp_path / "own").exists()


def test_opencti_handler_counts_and_states_reach_the_files(impl: Impl, tmp_path: Path) -> None:
    """The handler's dispatcher stores through the core directly (no Python
    ``state()`` call): its counters and its enum still reach the files."""
    out = run(impl, """
        import logging, os
        from fastmetrics import OpenCTIMetricHandler
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector
        handler = OpenCTIMetricHandler(logging.getLogger("t"), True, port=int(os.environ["PORT"]), addr="127.0.0.1")
        handler.inc("bundle_send")
        handler.inc("bundle_send", 2)
        handler.state("running")
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        print(generate_latest(registry).decode())
        """, tmp_path, PORT=str(free_port()))
    got = samples(out)
    assert got[("bundles_sent_total", ())] == 3.0
    assert got[("state", (("state", "running"),))] == 1.0
    assert got[("state", (("state", "idle"),))] == 0.0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tmpfs mount: Linux")
def test_a_full_file_system_is_an_error_at_creation_not_sigbus(impl: Impl, small_tmpfs: Path) -> None:
    """Pages are reserved before an entry is written: on a full file system a
    new child fails with ENOSPC naming the directory (and is not created);
    what was counted stays in the scrape, and existing values keep counting."""
    out = run(impl, """
        import json
        from fastmetrics import Counter
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector
        kept = Counter("kept", "Kept.")
        kept.inc(3)
        wide = Counter("wide", "Wide.", ["k"])
        made, error = 0, None
        try:
            for i in range(100_000):
                wide.labels(str(i) + "v" * 2000).inc()
                made += 1
        except OSError as e:
            error = {"errno": e.errno, "text": str(e)}
        kept.inc(4)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        samples = [(s.name, s.value) for m in registry.collect() for s in m.samples]
        print(json.dumps({"made": made, "error": error, "children": len(wide._metrics),
                          "kept": [v for n, v in samples if n == "kept_total"],
                          "wide": sum(v for n, v in samples if n == "wide_total")}))
        """, small_tmpfs)
    report = json.loads(out)
    assert report["error"] is not None, report
    assert report["error"]["errno"] == 28, report   # ENOSPC
    assert str(small_tmpfs) in report["error"]["text"]
    assert report["made"] > 10
    assert report["children"] == report["made"]     # the failed child was not created
    assert report["kept"] == [7.0]
    assert report["wide"] == report["made"]


@pytest.mark.skipif(not hasattr(signal, "setitimer"), reason="needs setitimer")
def test_increment_from_a_signal_handler_that_interrupts_inc(impl: Impl, tmp_path: Path) -> None:
    """A signal handler incrementing the counter that the interrupted ``inc()``
    is writing loses nothing (prometheus_client's multiprocess value
    deadlocks here on its lock); the files hold every count, including the
    handler's first touches of a new series."""
    out = run(impl, """
        import signal, time
        from fastmetrics import Counter
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector
        c = Counter("sig", "Signals.", ["k"])
        main, extra = c.labels("main"), c.labels("handler")
        handled = [0]

        def handler(signum, frame):
            main.inc()
            extra.inc(2)
            handled[0] += 1

        signal.signal(signal.SIGALRM, handler)
        loops, deadline = 0, time.monotonic() + 10
        signal.setitimer(signal.ITIMER_REAL, 0.0002, 0.0002)
        while (handled[0] < 200 or loops < 100_000) and time.monotonic() < deadline:
            main.inc()
            loops += 1
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        got = {s.labels["k"]: s.value for m in registry.collect() for s in m.samples}
        assert handled[0] > 0
        assert got == {"main": loops + handled[0], "handler": 2 * handled[0]}, (got, loops, handled)
        print("ok")
        """, tmp_path)
    assert out.strip() == "ok"
