"""Subprocess side of the tests in ``tests/multiprocess/`` (``_cluster.Worker``); pytest never imports it.

    python _mp_worker.py SCENARIO IMPL JSON_ARGS

``IMPL`` is the ``fastmetrics.implementation`` the test asked for ("cython" or
"python", selected by the environment the test gives it: ``impl.env()`` of
``tests/_support.py``); the worker refuses to run if fastmetrics picked the
other one.  Multiprocess mode
comes from ``FASTMETRICS_MULTIPROC_DIR`` at import, as in production, except in
the scenarios that test :func:`fastmetrics.multiprocess.enable` itself.

Results go to stdout as JSON lines (``{"event": ...}``); the interactive
scenarios read JSON commands from stdin and answer each with one line.  Forked
children never print: they report to their driver through pipes.  Every wait
is bounded, and a worker whose stdin closes (the test died) exits.
"""

from __future__ import annotations

import glob
import json
import mmap
import multiprocessing
import os
import select
import sys
import threading
import time
import traceback

STATES = ["idle", "busy", "done"]
BYTES_HELP = "Bytes moved.\nSecond line, with a \\ backslash."
WAIT = 120.0   # seconds: upper bound of every wait on the test or a sibling

_metrics = None


class Metrics:
    """The metrics every scenario declares (same names, help, labels, states)."""

    def __init__(self) -> None:
        import fastmetrics

        self.ops = fastmetrics.Counter("mp_ops", "Operations done by a worker.")
        self.work = fastmetrics.Counter("mp_work", "Work items per worker.", labelnames=["worker"])
        self.bytes = fastmetrics.Counter("mp_bytes", BYTES_HELP, labelnames=["direction", "code"], unit="bytes")
        self.phase = fastmetrics.Enum("mp_phase", "Phase of the worker.", states=STATES)
        self.role = fastmetrics.Enum("mp_role", "State per role.", labelnames=["role"], states=STATES)


def metrics() -> Metrics:
    global _metrics
    if _metrics is None:
        _metrics = Metrics()
    return _metrics


