"""Sample-based schedules (``--train-samples``, ``--lr-*-samples``) and batch-size ramp-up
(``--rampup-batch-size``), with Megatron-LM's meaning, on the tiny model (2 processes, gloo, DP=2).

- A schedule counted in samples is its iteration-based twin: the same learning rate and loss
  at every step, and the learning rates are the warm-up/linear-decay formula's.
- Ramp-up: each step's global batch is the one Megatron-LM's calculator gives for the samples
  consumed before it (the formula, recomputed here), the scheduler advances by that batch (the
  learning rates are the cosine's at the consumed samples), and a run stopped mid-ramp and
  resumed from its checkpoint logs exactly the uninterrupted run's batches, lrs and losses.
- Mixed schedule kinds and ramp-ups the calculator cannot follow are refused in one line
  (exit 2); a dry run resolves a sample-based schedule as a real run does.
"""

from __future__ import annotations

import math

import pytest

from tests.launch import TINY, read_metrics, run_python, run_torchrun

# tiny.yaml: lr 3e-3 -> min lr 3e-4; its train_iters and warm-up iterations give way to
# --train-samples (a flag overrides the file's schedule of the other kind).
LR, MIN_LR = 3e-3, 3e-4
COMMON = ["--config", TINY, "--mock-data", "--eval-interval", 0, "--log-interval", 1, "--num-workers", 0]


def train(tmp_path, name: str, flags: list, **kwargs) -> list[dict]:
    log = tmp_path / f"{name}.jsonl"
    run_torchrun(2, "pretrain_ixt.py", [*COMMON, *flags, "--log-file", log], **kwargs)
    rows, _ = read_metrics(log)
    return rows


def steps(rows: list[dict]) -> list[tuple]:
    return [(r["iteration"], r["consumed_samples"], r["global_batch_size"], r["lr"], r["lm loss"]) for r in rows]


def test_sample_schedule_equals_its_iteration_twin(tmp_path):
    shape = ["--global-batch-size", 4, "--lr-decay-style", "linear"]
    by_iters = train(tmp_path, "iters", [*shape, "--train-iters", 6, "--lr-warmup-iters", 2, "--lr-decay-iters", 6])
    by_samples = train(tmp_path, "samples", [*shape, "--train-samples", 24, "--lr-warmup-samples", 8,
                                             "--lr-decay-samples", 24])
    assert steps(by_samples) == steps(by_iters)  # bitwise: the same floats
    assert [r["iteration"] for r in by_samples] == [1, 2, 3, 4, 5, 6]
    for row in by_samples:  # megatron-core's warm-up then linear decay, over samples
        n = row["consumed_samples"]
        expected = LR * n / 8 if n <= 8 else MIN_LR + (LR - MIN_LR) * (1 - (n - 8) / (24 - 8))
        assert row["lr"] == pytest.approx(expected, rel=1e-12)


