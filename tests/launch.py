"""How the tests start the entry points: as ``torchrun --standalone`` and ``python tool.py``
do, minus the interpreter start.

A fresh interpreter spends 5-7 CPU-seconds importing torch and megatron-core, and a 2-rank
torchrun run pays it three times (the agent and each worker); the suite starts about a
hundred such runs. So the ranks are forked from one *fork server* (multiprocessing's
``forkserver``) that imported torch, megatron-core and this package once for the session
and has never run a torch op, so its children start clean (no thread pools, no process
groups). Each child then is what torchrun's worker is:

* its environment is the one torchrun gives a worker: ``RANK``, ``LOCAL_RANK``,
  ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE``, ``GROUP_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``
  (a free port), and the caller's variables; ``TORCHELASTIC_RUN_ID`` is left out, since
  there is no torchrun agent whose death the worker should watch for;
* it leads a session of its own, as torchrun's workers do, with its working folder at the
  repository and ``sys.argv``/``sys.path[0]`` as ``python script.py`` sets them;
* all ranks' stdout go to one stream and their stderr to another, unprefixed (torchrun's
  default), and the run's exit status is torchrun's: 0 when every rank exits 0, else 1;
  when one rank fails, the others get SIGTERM, then SIGKILL after 30 s (torchrun's
  shutdown);
* the script runs as ``__main__`` through ``runpy``, and the interpreter's exit steps
  (``atexit`` handlers, flushing) run before the process exits with the script's status.

``nproc=None`` runs a script as a plain ``python script.py`` would (no rank variables; the
exit status is the script's own). What only a real launcher shows stays with real
launchers: the torchrun agent's signal forwarding and death (tests/runtime/test_lifecycle.py,
tests/checkpoint/test_checkpoint.py's SIGTERM and SIGKILL tests), ``srun`` (tests/slurm), the
interpreter's own start-up time (tests/tools/test_startup.py), and the demo, whose stages
start their own processes (tests/test_demo.py). ``run_torchrun(..., real_torchrun=True)``
runs torchrun itself where its own output is what a test reads.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import multiprocessing
import multiprocessing.forkserver
import os
import runpy
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Optional

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "examples" / "configs" / "tiny.yaml"
# What the fork server imports once: everything an entry point imports at its top.
PRELOAD = ["tests.launch_preload"]
SHUTDOWN_GRACE_S = 30  # torchrun's: SIGTERM to the surviving ranks, SIGKILL after this

_context = multiprocessing.get_context("forkserver")
_started = False


def child_env(extra: Optional[dict] = None) -> dict:
    """The environment of a launched script: this one, with the repository on PYTHONPATH,
    one OpenMP thread per process (as the tests have always run), unbuffered output, and
    no rank variables of a surrounding launcher."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return {**env, **(extra or {})}


def _ensure_fork_server() -> None:
    """Start the fork server with the children's environment: OpenMP reads
    ``OMP_NUM_THREADS`` when torch loads it, i.e. in the server, at preload."""
    global _started
    if _started:
        return
    multiprocessing.forkserver.set_forkserver_preload(PRELOAD)
    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(child_env())
        # The server keeps the stdout/stderr it starts with; give it /dev/null rather than
        # the output capture of whichever test happens to start it.
        with open(os.devnull, "w") as null, _redirected_fds(null.fileno()):
            multiprocessing.forkserver.ensure_running()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    _started = True