def emit(**obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


_stdin = bytearray()


def read_command() -> dict:
    """The next JSON line on stdin; exit quietly when the test has gone."""
    deadline = time.monotonic() + WAIT
    while b"\n" not in _stdin:
        ready, _, _ = select.select([0], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(0, 65536) if ready else b""
        if not chunk:
            os._exit(3)
        _stdin.extend(chunk)
    line, _, rest = bytes(_stdin).partition(b"\n")
    _stdin[:] = rest
    return json.loads(line)


def own_files(pid: int) -> list:
    return sorted(glob.glob(os.path.join(os.environ["FASTMETRICS_MULTIPROC_DIR"], f"{pid}-*.fm")))


def exposition() -> dict:
    from prometheus_client import REGISTRY, generate_latest
    from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

    return {"text": generate_latest(REGISTRY).decode(), "openmetrics": generate_openmetrics(REGISTRY).decode()}


# -- one-shot workers ----------------------------------------------------------

def scenario_count(args: dict) -> None:
    """Increment ``mp_ops`` and ``mp_work{worker=label}`` n times, move bytes,
    set the enums, print this process's own exposition, exit normally."""
    m = metrics()
    ops, work = m.ops, m.work.labels(args["label"])
    for _ in range(args["n"]):
        ops.inc()
        work.inc()
    m.bytes.labels("in", "200").inc(3)
    m.bytes.labels(direction="out", code="500").inc(0.5)
    m.phase.state("busy")
    m.role.labels("reader").state("done")
    emit(event="done", pid=os.getpid(), files=own_files(os.getpid()), **exposition())


def scenario_spin(args: dict) -> None:
    """``inc(); progress = i + 1`` until killed (or ``limit``, or orphaned)."""
    m = metrics()
    ops, work = m.ops, m.work.labels(args["label"])
    with open(args["progress"], "r+b") as f:
        mm = mmap.mmap(f.fileno(), 8)
    progress = memoryview(mm).cast("q")
    parent = os.getppid()
    for i in range(args["limit"]):
        ops.inc()
        work.inc()
        progress[0] = i + 1
        if i & 0xFFFF == 0 and os.getppid() != parent:
            break


# -- a worker driven command by command ------------------------------------------

def _series(m: Metrics, cmd: dict):
    metric = getattr(m, cmd["metric"])
    labels = cmd.get("labels")
    return metric.labels(*labels) if labels else metric


def _inc(series, amount, times, threads) -> None:
    def work():
        for _ in range(times):
            series.inc(amount)

    if threads <= 1:
        work()
        return
    pool = [threading.Thread(target=work) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


def _handle(m: Metrics, cmd: dict):
    op = cmd["op"]
    if op == "inc":
        _inc(_series(m, cmd), cmd.get("amount", 1), cmd.get("times", 1), cmd.get("threads", 1))
    elif op == "state":
        _series(m, cmd).state(cmd["state"])
    elif op == "reset":
        _series(m, cmd).reset()
    elif op == "remove":
        getattr(m, cmd["metric"]).remove(*cmd["labels"])
    elif op == "clear":
        getattr(m, cmd["metric"]).clear()
    elif op == "value":   # this process's own view
        series = _series(m, cmd)
        value = series._value
        return STATES[value] if isinstance(value, int) else value.get()
    elif op == "exit":
        return None
    else:
        raise ValueError(f"unknown op {op!r}")
    return None


def scenario_serve(args: dict) -> None:
    """Run commands from stdin until ``exit`` (or SIGKILL)."""
    m = metrics()
    emit(event="ready", pid=os.getpid(), files=own_files(os.getpid()))
    while True:
        cmd = read_command()
        try:
            emit(ok=True, result=_handle(m, cmd))
        except Exception as e:   # reported to the test, which decides
            emit(ok=False, error=repr(e))
        if cmd["op"] == "exit":
            return


# -- multiprocessing.Pool ------------------------------------------------------

def _pool_task(task: tuple) -> dict:
    _impl, n, k = task
    import fastmetrics
    from fastmetrics import multiprocess

    m = metrics()
    ops, moved = m.ops, m.bytes.labels("in", str(k % 2))
    for _ in range(n):
        ops.inc()
        moved.inc(k + 1)
    return {"impl": fastmetrics.implementation, "pid": os.getpid(), "dir": multiprocess.directory(),
            "files": own_files(os.getpid())}


def scenario_pool(args: dict) -> None:
    """A Pool of ``procs`` processes (start method ``method``) runs ``procs``
    tasks of ``n`` increments; with ``via_enable`` the mode is switched on by
    ``enable(path)`` instead of the environment."""
    from fastmetrics import multiprocess

    if args.get("via_enable"):
        assert multiprocess.directory() is None and not os.environ.get(multiprocess.ENV_DIR)
        path = multiprocess.enable(args["path"])
        assert path == os.path.abspath(args["path"]) == os.environ[multiprocess.ENV_DIR]
        assert multiprocess.enable(args["path"]) == path   # again, same directory: a no-op
    impl = args["impl"]
    ctx = multiprocessing.get_context(args["method"])
    metrics()   # declared in the parent too: fork children inherit them
    pool = ctx.Pool(args["procs"])
    try:
        results = pool.map_async(_pool_task, [(impl, args["n"], k) for k in range(args["procs"])],
                                 chunksize=1).get(timeout=WAIT)
    finally:
        pool.close()
        pool.join()
    emit(event="done", pid=os.getpid(), results=results)


# -- os.fork() drivers ---------------------------------------------------------

def _fork(child) -> int:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            child()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def _reap(pids) -> None:
    deadline = time.monotonic() + WAIT
    for pid in pids:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"child {pid} did not exit")
            time.sleep(0.001)
        if status != 0:
            raise RuntimeError(f"child {pid} failed with status {status}")


def scenario_churn(args: dict) -> None:
    """Fork ``children`` short-lived children, ``batch`` at a time; child i adds
    ``1 + i % 7`` to mp_ops and 1 to mp_bytes{out, i % 3}, sets mp_phase and
    exits with os._exit.  At each checkpoint, wait for the test's "go"."""
    m = metrics()
    m.bytes.labels("out", "0")   # one child created here, the others in the children
    total, batch, checkpoints = args["children"], args["batch"], set(args["checkpoints"])

    def child(i: int) -> None:
        m.ops.inc(1 + i % 7)
        m.bytes.labels("out", str(i % 3)).inc()
        m.phase.state(STATES[i % 3])

    done = 0
    while done < total:
        pids = [_fork(lambda i=i: child(i)) for i in range(done, min(done + batch, total))]
        _reap(pids)
        done += len(pids)
        if done in checkpoints:
            emit(event="checkpoint", done=done)
            assert read_command()["op"] == "go"
    emit(event="done", pid=os.getpid(), done=done)


def scenario_park(args: dict) -> None:
    """Fork ``children`` children that declare the metrics, increment, set
    their enum, report, and stay alive until the test says "release"."""
    release_r, release_w = os.pipe()
    ready_r, ready_w = os.pipe()

    def child(i: int) -> None:
        os.close(release_w)
        m = metrics()
        m.ops.inc(i + 1)
        m.bytes.labels("in", "x").inc(2)
        m.phase.state(STATES[i % 3])
        os.write(ready_w, f"{i} {os.getpid()} {len(own_files(os.getpid()))}\n".encode())
        select.select([release_r], [], [], WAIT)   # EOF when the driver closes release_w

    pids = [_fork(lambda i=i: child(i)) for i in range(args["children"])]
    os.close(ready_w)
    os.close(release_r)
    lines: list = []
    buf, deadline = b"", time.monotonic() + WAIT
    while len(lines) < len(pids) and time.monotonic() < deadline:
        if not select.select([ready_r], [], [], 1.0)[0]:
            continue
        chunk = os.read(ready_r, 65536)
        if not chunk:
            break
        buf += chunk
        *lines_done, buf = buf.split(b"\n")
        lines += lines_done
    children = [tuple(int(x) for x in line.split()) for line in lines]
    emit(event="parked", pid=os.getpid(), children=children)
    assert read_command()["op"] == "release"
    os.close(release_w)
    _reap(pids)
    emit(event="released")


def scenario_prefork(args: dict) -> None:
    """A pre-fork server: the master declares and increments, forks workers
    that increment, increments again, and waits for "exit"."""
    m = metrics()
    master_files = own_files(os.getpid())
    m.ops.inc(args["master_before"])
    m.bytes.labels("in", "200").inc(args["master_before"])
    report_r, report_w = os.pipe()

    def worker() -> None:
        report = {"pid": os.getpid(), "files": own_files(os.getpid()), "start": m.ops._value.get()}
        for _ in range(args["n"]):
            m.ops.inc()
        m.bytes.labels("in", "200").inc(2)
        report["end"] = m.ops._value.get()
        os.write(report_w, (json.dumps(report) + "\n").encode())

    pids = [_fork(worker) for _ in range(args["workers"])]
    os.close(report_w)
    m.ops.inc(args["master_after"])
    _reap(pids)
    with os.fdopen(report_r) as f:
        reports = [json.loads(line) for line in f]
    emit(event="forked", pid=os.getpid(), master_files=master_files, reports=reports,
         master_value=m.ops._value.get())
    assert read_command()["op"] == "exit"


# -- robustness and fuzz tests ------------------------------------------------------

def scenario_surrogates(args: dict) -> None:
    """Strings that are not valid UTF-8 (a lone surrogate, what os.fsdecode
    makes of a non-UTF-8 byte) as a label value, help text or enum state: the
    errors, and the shard store's stats around them (nothing allocated)."""
    import fastmetrics

    m = metrics()
    bad = os.fsdecode(b"\xff")
    m.work.labels("ok").inc()
    before = fastmetrics.shard_stats()
    errors = {
        "label": _error(lambda: m.work.labels(bad)),
        "label_kwarg": _error(lambda: m.bytes.labels(direction="in", code=bad)),
        "enum_label": _error(lambda: m.role.labels(bad)),
        "documentation": _error(lambda: fastmetrics.Counter("mp_bad_doc", "Help " + bad)),
        "state": _error(lambda: fastmetrics.Enum("mp_bad_state", "Help.", states=["ok", bad])),
    }
    after = fastmetrics.shard_stats()
    m.work.labels("ok").inc()
    emit(event="done", pid=os.getpid(), errors=errors, before=before, after=after)


def scenario_declare(args: dict) -> None:
    """Metrics named after ``prefix``: a counter incremented from 3 threads
    (a chunk each), reset and incremented again; ``children`` labelled
    children; two enums.  Prints this process's exposition and exits."""
    import fastmetrics

    p, n = args["prefix"], args["children"]
    ops = fastmetrics.Counter(f"{p}_ops", "Operations.")
    work = fastmetrics.Counter(f"{p}_work", "Work per key.", labelnames=["key"], unit="bytes")
    phase = fastmetrics.Enum(f"{p}_phase", "Phase.", states=STATES)
    role = fastmetrics.Enum(f"{p}_role", "Role.", labelnames=["role"], states=STATES)
    ops.inc(1000)
    ops.reset()
    _inc(ops, 1.5, 100, 3)
    for i in range(n):
        work.labels(str(i)).inc(i + 0.25)
    phase.state("busy")
    for i, name in enumerate(("reader", "writer")):
        role.labels(name).state(STATES[i + 1])
    emit(event="done", pid=os.getpid(), files=own_files(os.getpid()), **exposition())


# -- enable() ------------------------------------------------------------------

def scenario_late_enable(args: dict) -> None:
    """Create a metric, then enable(): RuntimeError, and the mode stays off."""
    import fastmetrics
    from fastmetrics import multiprocess

    assert multiprocess.directory() is None
    c = fastmetrics.Counter("mp_late", "Created before enable().")
    try:
        multiprocess.enable(args["path"])
    except RuntimeError as e:
        error = str(e)
    else:
        error = None
    c.inc(4)
    emit(event="done", error=error, directory=multiprocess.directory(),
         env=os.environ.get(multiprocess.ENV_DIR), value=c._value.get(),
         listing=sorted(os.listdir(args["path"])) if os.path.isdir(args["path"]) else None)


def _error(call) -> object:
    """``type: message`` of what ``call()`` raises, or None."""
    try:
        call()
    except Exception as e:  # noqa: BLE001 - reported to the test
        return f"{type(e).__name__}: {e}"
    return None


def scenario_enable_errors(args: dict) -> None:
    """Every way enable() refuses, then a successful enable and what it
    refuses afterwards; the enum state limit of the mode (of the file format
    this core writes)."""
    import fastmetrics
    from fastmetrics import multiprocess
    from fastmetrics.multiprocess import _writer

    path, other = args["path"], args["other"]
    errors = {
        "no_directory": _error(lambda: multiprocess.enable()),
        "capacity_small": _error(lambda: multiprocess.enable(path, capacity=32 * 1024)),
        "capacity_unaligned": _error(lambda: multiprocess.enable(path, capacity=64 * 1024 + 1)),
    }
    os.environ[multiprocess.ENV_CAPACITY] = "64MiB"
    errors["capacity_env"] = _error(lambda: multiprocess.enable(path))
    del os.environ[multiprocess.ENV_CAPACITY]
    errors["still_off"] = multiprocess.directory()
    errors["enabled"] = multiprocess.enable(path)
    errors["again"] = multiprocess.enable(path)
    errors["other_directory"] = _error(lambda: multiprocess.enable(other))
    limit = _writer._recorder.max_states
    states = [f"s{i}" for i in range(limit + 1)]
    errors["limit"] = limit
    errors["states_over"] = _error(lambda: fastmetrics.Enum("mp_big", "Too many states.", states=states))
    big = fastmetrics.Enum("mp_big_ok", "As many states as fit.", states=states[:limit])
    big.state(states[limit - 1])
    errors["states_at_limit"] = big._value
    emit(event="done", **errors)


def scenario_full(args: dict) -> None:
    """A 64 KiB file: create labelled children and increment each once until
    the file is full; then a new thread's first increment.  Reports what
    succeeded and the errors."""
    import fastmetrics

    counter = fastmetrics.Counter("mp_fill", "Fills the file.", labelnames=["n"])
    done, error = 0, None
    try:
        for i in range(100_000):
            counter.labels(str(i)).inc()
            done += 1
    except MemoryError as e:
        error = str(e)
    thread_error: list = []

    def first_increment_of_a_thread() -> None:
        try:
            counter.labels("0").inc()
        except MemoryError as e:
            thread_error.append(str(e))

    thread = threading.Thread(target=first_increment_of_a_thread)
    thread.start()
    thread.join()
    emit(event="done", done=done, error=error, thread_error=thread_error)


def main() -> None:
    scenario, impl, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    import fastmetrics

    if fastmetrics.implementation != impl:
        sys.exit(f"fastmetrics.implementation is {fastmetrics.implementation!r}, the test wants {impl!r}")
    args["impl"] = impl
    globals()["scenario_" + scenario](args)


if __name__ == "__main__":
    main()
