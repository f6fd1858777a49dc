"""A worker's life: it ends with its launcher, and one checkpoint folder has one writer.

torchrun starts each worker in a session of its own, so a SIGKILL of the torchrun agent
(an OOM kill, ``kill -9``, a lost terminal) reaches no worker: they train on as orphans and
keep saving into ``--save``, where a restart then writes too. Two guards:

* :func:`watch_launcher` - a worker started by torchrun asks the kernel for a signal when
  its parent dies (``prctl(PR_SET_PDEATHSIG)``, Linux), and a thread also watches the
  parent pid (other systems; a parent that died before the ``prctl``; a main thread stuck
  in a collective). The worker then kills its process group - itself and every process it
  started - at once, without saving: the run is being torn down, its peers die with it.
* :func:`lock_save_folder` - an exclusive ``flock`` on ``<save>/.megatron_ixt.lock``, taken
  before anything is written there, refuses a second live run naming the holder (host, pid,
  start time). The kernel drops the lock when its holder dies, however it dies, so a lock
  left by a killed run never blocks a restart.

And a run asked to stop saves first: :func:`handle_preemption_signals` turns SIGTERM/SIGUSR1
into a request that the training loop sees at the end of an iteration
(:func:`preemption_requested`); it then saves a checkpoint and exits with
:data:`EXIT_CODE_PREEMPTED`. Only the training process handles them: SLURM signals every
process of a step, so each helper process it starts (megatron-core's checkpoint writers and
their results-queue Manager, the DataLoader workers) is started inside
:func:`preemption_signals_blocked` and lives with them blocked; a helper with their default
action would die of the warning in the middle of the save it serves.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import fcntl
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Optional

logger = logging.getLogger(__name__)

LOCK_FILE = ".megatron_ixt.lock"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# Exit status of a worker whose launcher is gone (128 + SIGKILL, as if it had been killed).
EXIT_LAUNCHER_GONE = 137
WATCH_INTERVAL_S = 0.5
# What asks a run to save and stop: SLURM's time-limit SIGTERM (also torchrun's on shutdown)
# and the early warning of `sbatch --signal=USR1@...`. The training process handles them
# (handle_preemption_signals); its DataLoader workers ignore them (data/loader.py).
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# Exit status after a signal-triggered save: "temporary failure, run me again" (EX_TEMPFAIL),
# distinct from success (0), errors (1) and configuration errors (2).
EXIT_CODE_PREEMPTED = 75
# A second signal later than this after the first means "stop now"; earlier, it is a duplicate.
REPEAT_SIGNAL_GRACE_S = 10.0

_locks: dict[str, int] = {}  # save folder (real path) -> open, locked file descriptor
# The preemption signal this process received (None: none yet) and when (time.monotonic()).
_preemption: dict = {"signal": None, "time": 0.0}


def launched_by_torchrun(environ: Optional[dict] = None) -> bool:
    """torchrun's agent sets these for its workers (and nothing else does)."""
    env = os.environ if environ is None else environ
    return "TORCHELASTIC_RUN_ID" in env and "LOCAL_RANK" in env


