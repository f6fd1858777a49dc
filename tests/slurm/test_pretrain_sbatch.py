"""examples/slurm/pretrain_ixt.sbatch on a real SLURM (the one-node local cluster).

The template runs as users submit it, with CPU settings given the way users override it
(sbatch options win over #SBATCH lines; IXT_* variables come from the environment):
2 processes, the tiny model, mock data, gloo. The preemption tests send the warning
signal by hand (`scancel --signal=USR1`) instead of waiting for a time limit, then check
that the job saved, requeued itself and resumed from that checkpoint.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .cluster import (SLURM_DIR, TINY, cancel, job_info, job_env, log_tail, metrics, run, sbatch, start_local_cluster,
                      wait_for, wait_until_final)

PRETRAIN = SLURM_DIR / "pretrain_ixt.sbatch"
# The template asks for 8 GPUs per node on 2 nodes; a CPU run on this machine overrides that.
CPU_ALLOCATION = ("--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-node=0", "--time=10")
JOB_TIMEOUT_S = 240  # one tiny run takes 30-60 s on 2 shared cores, most of it start-up

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def local_slurm():
    start_local_cluster()


@pytest.fixture
def submit(tmp_path):
    """Submit pretrain_ixt.sbatch with CPU settings; returns (job id, run dir, job log)."""
    jobs = []

    def _submit(launcher: str, train_args: str, save_interval: int) -> tuple[int, Path, Path]:
        run_dir = tmp_path / "run"
        env = job_env(IXT_LAUNCHER=launcher, IXT_RUN_DIR=str(run_dir), IXT_CONFIG=str(TINY),
                      IXT_DATA_ARGS="--mock-data", IXT_TRAIN_ARGS=train_args,
                      IXT_SAVE_INTERVAL=str(save_interval))
        job_id = sbatch(PRETRAIN, sbatch_args=(*CPU_ALLOCATION, f"--output={tmp_path}/job-%j.out"), env=env)
        jobs.append(job_id)
        return job_id, run_dir, tmp_path / f"job-{job_id}.out"

    yield _submit
    for job_id in jobs:  # a failed test must leave nothing running or queued
        cancel(job_id)


def tracker(run_dir: Path) -> int | None:
    path = run_dir / "checkpoints" / "latest_checkpointed_iteration.txt"
    return int(path.read_text()) if path.is_file() else None


def test_pretrain_job_trains_and_saves(submit):
    job_id, run_dir, log = submit("torchrun", "--tensor-model-parallel-size 2 --train-iters 10 --log-interval 5", 5)
    info = wait_until_final(job_id, JOB_TIMEOUT_S, log)
    text = log_tail(log, 100_000)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", f"job {job_id}: {info}\n{text[-4000:]}"
    # the rendezvous worked: torchrun started both workers, which formed one TP group
    assert "launcher torchrun" in text and "world 2 = TP 2 x PP 1 x DP 1 (torchrun launch" in text, text[-4000:]
    assert re.search(r"iteration +10/10 ", text) and "training finished" in text, text[-4000:]
    assert tracker(run_dir) == 10
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("iter_*")) == ["iter_0000005", "iter_0000010"]
    assert [r["iteration"] for r in metrics(run_dir / "metrics.jsonl")] == list(range(1, 11))


# (launcher, how the warning is delivered):
#   torchrun + "batch": what the template's `#SBATCH --signal=B:USR1@120` does at the time
#     limit: the batch shell gets it and its trap forwards it through srun to the step,
#     where SLURM signals every process (the workers once; the torchrun agent ignores it);
#     torchrun then exits 1, so the trap's note is what makes the script requeue.
#   srun + "steps": a signal to the job steps only (`--signal=USR1@120` without B:): every
#     rank gets it directly, exits 75, srun passes 75 on, and the script requeues on it.
@pytest.mark.parametrize("launcher,target", [("torchrun", "batch"), ("srun", "steps")])
def test_warning_signal_saves_requeues_and_resumes(submit, launcher, target):
    train_iters = 40  # enough that the first run is still going when the signal lands
    job_id, run_dir, log = submit(launcher, f"--tensor-model-parallel-size 2 --train-iters {train_iters} "
                                            "--log-interval 1 --eval-interval 0", 1000)
    metrics_file = run_dir / "metrics.jsonl"
    wait_for("the first 2 training iterations", lambda: len(metrics(metrics_file)) >= 2, JOB_TIMEOUT_S, job_id, log)

    run(["scancel", "--signal=USR1", *(["--batch"] if target == "batch" else []), str(job_id)])

    def requeued() -> bool:
        info = job_info(job_id)
        return int(info.get("Restarts", 0)) >= 1 and info.get("JobState") in ("PENDING", "RUNNING", "COMPLETED")

    wait_for("the job to save and requeue itself", requeued, 120, job_id, log)
    saved_at = tracker(run_dir)
    first_run = [r["iteration"] for r in metrics(metrics_file)]
    assert saved_at is not None and 2 <= saved_at < train_iters, \
        f"expected a checkpoint from the signal before iteration {train_iters}, found {saved_at}\n{log_tail(log)}"
    assert first_run == list(range(1, saved_at + 1)), "the first run must stop right after its save"
    # SLURM holds a requeued job for cred_expire seconds (15 on the local cluster, 120 by
    # default) before it starts it again, as the same job id.
    info = wait_until_final(job_id, JOB_TIMEOUT_S, log)
    text = log_tail(log, 200_000)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", f"job {job_id}: {info}\n{text[-4000:]}"
    if target == "batch":
        assert "got SIGUSR1" in text, text[-4000:]
    else:
        assert "training stopped on the signal (status 75)" in text, text[-4000:]
    assert f"requeueing job {job_id}" in text and f"job {job_id} (restart 1)" in text, text[-4000:]
    # the requeued run resumed from the signal's checkpoint and went on from there
    assert re.search(rf"loaded checkpoint \S+/iter_{saved_at:07d} \(iteration {saved_at}\)", text), text[-4000:]
    rows = metrics(metrics_file)
    assert [r["iteration"] for r in rows] == list(range(1, train_iters + 1)), "iterations continue, not restart"
    assert rows[saved_at]["consumed_samples"] == rows[saved_at - 1]["consumed_samples"] + 8  # global batch 8
    assert tracker(run_dir) == train_iters
