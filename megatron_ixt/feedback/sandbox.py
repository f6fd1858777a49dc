"""Running code under test in a child process with a time limit, a memory limit and a
scratch directory.

:func:`run_tests` writes the solution and the tests into a fresh temporary directory, runs
``_sandbox_runner.py`` there with a minimal environment, kills the whole process group
when the wall-clock limit passes, and returns what happened as a :class:`TestRun`.

Why a subprocess per document: the code under test may loop forever, eat memory or call
``sys.exit``; in a child those end the child, not the annotation run. Limits are set by the
child on itself (``resource.setrlimit``) rather than through ``preexec_fn``, which is not
safe in a process with threads, and the annotation pipeline runs critics in threads.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RUNNER = Path(__file__).with_name("_sandbox_runner.py")


@dataclass(frozen=True)
class Limits:
    """Resource limits for one test run."""

    time_s: float = 5.0
    """Wall-clock seconds before the process group is killed."""
    memory_mb: int = 1024
    """Address-space limit of the child (RLIMIT_AS)."""
    file_mb: int = 16
    """Largest file the child may write (RLIMIT_FSIZE), output files included."""
    output_chars: int = 4000
    """How much of the child's stdout/stderr is kept (the tail)."""


@dataclass
class TestRun:
    """The outcome of running a solution's tests."""

    status: str
    """``passed``, ``failed`` (a check failed or the code raised), ``timeout``, ``crashed``
    (the child died without a report, e.g. killed for memory)."""
    checks: int = 0
    failed: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    phase: str | None = None
    """``load`` (running the solution's top level), ``tests`` or ``done``."""
    returncode: int | None = None
    stderr_tail: str = ""
    wall_s: float = 0.0


def _tail(path: Path, chars: int) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - chars * 4))
            return handle.read().decode("utf-8", errors="replace")[-chars:]
    except OSError:
        return ""


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # already gone


def run_tests(solution: str, tests: str, entry_point: str, limits: Limits = Limits()) -> TestRun:
    """Run ``check(<entry_point>)`` from ``tests`` against ``solution`` in a child process."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ixt-sandbox-") as scratch:
        root = Path(scratch)
        (root / "solution.py").write_text(solution, encoding="utf-8")
        (root / "tests.py").write_text(tests, encoding="utf-8")
        report_path = root / "report.json"
        child_limits = {"memory_mb": limits.memory_mb, "file_mb": limits.file_mb,
                        # CPU limit a little above the wall limit: if this process dies
                        # before it can kill the child, an endless loop still ends.
                        "cpu_s": int(limits.time_s) + 2}
        # A fixed hash seed makes set/dict-ordering in failure messages reproducible.
        env = {"PATH": "/usr/bin:/bin", "HOME": scratch, "TMPDIR": scratch,
               "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
        command = [sys.executable, "-I", str(RUNNER), json.dumps(child_limits),
                   str(root / "solution.py"), str(root / "tests.py"), entry_point, str(report_path)]
        with open(root / "stdout.txt", "wb") as out, open(root / "stderr.txt", "wb") as err:
            process = subprocess.Popen(command, cwd=scratch, env=env, stdin=subprocess.DEVNULL,
                                       stdout=out, stderr=err, start_new_session=True)
            # A timer kills the process group at the deadline while this thread blocks in
            # wait(): Popen.wait(timeout=...) would poll with sleeps of up to 50 ms, which
            # is as long as a whole HumanEval test run.
            expired = threading.Event()

            def kill_group() -> None:
                expired.set()
                _kill_group(process.pid)

            timer = threading.Timer(limits.time_s, kill_group)
            timer.start()
            try:
                process.wait()
            finally:
                timer.cancel()
                _kill_group(process.pid)  # children the code under test may have left behind
                process.wait()
            timed_out = expired.is_set()
        run = TestRun(status="crashed", returncode=process.returncode,
                      stderr_tail=_tail(root / "stderr.txt", limits.output_chars),
                      wall_s=time.monotonic() - started)
        if timed_out:
            run.status = "timeout"
            return run
        try:
            report = json.loads(report_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return run  # no (complete) report: the child died; stderr_tail says why
    run.checks, run.failed = report["checks"], report["failed"]
    run.failures, run.error, run.phase = report["failures"], report.get("error"), report["phase"]
    run.status = "passed" if run.error is None and run.failed == 0 and run.checks > 0 else "failed"
    if run.error is None and run.checks == 0:
        run.error = "the tests ran no checks"
    return run