@contextlib.contextmanager
def _redirected_fds(target: int):
    saved = [os.dup(1), os.dup(2)]
    try:
        os.dup2(target, 1)
        os.dup2(target, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _exit_status(error: SystemExit) -> int:
    if error.code is None:
        return 0
    if isinstance(error.code, int):
        return error.code
    print(error.code, file=sys.stderr)  # sys.exit("message"), as the interpreter does
    return 1


def _run_script(script: str, argv: list[str], env: dict, out_path: str, err_path: str) -> None:
    """A launched process: the script as ``__main__`` with the given environment."""
    # A fresh interpreter's multiprocessing, not a fork-server child's: the default start
    # method (fork on Linux; it would be inherited as "forkserver") and no parent process.
    multiprocessing.set_start_method(None, force=True)
    multiprocessing.process._parent_process = None
    os.setsid()
    os.chdir(REPO)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out_path), (2, err_path)):
        target = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.dup2(target, fd)
        os.close(target)
    sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), write_through=True)
    sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", closefd=False), write_through=True)
    sys.argv = [script, *argv]
    sys.path.insert(0, os.path.dirname(script))
    status = 1
    try:
        runpy.run_path(script, run_name="__main__")
        status = 0
    except SystemExit as error:
        status = _exit_status(error)
    except BaseException:  # an uncaught exception: traceback and status 1, as the interpreter
        traceback.print_exc()
    finally:
        try:
            atexit._run_exitfuncs()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)


def record_descendants(pids: list[int], seen: dict[int, psutil.Process]) -> None:
    """Add every live descendant of ``pids`` to ``seen`` (descendants outlive their parent as
    orphans, so they are recorded while it is alive)."""
    for pid in pids:
        try:
            for child in psutil.Process(pid).children(recursive=True):
                seen.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            pass


def kill_all(processes) -> None:
    """SIGKILL to each of ``processes`` still running."""
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            if process.is_running():
                process.kill()