def rampup_batches(start: int, increment: int, ramp_samples: int, gbs: int, train_samples: int) -> list[int]:
    """Megatron-LM's global batch per step, from its formula, and its step count
    (``update_train_iters``: ramp-up steps while consumed <= SAMPLES, then whole batches)."""
    per_increment = ramp_samples / ((gbs - start) // increment)
    batches, consumed = [], 0
    while consumed <= ramp_samples and consumed <= train_samples:
        batches.append(start + int(consumed / per_increment) * increment)
        consumed += batches[-1]
    batches += [gbs] * ((train_samples - consumed) // gbs if train_samples > consumed else 0)
    return batches


def test_rampup_batches_and_exact_resume_mid_ramp(tmp_path):
    ramp = ["--micro-batch-size", 1, "--global-batch-size", 6, "--rampup-batch-size", 2, 2, 8,
            "--train-samples", 32]
    full = train(tmp_path, "full", ramp)
    expected = rampup_batches(2, 2, 8, 6, 32)
    assert expected == [2, 2, 4, 6, 6, 6, 6]
    assert [r["global_batch_size"] for r in full] == expected
    consumed = [sum(expected[:i + 1]) for i in range(len(expected))]
    assert [r["consumed_samples"] for r in full] == consumed
    for row in full:  # cosine decay over --train-samples (the default --lr-decay-samples), no warm-up
        n = row["consumed_samples"]
        assert row["lr"] == pytest.approx(MIN_LR + (LR - MIN_LR) * 0.5 * (1 + math.cos(math.pi * n / 32)), rel=1e-12)

    # Stopped after step 2 (4 samples consumed): the next batch is 4, not the start's 2.
    ckpt = tmp_path / "ckpt"
    first = train(tmp_path, "first", [*ramp, "--save", ckpt, "--exit-interval", 2])
    log = tmp_path / "resumed.jsonl"
    proc = run_torchrun(2, "pretrain_ixt.py", [*COMMON, *ramp, "--load", ckpt, "--log-file", log])
    resumed, _ = read_metrics(log)
    assert [r["iteration"] for r in first] == [1, 2] and [r["iteration"] for r in resumed] == [3, 4, 5, 6, 7]
    assert steps(first + resumed) == steps(full)  # batches, lrs and losses: bitwise the same
    assert "global batch size 4" in proc.stdout + proc.stderr  # the metrics line shows the ramp


REFUSED = [
    (["--train-samples", 24, "--lr-warmup-iters", 2], "--lr-warmup-iters with --train-samples"),
    (["--train-samples", 24, "--train-iters", 5, "--global-batch-size", 4], "--train-iters with --train-samples"),
    (["--train-iters", 6, "--lr-decay-samples", 24], "--lr-decay-samples counts samples"),
    (["--train-samples", 32, "--global-batch-size", 8, "--rampup-batch-size", 3, 1, 8],
     "START (3) is not divisible by --micro-batch-size (2) x data-parallel size (1)"),
    (["--train-samples", 32, "--global-batch-size", 8, "--rampup-batch-size", 2, 4, 8],
     "--global-batch-size (8) - START (2) = 6 is not divisible by INCREMENT (4)"),
]


@pytest.mark.parametrize("flags,message", REFUSED, ids=[m.split(":")[0][:40] for _, m in REFUSED])
def test_mixed_or_impossible_schedules_are_refused(flags, message):
    proc = run_python("pretrain_ixt.py", [*COMMON, *flags])
    assert proc.returncode == 2, proc.stderr[-2000:]
    error = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(error) == 1 and message in error[0], proc.stderr[-2000:]


def test_dry_run_resolves_a_sample_schedule():
    proc = run_python("pretrain_ixt.py", [*COMMON, "--dry-run", "--train-samples", 32, "--global-batch-size", 8,
                                          "--rampup-batch-size", 4, 4, 8, "--micro-batch-size", 2])
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout + proc.stderr
    # Ramp-up 4 -> 8 over 8 samples: batches 4, 4, 8 (16 samples), then 2 x 8: 5 iterations.
    for resolved in ("train_iters: 5", "train_samples: 32", "lr_decay_samples: 32", "lr_decay_iters: null",
                     "lr_warmup_iters: 0"):
        assert resolved in out, out[-3000:]


def test_resume_rules_name_the_sample_flags():
    from megatron_ixt.checkpoint.load import schedule_differences
    from megatron_ixt.config import Config

    def config(**training):
        cfg = Config()
        cfg.training.global_batch_size = 8
        for name, value in training.items():
            setattr(cfg.training, name, value)
        return cfg

    state = {"max_lr": LR, "min_lr": MIN_LR, "lr_warmup_steps": 0, "lr_decay_steps": 48, "lr_decay_style": "cosine",
             "start_wd": 0.1}
    ours = config(train_samples=40)
    by_iters, by_samples = config(train_iters=6).to_dict(), config(train_samples=48).to_dict()
    # An iteration-based checkpoint and a sample-based resume compare in samples, each shown as it counts.
    assert schedule_differences(state, {**state, "lr_decay_steps": 40}, by_iters, ours) == [
        "--lr-decay-samples (default --train-samples): checkpoint 6 iterations (48 samples), configured 40 samples"]
    assert schedule_differences(state, {**state, "lr_warmup_steps": 8}, by_samples, ours) == [
        "--lr-warmup-samples/--lr-warmup-fraction: checkpoint 0 samples, configured 8 samples"]
    assert schedule_differences(state, dict(state), by_iters, ours) == []  # the same schedule, either kind
