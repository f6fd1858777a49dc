"""Checkpoints: exact resume (bitwise on CPU), kills during saves, preemption signals,
resharding across layouts, shape-mismatch errors, non-finite steps, checkpoint_info.

Most tests read the session's trained mock checkpoint (``mock_checkpoint`` in conftest.py:
TP=2, dropout, saved at iterations 3 and 6); a test that changes it works on a copy."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.launch import REPO, TINY, ProcessTree, child_env, read_metrics, run_python, run_torchrun

# Multi-process trainings of a minute or more: `make test-fast` skips them.
pytestmark = pytest.mark.slow

BASE = ["--config", TINY, "--mock-data", "--eval-interval", 0, "--log-interval", 2,
        # Dropout makes the RNG state part of what must be restored exactly.
        "--hidden-dropout", 0.1, "--attention-dropout", 0.1]
LAYOUTS = {"tp2": ["--tensor-model-parallel-size", 2], "pp2": ["--pipeline-model-parallel-size", 2]}


def losses(log) -> dict[int, float]:
    rows, _ = read_metrics(log)
    return {r["iteration"]: r["lm loss"] for r in rows}


def tracker(ckpt) -> int:
    return int((ckpt / "latest_checkpointed_iteration.txt").read_text())


def rewind(ckpt, iteration: int):
    """The folder as a crash after iteration ``iteration``'s save left it: the tracker at
    that iteration, no later checkpoint."""
    for later in ckpt.glob("iter_*"):
        if int(later.name.split("_")[1]) > iteration:
            shutil.rmtree(later)
    (ckpt / "latest_checkpointed_iteration.txt").write_text(str(iteration))
    return ckpt


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_resume_is_bitwise_exact(layout, tmp_path, mock_checkpoint):
    # The uninterrupted run saved at iterations 3 and 6; resumed from 3, iterations 4-6 repeat.
    if layout == "tp2":
        full, flags = losses(mock_checkpoint.metrics), mock_checkpoint.flags
        ckpt = rewind(mock_checkpoint.copy(tmp_path / "ckpt"), 3)
    else:
        ckpt, flags = tmp_path / "ckpt", [*BASE, *LAYOUTS[layout], "--train-iters", 6]
        run_torchrun(2, "pretrain_ixt.py", [*flags, "--save", ckpt, "--save-interval", 3,
                                            "--log-file", tmp_path / "full.jsonl"])
        full = losses(tmp_path / "full.jsonl")
        rewind(ckpt, 3)
    run_torchrun(2, "pretrain_ixt.py", [*flags, "--load", ckpt, "--save", ckpt, "--log-file", tmp_path / "b.jsonl"])
    resumed = losses(tmp_path / "b.jsonl")
    assert sorted(resumed) == [4, 5, 6] and tracker(ckpt) == 6
    assert [resumed[i] for i in resumed] == [full[i] for i in resumed]  # bitwise: same floats


@pytest.mark.parametrize("point", ["kill-before-publish", "kill-after-rename", "kill-before-tracker"])
def test_kill_during_save_keeps_previous_checkpoint(point, tmp_path):
    # One process: the kill hits rank 0, which alone publishes checkpoints (the multi-rank
    # case of a dying save is test_sigkill_while_shards_are_written).
    ckpt = tmp_path / "ckpt"
    args = [*BASE, "--train-iters", 6, "--save", ckpt, "--save-interval", 2]
    proc = run_torchrun(1, "pretrain_ixt.py", args, check=False, env={"MEGATRON_IXT_FAULT": f"{point}@4"})
    assert proc.returncode != 0
    assert tracker(ckpt) == 2, "the marker must still point at the last complete checkpoint"
    # The next start cleans up, loads iteration 2 and finishes the run.
    proc = run_torchrun(1, "pretrain_ixt.py", [*args, "--load", ckpt, "--log-file", tmp_path / "m.jsonl"])
    assert "loaded checkpoint" in proc.stdout and "iteration 2" in proc.stdout
    assert min(losses(tmp_path / "m.jsonl")) == 3
    assert tracker(ckpt) == 6
    assert not [p for p in os.listdir(ckpt) if p.endswith(".partial")]
    if point == "kill-before-publish":
        assert "removed incomplete checkpoint" in proc.stdout


def _start(args, log, output) -> ProcessTree:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(REPO / "pretrain_ixt.py"), *map(str, args), "--log-file", str(log)]
    return ProcessTree(subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=output, stderr=subprocess.STDOUT,
                                        text=True, start_new_session=True))


def _wait_for(tree: ProcessTree, predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        tree.snapshot()
        if predicate():
            return
        if tree.popen.poll() is not None:
            pytest.fail(f"the run exited ({tree.popen.returncode}) before {what}")
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def test_sigkill_while_shards_are_written(tmp_path):
    """A real kill at an arbitrary moment inside a save (a bigger model, saved every step)."""
    ckpt = tmp_path / "ckpt"
    args = [*BASE, "--hidden-size", 256, "--ffn-hidden-size", 768, "--train-iters", 50, "--save", ckpt,
            "--save-interval", 1]
    with open(tmp_path / "out.txt", "w") as output:
        tree = _start(args, tmp_path / "m.jsonl", output)
        try:
            _wait_for(tree, lambda: ckpt.is_dir() and (ckpt / "latest_checkpointed_iteration.txt").exists()
                      and any(p.endswith(".partial") for p in os.listdir(ckpt)), 120, "a save in progress")
        finally:
            tree.kill()  # SIGKILL to every process of the run, mid-save
    last = tracker(ckpt)
    run_torchrun(2, "pretrain_ixt.py", [*args, "--exit-interval", last + 1, "--load", ckpt,
                                        "--log-file", tmp_path / "r.jsonl"])
    assert min(losses(tmp_path / "r.jsonl")) == last + 1


def test_sigterm_saves_and_run_resumes(tmp_path):
    ckpt = tmp_path / "ckpt"
    log = tmp_path / "m.jsonl"
    args = [*BASE, "--train-iters", 1000, "--save", ckpt]
    with open(tmp_path / "out.txt", "w") as output:
        tree = _start(args, log, output)
        try:
            _wait_for(tree, lambda: log.exists() and len(log.read_text().splitlines()) >= 3, 120, "three iterations")
            tree.popen.send_signal(signal.SIGTERM)  # torchrun forwards SIGTERM to its workers
            tree.wait(120)
        finally:
            tree.kill()
    out = (tmp_path / "out.txt").read_text()
    stopped = max(losses(log))
    assert stopped < 1000 and tracker(ckpt) == stopped, out[-3000:]
    assert "received signal 15" in out
    run_torchrun(2, "pretrain_ixt.py", [*args, "--exit-interval", stopped + 2, "--load", ckpt,
                                        "--log-file", tmp_path / "r.jsonl"])
    assert sorted(losses(tmp_path / "r.jsonl"))[:2] == [stopped + 1, stopped + 2]


def test_reshard_tp2_to_pp2_gives_same_logits(tmp_path, mock_checkpoint):
    outs = {}
    for name, flags in {"tp2": ["--tensor-model-parallel-size", 2], "pp2": ["--pipeline-model-parallel-size", 2],
                        "single": []}.items():
        out = tmp_path / f"{name}.pt"
        run_torchrun(2 if flags else 1, "tests/scripts/dump_logits.py", [mock_checkpoint.path, out, *flags])
        outs[name] = torch.load(out)
    for name in ("pp2", "single"):
        for key in ("logits", "losses"):
            torch.testing.assert_close(outs[name][key], outs["tp2"][key], rtol=1e-5, atol=1e-5)


def test_model_shape_mismatch_names_the_fields(mock_checkpoint):
    proc = run_torchrun(1, "pretrain_ixt.py", [*BASE, "--train-iters", 8, "--load", mock_checkpoint.path,
                                               "--hidden-size", 128, "--num-layers", 2], check=False)
    assert proc.returncode != 0
    assert "does not match the model configuration" in proc.stderr
    assert "--num-layers: checkpoint 4, configured 2" in proc.stderr
    assert "--hidden-size: checkpoint 64, configured 128" in proc.stderr


def test_nonfinite_steps_are_skipped_then_the_run_stops(tmp_path):
    log = tmp_path / "m.jsonl"
    # One poisoned step on one rank: skipped on both ranks, training continues.
    run_torchrun(2, "pretrain_ixt.py", [*BASE, "--train-iters", 6, "--log-file", log],
                 env={"MEGATRON_IXT_FAULT": "nan-grad@3"})
    rows, _ = read_metrics(log)
    assert [r["skipped"] for r in rows] == [False, False, True, False, False, False]
    # Three in a row: a clear error and a non-zero exit.
    proc = run_torchrun(2, "pretrain_ixt.py", [*BASE, "--train-iters", 8], check=False,
                        env={"MEGATRON_IXT_FAULT": "nan-grad@2,nan-grad@3,nan-grad@4"})
    assert proc.returncode != 0
    assert "3 consecutive iterations had a NaN/Inf loss or gradient" in proc.stderr


def test_checkpoint_info(mock_checkpoint):
    proc = run_python("tools/checkpoint_info.py", [mock_checkpoint.path])
    assert proc.returncode == 0, proc.stderr
    for text in ("iteration: 6", "consumed samples: 48", "TP 2 x PP 1 x DP 1", "num_layers: 4", "iter_0000003"):
        assert text in proc.stdout, proc.stdout
