"""Megatron-LM's operations flags (megatron_ixt/training/hooks.py, metrics.py): --manual-gc,
--log-throughput, --profile with --use-pytorch-profiler, --wandb-*, --empty-unused-memory-level,
and their one-line refusals.

One data-parallel run of two ranks carries all of them; tests/scripts/operations_probe.py records
each rank's garbage collections and CUDA memory releases (with the steps done), its W&B runs and
what was left running. The throughput is checked against Megatron-LM's FLOPs formula written out
here for the tiny model, not against megatron_ixt.model.flops."""

from __future__ import annotations

import glob
import json
import logging
import re
import socket
import sys

import pytest
import torch

from megatron_ixt.config.cli import ConfigError, parse_config
from megatron_ixt.config.validate import validate
from megatron_ixt.training import hooks as hooks_module
from megatron_ixt.training.hooks import TrainingHooks, empty_unused_memory, profiler_schedule
from tests.launch import TINY, read_metrics, run_torchrun

ITERS = 4


def tiny_flops_per_iteration() -> float:
    """Megatron-LM's formula written out for examples/configs/tiny.yaml: 4 layers, hidden 64,
    4 heads of 16 channels, 2 key/value groups, SwiGLU FFN 192, sequence 64, vocabulary padded
    to 512, global batch 8: 3 (forward + backward) x 2 (multiply-add) x MACs per token x tokens."""
    h, s, q, kv, ffn, layers, vocab = 64, 64, 64, 32, 192, 4, 512
    per_layer = h * (q + 2 * kv) + s / 2 * q * 2 + q * h + h * ffn * 3
    return 3 * 2 * (layers * per_layer + h * vocab) * 8 * s


