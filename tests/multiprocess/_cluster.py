"""Real processes for multiprocess tests: ``_mp_worker.py`` subprocesses
sharing one directory (the ``mp`` fixture of ``conftest.py`` is a
:class:`Cluster`), each running the test's implementation (``impl.env()``).
Every wait is bounded."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest
from _support import Impl

from fastmetrics import multiprocess

WORKER = Path(__file__).with_name("_mp_worker.py")
TIMEOUT = 120.0


class Worker:
    """One ``_mp_worker.py`` subprocess: JSON lines out, JSON commands in."""

    def __init__(self, impl: Impl, path: Path, scenario: str, args: dict,
                 env_dir: bool, log: Path, extra_env: Optional[Dict[str, str]] = None) -> None:
        env = impl.env(**({multiprocess.ENV_DIR: str(path)} if env_dir else {}), **(extra_env or {}))
        self.log = log
        with open(log, "wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, str(WORKER), scenario, impl.implementation, json.dumps(args)],
                env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, bufsize=0)
        self.pid = self.proc.pid
        self._buf = b""

    def _fail(self, why: str) -> None:
        pytest.fail(f"worker {self.pid}: {why}\n--- stderr ---\n{self.log.read_text(errors='replace')}")

    def read(self, timeout: float = TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._fail("no answer in time")
            if select.select([fd], [], [], remaining)[0]:
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.proc.wait(timeout=TIMEOUT)
                    self._fail(f"exited with {self.proc.returncode} before answering")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)  # type: ignore[no-any-return]

    def expect(self, event: str) -> dict:
        msg = self.read()
        if msg.get("event") != event:
            self._fail(f"expected {event!r}, got {msg!r}")
        return msg

    def send(self, **cmd) -> None:
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()

    def call(self, op: str, **cmd):
        """Run one command in the worker; its result."""
        self.send(op=op, **cmd)
        reply = self.read()
        if not reply.get("ok"):
            self._fail(f"{op} {cmd} failed: {reply}")
        return reply["result"]

    def wait(self, expect_rc: Optional[int] = 0) -> int:
        try:
            rc = self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT)
            self._fail("did not exit in time")
        if expect_rc is not None and rc != expect_rc:
            self._fail(f"exit status {rc}, expected {expect_rc}")
        return rc

    def exit(self) -> None:
        self.call("exit")
        self.wait()

    def kill(self) -> None:
        """SIGKILL, and reap (the kernel has then dropped the file's flock)."""
        os.kill(self.pid, signal.SIGKILL)
        assert self.wait(expect_rc=None) == -signal.SIGKILL

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=TIMEOUT)
        for stream in (self.proc.stdin, self.proc.stdout):
            stream.close()


class Cluster:
    """The processes of one test, sharing one multiprocess directory."""

    def __init__(self, impl: Impl, tmp_path: Path) -> None:
        self.impl = impl
        self.tmp = tmp_path
        self.path = tmp_path / "mp"
        self.path.mkdir()
        self.workers: List[Worker] = []

    def start(self, scenario: str, env_dir: bool = True, extra_env: Optional[Dict[str, str]] = None,
              **args) -> Worker:
        log = self.tmp / f"worker-{len(self.workers)}-{scenario}.stderr"
        worker = Worker(self.impl, self.path, scenario, args, env_dir, log, extra_env)
        self.workers.append(worker)
        return worker

    def serve(self) -> Worker:
        """A worker driven command by command (see ``_handle`` in the worker)."""
        worker = self.start("serve")
        worker.expect("ready")
        return worker

    def run(self, scenario: str, env_dir: bool = True, extra_env: Optional[Dict[str, str]] = None,
            **args) -> dict:
        """Run a one-shot scenario to a normal exit; its "done" message."""
        worker = self.start(scenario, env_dir, extra_env, **args)
        msg = worker.expect("done")
        worker.wait()
        return msg

    def close(self) -> None:
        for worker in self.workers:
            worker.close()
