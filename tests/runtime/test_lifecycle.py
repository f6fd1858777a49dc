"""Workers end with their launcher; one --save folder has one live writer.

The fast tests drive ``megatron_ixt.runtime.lifecycle`` in real processes (a launcher that
is SIGKILLed, lock holders that die); the slow one does what a user does: SIGKILL the
``torchrun`` agent of a TP=2 run that saves every few iterations, and start a second run
on the same folder while the first is alive, then after it is dead.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from tests.launch import REPO, TINY, Launch, ProcessTree, child_env, run_torchrun

PY = sys.executable


def _python(code: str, env=None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([PY, "-c", textwrap.dedent(code)], cwd=REPO, env={**child_env(), **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def _wait_gone(pid: int, timeout: float) -> float | None:
    """Seconds until ``pid`` has exited (zombies count as exited), None on timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return time.monotonic() - start
        except psutil.NoSuchProcess:
            return time.monotonic() - start
        time.sleep(0.05)
    return None


# A "launcher" that starts one "worker" (as torchrun does: its own session, torchrun's
# environment) and prints the worker's pid. The worker watches its launcher, then idles.
LAUNCHER = """
import subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", '''
import os, sys, time
from megatron_ixt.runtime import lifecycle
if {no_pdeathsig}:
    lifecycle._set_parent_death_signal = lambda sig: False  # the watch thread alone
print("watching", lifecycle.watch_launcher(), flush=True)
time.sleep(600)
'''], start_new_session=True)
print(worker.pid, flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("no_pdeathsig", [False, True], ids=["pdeathsig", "watch-thread"])
def test_worker_stops_when_its_launcher_is_killed(no_pdeathsig):
    launcher = _python(LAUNCHER.format(no_pdeathsig=no_pdeathsig),
                       env={"TORCHELASTIC_RUN_ID": "test", "LOCAL_RANK": "0"})
    worker = None
    try:
        worker = int(launcher.stdout.readline())
        assert launcher.stdout.readline().strip() == "watching True"
        time.sleep(0.5)
        assert psutil.pid_exists(worker)
        launcher.kill()  # SIGKILL: the launcher gets no chance to signal its worker
        launcher.wait()
        waited = _wait_gone(worker, 10)
        assert waited is not None, "the worker outlived its launcher"
        assert waited < 3, waited
    finally:
        launcher.kill()
        if worker and psutil.pid_exists(worker):
            os.kill(worker, signal.SIGKILL)


def test_no_watch_outside_torchrun():
    # A run started from a shell (or srun) must survive its parent (nohup, a closed terminal).
    from megatron_ixt.runtime.lifecycle import launched_by_torchrun

    assert not launched_by_torchrun({"LOCAL_RANK": "0"})
    assert not launched_by_torchrun({"SLURM_PROCID": "0"})
    assert launched_by_torchrun({"TORCHELASTIC_RUN_ID": "x", "LOCAL_RANK": "0"})


HOLDER = """
import sys, time
from megatron_ixt.runtime import lifecycle
lifecycle.lock_save_folder(sys.argv[1])
print("locked", flush=True)
time.sleep(600)
"""


def test_save_folder_lock_names_the_holder_and_dies_with_it(tmp_path):
    from megatron_ixt.runtime import lifecycle

    folder = tmp_path / "ckpt"
    holder = subprocess.Popen([PY, "-c", HOLDER, str(folder)], cwd=REPO, env=child_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(lifecycle.SaveFolderLocked) as refused:
            lifecycle.lock_save_folder(str(folder))
        message = str(refused.value)
        assert f"pid {holder.pid} on host {socket.gethostname()}" in message and str(folder) in message
        holder.kill()  # no clean-up code runs: the kernel drops the lock
        holder.wait()
        # The stale lock file stays, naming a dead process; it blocks nothing.
        assert (folder / lifecycle.LOCK_FILE).exists()
        lifecycle.lock_save_folder(str(folder))
        lifecycle.lock_save_folder(str(folder))  # again in the holding process: a no-op
        assert f'"pid": {os.getpid()}' in (folder / lifecycle.LOCK_FILE).read_text()
    finally:
        holder.kill()
        lifecycle.release_save_folder(str(folder))


def _parent(process: psutil.Process) -> int | None:
    try:
        return process.ppid()
    except psutil.Error:
        return None


def _describe(process: psutil.Process) -> str:
    try:
        return f"(parent {process.ppid()}: {' '.join(process.cmdline())[:200]})"
    except psutil.Error:
        return ""


def _mentions(process: psutil.Process, text: str) -> bool:
    try:
        return text in " ".join(process.cmdline())
    except psutil.Error:
        return False


def _runs_pretrain(process: psutil.Process) -> bool:
    return _mentions(process, "pretrain_ixt.py")


def _tracker(ckpt) -> int | None:
    path = ckpt / "latest_checkpointed_iteration.txt"
    return int(path.read_text()) if path.exists() else None


@pytest.mark.slow
def test_killing_torchrun_stops_its_workers_and_frees_the_folder(tmp_path):
    ckpt = tmp_path / "ckpt"
    base = ["--config", TINY, "--mock-data", "--eval-interval", 0, "--log-interval", 5, "--save", ckpt,
            "--save-interval", 2]
    args = [*base, "--tensor-model-parallel-size", 2]
    cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(REPO / "pretrain_ixt.py"),
           *map(str, args), "--train-iters", "100000"]
    with open(tmp_path / "out.txt", "w") as output:
        tree = ProcessTree(subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=output, stderr=subprocess.STDOUT,
                                            text=True, start_new_session=True))
        try:
            deadline = time.time() + 180
            while (_tracker(ckpt) or 0) < 4:
                tree.snapshot()
                assert time.time() < deadline and tree.popen.poll() is None, (tmp_path / "out.txt").read_text()[-3000:]
                time.sleep(0.2)
            tree.snapshot()
            everything = [p for p in tree.seen.values() if p.pid != tree.popen.pid]
            workers = [p for p in everything if _parent(p) == tree.popen.pid and _runs_pretrain(p)]
            assert len(workers) == 2, everything

            # A second run on the same folder, while the first is alive: refused, naming it. Its
            # worker is started as torchrun starts one (tests/launch.py's fork server, no
            # interpreter start): what is checked is the worker's own exit status, which is 2
            # (a usage error), and its message; torchrun's agent has no part in the refusal.
            second = Launch(str(REPO / "pretrain_ixt.py"), [str(a) for a in [*base, "--train-iters", 10]], 1, None)
            try:
                second_status = second.wait(180)
            finally:
                second.kill()
            second_codes = [p.exitcode for p in second.processes]
            second_out, second_err = second.output()
            assert second_status is not None, "the second run did not exit in 180 s: " + second_out[-2000:] + second_err[-2000:]
            assert second_status != 0 and second_codes == [2], (second_codes, second_out[-2000:] + second_err[-2000:])
            assert "is in use by a running training" in second_err and f"on host {socket.gethostname()}" in second_err
            assert any(f"pid {w.pid} " in second_err for w in workers), second_err

            # SIGKILL the torchrun agent alone: its workers (in sessions of their own) must follow.
            os.kill(tree.popen.pid, signal.SIGKILL)
            tree.popen.wait()
            for process in everything:  # the workers and their helpers (data-loader workers)
                waited = _wait_gone(process.pid, 15)
                orphans = [f"{p.pid} {_describe(p)}" for p in psutil.process_iter()
                           if _parent(p) == 1 and time.time() - p.create_time() < 300]
                assert waited is not None and waited < 5, f"{process} {_describe(process)} still running after the agent's death {orphans}"
            # Also what the workers forked after the last look (checkpoint writer processes).
            late = [p for p in psutil.process_iter() if _mentions(p, str(ckpt))]
            assert not late, [_describe(p) for p in late]
            before = _tracker(ckpt)
            time.sleep(3)
            assert _tracker(ckpt) == before, "the checkpoint tracker moved after the launcher died"
        finally:
            tree.kill()

    # The dead run's lock does not block a restart, which resumes from its last checkpoint
    # (its ranks started as torchrun's workers, from the fork server: the agent is not what
    # this part checks).
    last = _tracker(ckpt)
    proc = run_torchrun(2, "pretrain_ixt.py", [*args, "--load", ckpt, "--train-iters", 100000,
                                              "--exit-interval", last + 2], timeout=300)
    assert f"iteration {last}" in proc.stdout and _tracker(ckpt) == last + 2