def test_operations_flags_in_one_data_parallel_run(tmp_path):
    tb, wb, log, out = tmp_path / "tb", tmp_path / "wb", tmp_path / "metrics.jsonl", tmp_path / "probe.json"
    proc = run_torchrun(2, "tests/scripts/operations_probe.py", [
        out, "--config", TINY, "--mock-data", "--train-iters", ITERS, "--lr-warmup-iters", 1, "--log-interval", 2,
        "--eval-interval", ITERS, "--eval-iters", 1, "--log-file", log,
        "--manual-gc", "--manual-gc-interval", 2, "--empty-unused-memory-level", 2, "--log-throughput",
        "--profile", "--use-pytorch-profiler", "--profile-step-start", 2, "--profile-step-end", 3,
        "--tensorboard-dir", tb,
        "--wandb-project", "P", "--wandb-save-dir", wb], timeout=240,
        env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    ranks = [json.loads((tmp_path / f"probe.json.{rank}").read_text()) for rank in range(2)]

    # --manual-gc on every rank: the automatic collector off at every step and back on after the
    # run; one full collection at the start and every 2 steps, a full one before the evaluation
    # and a young-generation one after it, and no other.
    for probe in ranks:
        assert probe["automatic_at_steps"] == [False] * ITERS and probe["automatic_after"]
        manual = [(c["step"], c["generation"]) for c in probe["collections"] if not c["automatic_on"]]
        assert manual == [(0, 2), (2, 2), (4, 2), (4, 2), (4, 0)], manual
        # --empty-unused-memory-level 2 where Megatron-LM releases: after each forward-backward
        # (level 1; the evaluation's too) and after each step (level 2).
        expected = [call for k in range(ITERS) for call in ([k, 1], [k + 1, 2])] + [[ITERS, 1]]
        assert probe["memory_releases"] == expected, probe["memory_releases"]
        assert probe["children_left"] == []  # wandb's service ended with the run

    # --log-throughput: Megatron-LM's field in the line, its value the model FLOPs over the time
    # per iteration of the same line; every JSON record has it for its own step time.
    flops = tiny_flops_per_iteration() / 2  # per device
    lines = re.findall(r"ms/iter ([\d.]+) \|.* throughput per GPU \(TFLOP/s/GPU\): ([\d.]+) \|", proc.stdout)
    assert len(lines) == ITERS // 2, proc.stdout[-3000:]
    for ms, tflops in lines:
        assert float(tflops) == pytest.approx(flops / (float(ms) / 1000) / 1e12, abs=6e-5)
    rows, evals = read_metrics(log)
    assert [r["iteration"] for r in rows] == list(range(1, ITERS + 1)) and len(evals) == 1
    for r in rows:
        assert r["throughput"] == pytest.approx(flops / (r["step_ms"] / 1000) / 1e12, rel=1e-3)

    # --use-pytorch-profiler on --profile-ranks (0) only: one trace, of step 2, with shapes.
    traces = glob.glob(str(tb / "*.pt.trace.json"))
    assert len(traces) == 1 and f"_{ranks[0]['pid']}." in traces[0], traces
    events = json.loads(open(traces[0]).read())["traceEvents"]
    assert {e["name"] for e in events if e.get("name", "").startswith("ProfilerStep#")} == {"ProfilerStep#2"}
    assert any("Input Dims" in e.get("args", {}) for e in events)

    # W&B from the last rank only, offline as WANDB_MODE says (no mode of our own), with the
    # scalars TensorBoard gets and the run configuration.
    assert [p["wandb_inits"] for p in ranks] == [[], [None]]
    runs = glob.glob(str(wb / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(runs) == 1, runs
    data = open(runs[0], "rb").read()
    for key in (b"train/lm_loss", b"train/grad_norm", b"throughput", b"validation/lm_loss", b"profile_step_start"):
        assert key in data, key


@pytest.mark.filterwarnings("ignore:Profiler won't be using warmup")
@pytest.mark.parametrize("start, end, resumed_at, recorded", [
    (2, 3, 0, [2]),              # Megatron-LM's schedule: steps start .. end-1
    (0, 3, 0, [1, 2]),
    (10, 12, 5, [10, 11]),       # resumed before the window: the same steps
    (10, 12, 10, [11]),          # resumed inside it: the rest of it
    (10, 12, 11, None),          # resumed past it: nothing to profile
])
def test_profiler_window_holds_for_resumed_runs(start, end, resumed_at, recorded):
    schedule = profiler_schedule(start, end, resumed_at)
    if recorded is None:
        assert schedule is None
        return
    action = torch.profiler.schedule(**schedule, repeat=1)
    # prof.step() before each step: step number resumed_at + k runs at schedule step k.
    record = (torch.profiler.ProfilerAction.RECORD, torch.profiler.ProfilerAction.RECORD_AND_SAVE)
    assert [resumed_at + k for k in range(1, 20) if action(k) in record] == recorded


def config(*flags):
    cfg, _ = parse_config(["--config", str(TINY), "--mock-data", *map(str, flags)])
    return cfg


@pytest.mark.parametrize("flags, message", [
    (["--profile", "--use-pytorch-profiler"], "--use-pytorch-profiler writes its trace under --tensorboard-dir"),
    (["--profile", "--profile-step-start", 5, "--profile-step-end", 5],
     r"--profile-step-end \(5\) must be above --profile-step-start \(5\)"),
    (["--wandb-project", "P"], "--wandb-project needs --wandb-save-dir DIR or --save DIR"),
    (["--manual-gc", "--manual-gc-interval", -1], "--manual-gc-interval must be >= 0"),
])
def test_operations_flags_are_refused_in_one_line(flags, message):
    with pytest.raises(ConfigError, match=message) as e:
        validate(config(*flags), 1, cuda=False)
    assert "\n" not in str(e.value)


def test_wandb_project_without_wandb_installed_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # importlib finds no such package
    with pytest.raises(ConfigError, match=r"pip install 'megatron_ixt\[wandb\]'"):
        validate(config("--wandb-project", "P", "--save", "ckpt"), 1, cuda=False)


def test_nsys_profile_on_cpu_warns_once_and_trains_on(caplog):
    with caplog.at_level(logging.WARNING, logger="megatron_ixt"):
        hooks = TrainingHooks(config("--profile", "--profile-step-start", 0, "--profile-step-end", 2), 0)
        for step in range(3):
            hooks.before_step(step)
            hooks.after_step(step + 1)
        hooks.close()
    assert [r.getMessage() for r in caplog.records] == [
        "--profile without --use-pytorch-profiler opens an nsys capture range, which needs CUDA: nothing is "
        "profiled on CPU (add --use-pytorch-profiler for a torch.profiler trace)"]


@pytest.mark.parametrize("cuda, level, releases", [(True, 0, []), (True, 1, [1]), (True, 2, [1, 2]), (False, 2, [])])
def test_empty_unused_memory_releases_from_its_level_on_cuda_only(monkeypatch, cuda, level, releases):
    calls = []
    monkeypatch.setattr(hooks_module.torch.cuda, "is_available", lambda: cuda)  # simulated device
    monkeypatch.setattr(hooks_module.torch.cuda, "empty_cache", lambda: calls.append("released"))
    cfg = config("--empty-unused-memory-level", level)
    released = []
    for at in (1, 2):  # after a forward-backward, after a step
        empty_unused_memory(cfg, level=at)
        released += [at] * len(calls)
        calls.clear()
    assert released == releases


def test_wandb_goes_offline_without_a_key_or_a_server_unless_wandb_mode_says(monkeypatch, tmp_path):
    from megatron_ixt.training.metrics import wandb_offline_reason

    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # no `wandb login` either
    assert wandb_offline_reason() == "no API key (set WANDB_API_KEY or run wandb login)"
    (tmp_path / "netrc").write_text("machine 127.0.0.1\n  login user\n  password k\n")
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed.getsockname()[1]}")
        assert wandb_offline_reason() == "127.0.0.1 cannot be reached"
    monkeypatch.setenv("WANDB_MODE", "online")  # the user's choice stands
    assert wandb_offline_reason() is None
