"""Helpers of the SLURM tests: start the one-node cluster, submit jobs, wait for them.

Every wait is bounded and fails with what the job was doing (its `scontrol show job`
fields and the tail of its log), so a hung test explains itself.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import pytest
from filelock import FileLock

REPO = Path(__file__).resolve().parents[2]
SLURM_DIR = REPO / "examples" / "slurm"
SETUP = SLURM_DIR / "local_cluster" / "setup.sh"
TINY = REPO / "examples" / "configs" / "tiny.yaml"
OUR_CONF_MARKER = "# Written by megatron_ixt examples/slurm/local_cluster/setup.sh"

# The local cluster is the machine's (2 CPUs): one SLURM test, or setup.sh, at a time, whichever
# pytest process runs it (pytest -n 2's workers, a second session). One object per process:
# it counts its own nested acquisitions; the kernel drops the lock of a process that dies.
CLUSTER_LOCK = FileLock(str(Path(tempfile.gettempdir()) / f"megatron_ixt-slurm-tests-{os.getuid()}.lock"))

# Job states after which a job does nothing more (until someone requeues it).
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
                "BOOT_FAIL", "DEADLINE", "PREEMPTED"}


def start_local_cluster() -> None:
    """Run setup.sh (installs what is missing, starts what is not running); skip the test
    only where that cannot work."""
    if sys.platform != "linux":
        pytest.skip("the local SLURM cluster needs Linux")
    ours = Path("/etc/slurm/slurm.conf").is_file() and \
        Path("/etc/slurm/slurm.conf").read_text().startswith(OUR_CONF_MARKER)
    if os.geteuid() != 0:
        # Without root we cannot install or start daemons, but can use a cluster that
        # setup.sh already started (only that one: never submit tests to a real site).
        if ours and shutil.which("sbatch") and _ok(["scontrol", "ping"]):
            return
        pytest.skip("needs root to install and start a local SLURM cluster "
                    "(examples/slurm/local_cluster/setup.sh), or that cluster already running")
    if not shutil.which("sbatch") and not shutil.which("apt-get"):
        pytest.skip("SLURM is not installed and there is no apt-get to install it")
    with CLUSTER_LOCK:
        proc = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"{SETUP} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")


def _ok(cmd: list[str]) -> bool:
    return subprocess.run(cmd, capture_output=True).returncode == 0


def job_env(**overrides: str) -> dict:
    """The environment a job is submitted with (sbatch passes it on to the job)."""
    env = {k: v for k, v in os.environ.items()
           # not ours: a surrounding torchrun's or SLURM job's variables would mislead the job
           if not k.startswith("SLURM_") and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                        "MASTER_PORT")}
    env.update({"IXT_REPO": str(REPO), "IXT_PYTHON": sys.executable, "OMP_NUM_THREADS": "1"})
    env.update(overrides)
    return env


def run(cmd: list[str], env: Optional[dict] = None, timeout: int = 60) -> str:
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def sbatch(script: Path, *args: str, sbatch_args: tuple = (), env: Optional[dict] = None) -> int:
    out = run(["sbatch", "--parsable", *sbatch_args, str(script), *args], env=env)
    return int(out.strip().split(";")[0])


def job_info(job_id: int) -> dict:
    """`scontrol show job -o` as a dict (JobState, Restarts, ExitCode, StdOut, ...); for an
    array job, its first task."""
    proc = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.strip():
        return {}
    return dict(re.findall(r"(\w+)=(\S*)", proc.stdout.splitlines()[0]))


def log_tail(path, chars: int = 4000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-chars:]
    except OSError as e:
        return f"({path}: {e.strerror})"


def wait_for(what: str, condition: Callable[[], bool], timeout: float, job_id: int, log=None,
             interval: float = 0.5) -> None:
    """Poll ``condition`` until true; on timeout fail with the job's state and log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    info = job_info(job_id)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (job {job_id}: state "
                f"{info.get('JobState')}, reason {info.get('Reason')}, restarts {info.get('Restarts')})\n"
                f"--- log {log}\n{log_tail(log) if log else ''}")


def wait_until_final(job_id: int, timeout: float, log=None) -> dict:
    """Wait until the job is finished for good; returns its scontrol fields."""
    info: dict = {}

    def done() -> bool:
        nonlocal info
        info = job_info(job_id)
        return info.get("JobState") in FINAL_STATES

    wait_for(f"job {job_id} to finish", done, timeout, job_id, log)
    return info


def metrics(path: Path) -> list[dict]:
    """Training records of a --log-file (validation records carry a 'split' key)."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # the last line, while the run is still writing it
            break
    return [r for r in rows if "split" not in r]


def cancel(job_id: int) -> None:
    """Best effort, for cleanup after a failed test: nothing of it may keep running."""
    subprocess.run(["scancel", str(job_id)], capture_output=True)