def _set_parent_death_signal(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _launcher_gone(parent: int) -> None:
    logger.error("the launcher (pid %d) is gone: stopping now, without saving", parent)
    for handler in logging.getLogger().handlers:
        handler.flush()
    # torchrun starts each worker as the leader of a process group of its own, which holds
    # everything the worker started: data-loader workers, checkpoint writers, and processes
    # that multiprocessing *spawned* (these inherit neither the parent-death signal nor the
    # fork hook below). SIGKILL to the group ends them all, this worker included.
    if os.getpgrp() == os.getpid():
        os.killpg(os.getpid(), signal.SIGKILL)
    os._exit(EXIT_LAUNCHER_GONE)  # no atexit handlers, no checkpoint


def watch_launcher(environ: Optional[dict] = None, interval: float = WATCH_INTERVAL_S) -> bool:
    """Under torchrun: end this worker (and what it started) when its launcher dies.
    Returns whether it watches.

    Only under torchrun: a process started from a shell (or by ``srun``, which reaps its own
    tasks) must survive its parent, e.g. a run left going with ``nohup``.

    Two watchers, because either alone can miss: the kernel's parent-death signal (SIGHUP,
    handled in the main thread, which may be inside a long collective) and a thread polling
    the parent pid (which needs the interpreter's lock)."""
    if not launched_by_torchrun(environ):
        return False
    parent = os.getppid()
    signal.signal(signal.SIGHUP, lambda signum, frame: _launcher_gone(parent))
    _set_parent_death_signal(signal.SIGHUP)
    if os.getppid() != parent or parent == 1:  # died before the prctl took effect
        _launcher_gone(parent)
    # The kernel clears the parent-death signal in a forked child, and the watch thread is
    # not copied into it: a fork of this worker (a checkpoint writer, a data-loader worker)
    # that outlives it, e.g. after an OOM kill of the worker alone, would wait forever.
    os.register_at_fork(after_in_child=lambda: _set_parent_death_signal(signal.SIGKILL))

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                _launcher_gone(parent)

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()
    return True


class SaveFolderLocked(Exception):
    """Another live run holds the lock of this ``--save`` folder."""


def _holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another process (it has not written its name yet)"
    return f"pid {info.get('pid')} on host {info.get('host')}, started {info.get('started')}" + (
        f" ({info['command']})" if info.get("command") else "")


def lock_save_folder(folder: str) -> str:
    """Take the exclusive lock of ``folder`` (created if missing) for the life of this
    process; returns the lock file. Raises :class:`SaveFolderLocked` naming the holder.
    Taking it again in the process that holds it is a no-op."""
    os.makedirs(folder, exist_ok=True)
    key = os.path.realpath(folder)
    path = os.path.join(folder, LOCK_FILE)
    if key in _locks:
        return path
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise SaveFolderLocked(f"--save {folder} is in use by a running training: {holder}. Stop that run "
                               f"first, or save elsewhere (the lock, {path}, is released when its holder exits)")
    info = {"host": socket.gethostname(), "pid": os.getpid(),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode() + b"\n", 0)
    os.fsync(fd)
    _locks[key] = fd  # kept open (and locked) until the process exits
    return path


def holds_save_folder(folder: str) -> bool:
    """Whether this process holds the lock of ``folder``."""
    return os.path.realpath(folder) in _locks


def release_save_folder(folder: str) -> None:
    """Give the lock back before the process ends (in-process runs, tests)."""
    fd = _locks.pop(os.path.realpath(folder), None)
    if fd is not None:
        os.close(fd)


@contextlib.contextmanager
def preemption_signals_blocked():
    """Block the preemption signals in this thread while inside: a process forked or spawned
    here starts with them blocked (a child keeps its parent's signal mask, through ``exec``
    too, where a handler would be reset to the default action, which terminates) and keeps
    them blocked for its life, from its first instruction. This process still sees a signal
    that arrives meanwhile: the kernel hands it to another thread (torch's, gloo's, the
    launcher watch), and Python runs the handler in the main thread all the same; with no
    other thread it is delivered when the block ends."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, PREEMPTION_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def handle_preemption_signals() -> None:
    """Turn the preemption signals into "save, then exit" for this process (the training
    process, saving into ``--save``); forgets a signal an earlier run in it received."""
    _preemption.update(signal=None, time=0.0)
    for sig in PREEMPTION_SIGNALS:
        signal.signal(sig, _on_preemption_signal)


def _on_preemption_signal(signum, frame) -> None:
    # Only record it: the loop finishes the current iteration, then saves and exits.
    # A second signal means "now": a rank stuck in a collective (its peer died) must
    # stay killable by its launcher.
    # A repeat within a few seconds is the same request delivered twice (SLURM signals
    # every process of a step, and a launcher may forward it again): ignore it.
    now = time.monotonic()
    if _preemption["signal"] is not None:
        if now - _preemption["time"] < REPEAT_SIGNAL_GRACE_S:
            return
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    _preemption.update(signal=signum, time=now)
    logger.warning("received signal %d: saving a checkpoint after this iteration, then exiting", signum)


def ignore_preemption_signals() -> None:
    """The save a signal asked for is complete: from now on the run only exits (status 75),
    and a repeat of the signal must not turn that into a death by signal, which a job
    script would not requeue (Python restores the default actions while it shuts down).
    SIGKILL still ends it."""
    for sig in PREEMPTION_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def preemption_signal() -> Optional[int]:
    """The preemption signal this process received, or None."""
    return _preemption["signal"]


def preemption_requested() -> bool:
    """Collective: true on all ranks if any rank received a preemption signal (ranks may get
    it at slightly different times; they must all stop at the same iteration)."""
    # Deferred: the rest of this module needs only the standard library, and its tests
    # start processes that import nothing heavier.
    import torch

    from megatron_ixt.runtime.kernels import current_device

    flag = torch.tensor([1.0 if _preemption["signal"] else 0.0], device=current_device())
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag.item())
