"""A save on a preemption signal always completes: SLURM signals every process of a step, so
every helper process of the training (megatron-core's checkpoint writers and the results-queue
Manager it spawns in the first save, the DataLoader workers) lives with the preemption signals
blocked or ignored; only the training process handles them (runtime/lifecycle.py).

* Deterministic: during the saves, each helper's SigBlk / SigIgn (/proc/<pid>/status).
* As SLURM delivers it: SIGUSR1 to the run's whole process group, again and again while it
  saves; the save completes, the checkpoint loads, the run exits 75.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.launch import REPO, TINY, child_env, run_python, run_torchrun

pytestmark = pytest.mark.slow

BASE = ["--config", TINY, "--mock-data", "--eval-interval", 0, "--log-interval", 1, "--num-workers", 2,
        "--lr-warmup-iters", 0]


def _handles_neither(helper: dict) -> list[str]:
    """The preemption signals a helper would die of: neither blocked nor ignored."""
    masked = int(helper["SigBlk"], 16) | int(helper["SigIgn"], 16)
    return [name for name, sig in (("SIGUSR1", signal.SIGUSR1), ("SIGTERM", signal.SIGTERM))
            if not masked & (1 << (sig - 1))]


def test_every_helper_process_blocks_or_ignores_the_preemption_signals(tmp_path):
    out = tmp_path / "helpers.json"
    proc = run_python("tests/scripts/save_signal_probe.py",
                      [out, "--", *BASE, "--train-iters", 2, "--save", tmp_path / "ckpt", "--save-interval", 1])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    helpers = json.loads(out.read_text())["helpers"]
    kinds = [h["kind"] for h in helpers]
    print("\n".join(f"{h['kind']:8} {h['Name']:16} SigBlk {h['SigBlk']} SigIgn {h['SigIgn']}" for h in helpers))
    assert kinds.count("writer") >= 2  # the writers of both saves, as they saw themselves
    assert "spawned" in kinds  # the Manager (a fresh interpreter: its handlers reset, its mask kept)
    assert kinds.count("forked") >= 2  # the DataLoader workers (and writers, seen from outside)
    exposed = {f"{h['kind']} {h['pid']}": _handles_neither(h) for h in helpers if _handles_neither(h)}
    assert not exposed, exposed


def test_signals_to_the_whole_group_during_the_save_still_save_and_exit_75(tmp_path):
    """The warning arrives at every process of the step, as SLURM sends it, and keeps coming
    while the run saves (SIGUSR1 to the process group every 20 ms for 6 s, inside the 10 s in
    which a repeat counts as the same request)."""
    ckpt, log = tmp_path / "ckpt", tmp_path / "m.jsonl"
    args = [*BASE, "--train-iters", 1000, "--save", ckpt, "--log-file", log]
    with open(tmp_path / "out.txt", "w") as output:
        run = subprocess.Popen([sys.executable, str(REPO / "pretrain_ixt.py"), *map(str, args)], cwd=REPO,
                               env=child_env(), stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 120
            while not (log.exists() and log.read_text().count("\n") >= 2) and run.poll() is None:
                assert time.monotonic() < deadline, "no training iteration in 120 s"
                time.sleep(0.05)
            end = time.monotonic() + 6
            while time.monotonic() < end and run.poll() is None:
                os.killpg(run.pid, signal.SIGUSR1)
                time.sleep(0.02)
            code = run.wait(120)
        finally:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
    out = (tmp_path / "out.txt").read_text()
    assert code == 75, out[-3000:]
    assert "received signal 10" in out and "saved checkpoint" in out, out[-3000:]
    stopped = int((ckpt / "latest_checkpointed_iteration.txt").read_text())
    resumed = tmp_path / "r.jsonl"
    run_torchrun(1, "pretrain_ixt.py", [*args[:-2], "--exit-interval", stopped + 1, "--load", ckpt, "--log-file", resumed])
    assert [json.loads(line)["iteration"] for line in resumed.read_text().splitlines()
            if "split" not in line][0] == stopped + 1