class Launch:
    """A running launch: its rank processes and everything they started."""

    def __init__(self, script: str, argv: list[str], nproc: Optional[int], env: Optional[dict],
                 merge_output: bool = False) -> None:
        _ensure_fork_server()
        self.command = ["launch", *([f"--nproc-per-node={nproc}"] if nproc else []), script, *argv]
        self.distributed = nproc is not None
        # merge_output: stdout and stderr in one stream, in the order written (as 2>&1).
        self._files = [tempfile.NamedTemporaryFile("w+", suffix=suffix)
                       for suffix in ((".out",) if merge_output else (".out", ".err"))]
        base = child_env(env)
        ranks = []
        if nproc is None:
            ranks.append(base)
        else:
            port = str(_free_port())
            for rank in range(nproc):
                ranks.append({**base, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(nproc),
                              "LOCAL_WORLD_SIZE": str(nproc), "GROUP_RANK": "0", "ROLE_RANK": str(rank),
                              "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
        self.processes = []
        for rank_env in ranks:
            process = _context.Process(target=_run_script, daemon=False,
                                       args=(script, argv, rank_env, self._files[0].name, self._files[-1].name))
            process.start()
            self.processes.append(process)
        self.seen: dict[int, psutil.Process] = {}

    def _snapshot(self) -> None:
        record_descendants([p.pid for p in self.processes], self.seen)

    def wait(self, timeout: float) -> Optional[int]:
        """The launch's exit status (torchrun's rule when distributed), or None on timeout."""
        deadline = time.monotonic() + timeout
        terminated_at = None
        while time.monotonic() < deadline:
            self._snapshot()
            codes = [p.exitcode for p in self.processes]
            if all(code is not None for code in codes):
                if not self.distributed:
                    return codes[0]
                return 0 if all(code == 0 for code in codes) else 1
            failed = any(code not in (None, 0) for code in codes)
            if self.distributed and failed:
                if terminated_at is None:  # torchrun stops the surviving workers
                    terminated_at = time.monotonic()
                    self._signal_alive(signal.SIGTERM)
                elif time.monotonic() - terminated_at > SHUTDOWN_GRACE_S:
                    self._signal_alive(signal.SIGKILL)
            time.sleep(0.05)
        return None

    def _signal_alive(self, sig: int) -> None:
        for process in self.processes:
            if process.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, sig)

    def kill(self) -> None:
        """SIGKILL to every process of the launch still alive (ranks and their descendants,
        which may have left the ranks' sessions)."""
        self._snapshot()
        for process in self.processes:
            if process.exitcode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
        kill_all(self.seen.values())
        for process in self.processes:
            process.join()

    def output(self) -> tuple[str, str]:
        """(stdout, stderr); with merged output, (both, "")."""
        texts = []
        for f in self._files:
            f.seek(0)
            texts.append(f.read())
            f.close()
        return texts[0], texts[1] if len(texts) > 1 else ""


def launch(script, argv, *, nproc: Optional[int] = None, timeout: float = 300, env: Optional[dict] = None,
           merge_output: bool = False):
    """Run ``script`` (relative to the repository, or absolute) to its end: (status or None
    on timeout, stdout, stderr, command)."""
    path = str(REPO / script)
    run = Launch(path, [str(a) for a in argv], nproc, env, merge_output)
    try:
        status = run.wait(timeout)
    finally:
        run.kill()
    stdout, stderr = run.output()
    return status, stdout, stderr, run.command


# -- what the tests call ---------------------------------------------------------------------

def run_torchrun(nproc: int, script: str, args: list, *, timeout: int = 300, check: bool = True,
                 env: dict | None = None, real_torchrun: bool = False) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node N script args``; fails the test with the
    output when the run fails and ``check`` is set.

    The ranks start from the session's fork server (see the module docstring: torchrun's worker
    environment, its output streams and exit status, without an interpreter start per
    rank); ``real_torchrun=True`` runs torchrun itself. Either way every process of the run
    is tracked while it runs and killed when it returns: a test that kills a rank on purpose
    must not leave its peers (or their helper processes) behind."""
    if not real_torchrun:
        status, stdout, stderr, cmd = launch(script, args, nproc=nproc, timeout=timeout, env=env)
        return _finished(cmd, status, stdout, stderr, timeout, check)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           str(REPO / script), *map(str, args)]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        child = subprocess.Popen(cmd, cwd=REPO, env=child_env(env), stdout=out, stderr=err,
                                 text=True, start_new_session=True)
        tree = ProcessTree(child)
        returncode = tree.wait(timeout)
        tree.kill()
        out.seek(0)
        err.seek(0)
        return _finished(cmd, returncode, out.read(), err.read(), timeout, check)


def _finished(cmd, returncode, stdout, stderr, timeout, check) -> subprocess.CompletedProcess:
    proc = subprocess.CompletedProcess(cmd, returncode, stdout, stderr)
    if returncode is None:
        pytest.fail(f"{' '.join(map(str, cmd))} timed out after {timeout}s\n--- stdout\n{stdout[-6000:]}\n"
                    f"--- stderr\n{stderr[-6000:]}")
    if check and returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {returncode}\n--- stdout\n{stdout[-6000:]}\n"
                    f"--- stderr\n{stderr[-6000:]}")
    return proc


class ProcessTree:
    """A launched process and every descendant seen while it ran (descendants outlive their
    parent as orphans, so they are recorded while the parent is alive)."""

    def __init__(self, popen: subprocess.Popen) -> None:
        self.popen = popen
        self.seen: dict[int, psutil.Process] = {}

    def snapshot(self) -> None:
        record_descendants([self.popen.pid], self.seen)

    def wait(self, timeout: float) -> int | None:
        """The launcher's exit status, or None on timeout."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            self.snapshot()
            if self.popen.poll() is not None:
                return self.popen.returncode
            time.sleep(0.2)
        return None

    def kill(self) -> None:
        self.snapshot()
        alive = [psutil.Process(self.popen.pid)] if self.popen.poll() is None else []
        kill_all([*alive, *self.seen.values()])
        self.popen.wait()


def run_python(script: str, args: list, *, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python script args`` (from the session's fork server); raises
    ``subprocess.TimeoutExpired`` past ``timeout``, as ``subprocess.run`` does."""
    status, stdout, stderr, cmd = launch(script, args, timeout=timeout, env=env)
    if status is None:
        raise subprocess.TimeoutExpired(cmd, timeout, stdout, stderr)
    return subprocess.CompletedProcess(cmd, status, stdout, stderr)


def read_metrics(path: Path) -> tuple[list[dict], list[dict]]:
    """(training records, validation records) from a --log-file."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [r for r in rows if "split" not in r], [r for r in rows if "split" in r]


