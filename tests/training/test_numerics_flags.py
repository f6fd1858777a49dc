"""Megatron-LM's numerics flags on megatron-core, on the tiny model (CPU, gloo).

- ``--calculate-per-token-loss`` (default here) against ``--no-calculate-per-token-loss``
  (Megatron-LM's default): one real training step over packed SFT micro-batches of different
  token counts; the DDP gradients equal the gradients of the mean over all tokens, resp. of
  the mean of each micro-batch's mean, both computed here by autograd from the per-token
  losses, and the two differ; on micro-batches of equal token counts they coincide. The
  reported ``lm loss`` is the token mean in both modes (Megatron-LM's reporting).
- ``--decoupled-lr`` / ``--decoupled-min-lr``: the embedding and output layer (the shared
  weight when tied) and only they follow them, at the end of warm-up and of decay.
- ``--apply-layernorm-1p``: gammas stored zero-centred (zeros at initialisation, q/k norms and
  final norm included), computing exactly what plain norms with gamma + 1 compute; export
  writes stored + 1 (also from BF16 weights), import subtracts it again.
- ``--grad-reduce-in-bf16``: the DDP gradient buffers are BF16 (fp32 without it).
- ``--fp16``: dynamic loss scaling from 2^16: overflowing steps are skipped (the first keeps
  the scale, hysteresis 2, then it halves), the loss falls, the scale is in the log; a resume
  from a mid-run checkpoint continues with the saved scale and gives the same losses.
- Validation and the kernel plan refuse what cannot run, in one line naming the flags.
"""

from __future__ import annotations

import json
import shutil

import pytest

from megatron_ixt.config.cli import ConfigError, parse_config
from megatron_ixt.config.validate import validate
from megatron_ixt.runtime.kernels import DeviceFacts, plan_kernels
from tests.launch import TINY, read_metrics, run_python, run_torchrun

EMBEDDING_AND_OUTPUT = {"embedding.word_embeddings.weight", "output_layer.weight"}


@pytest.fixture(scope="module")
def probe(sft_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("numerics")
    proc = run_python("tests/scripts/numerics_probe.py", [out / "probe.json", sft_corpus["prefix"],
                                                           sft_corpus["tokenizer"], out / "cache"], timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads((out / "probe.json").read_text())


def test_per_token_and_per_sample_losses(probe):
    sft, ones = probe["loss"]["sft"], probe["loss"]["ones"]
    print(json.dumps(probe["loss"], indent=1))
    assert len(set(sft["counts"])) > 1, sft["counts"]  # packed conversations: unequal token counts
    # Each mode's gradients are those of its own objective (fp32 round-off), not the other's.
    assert sft["per_token"]["error_vs_per_token"] < 1e-5
    assert sft["per_sample"]["error_vs_per_sample"] < 1e-5
    assert sft["per_token"]["error_vs_per_sample"] > 1e-2 and sft["per_sample"]["error_vs_per_token"] > 1e-2
    # Megatron-LM reports the global batch's token mean in both modes.
    for mode in ("per_token", "per_sample"):
        assert sft[mode]["reported_lm_loss"] == pytest.approx(sft["objectives"]["per_token"], rel=1e-5)
    # Equal token counts: one objective, both modes give its gradients.
    assert ones["objectives"]["per_token"] == pytest.approx(ones["objectives"]["per_sample"], rel=1e-6)
    for mode in ("per_token", "per_sample"):
        assert ones[mode]["error_vs_per_token"] < 1e-5


def test_decoupled_learning_rate(probe):
    for tying, phases in probe["decoupled"].items():
        for phase, (decoupled, default) in {"warmup_end": (0.01, 0.002), "decay_end": (0.001, 0.0002)}.items():
            lrs = phases[phase]
            special = {n for n in lrs if n in EMBEDDING_AND_OUTPUT}
            assert special == (EMBEDDING_AND_OUTPUT if tying == "untied" else {"embedding.word_embeddings.weight"})
            for name, lr in lrs.items():
                assert lr == pytest.approx(decoupled if name in special else default), (tying, phase, name)


def test_layernorm_1p(probe):
    ln = probe["layernorm_1p"]
    assert {"decoder.final_layernorm.weight", "decoder.layers.0.self_attention.q_layernorm.weight",
            "decoder.layers.3.pre_mlp_layernorm.weight"} <= set(ln["norms"])
    assert ln["init_max_abs"] == 0.0
    assert ln["loss_max_diff"] == 0.0 and abs(ln["loss_1p"] - ln["loss_plain"]) == 0.0
    assert "model.norm.weight" in ln["export_norm_names_float32"]
    assert ln["export_max_diff_float32"] == 0.0
    # From BF16 weights: stored values in BF16, + 1 in fp32; against 1 + r rounded to BF16.
    assert ln["export_max_diff_bfloat16"] < 2 ** -7
    assert ln["import_max_diff"] < 2 ** -8


def test_grad_reduce_in_bf16(probe):
    g = probe["bf16_grad_reduce"]
    assert g["fp32"]["buffer_dtypes"] == g["fp32"]["main_grad_dtypes"] == ["torch.float32"]
    assert g["bf16"]["buffer_dtypes"] == g["bf16"]["main_grad_dtypes"] == ["torch.bfloat16"]
    assert not g["bf16"]["skipped"] and g["bf16"]["grad_norm"] > 0


FP16 = ["--config", TINY, "--mock-data", "--fp16", "--initial-loss-scale", 2 ** 14, "--lr-warmup-iters", 0,
        "--lr-decay-style", "constant", "--eval-interval", 0, "--log-interval", 5, "--train-iters", 10,
        "--global-batch-size", 4, "--num-workers", 0]


def test_fp16_loss_scaling_skips_overflows_and_resumes(tmp_path):
    log, ckpt = tmp_path / "run.jsonl", tmp_path / "ckpt"
    run_torchrun(1, "pretrain_ixt.py", [*FP16, "--save", ckpt, "--save-interval", 5, "--log-file", log])
    rows, _ = read_metrics(log)
    print([(r["iteration"], r["skipped"], r["loss scale"], r["lm loss"]) for r in rows])
    scales = [r["loss scale"] for r in rows]
    skipped = [r for r in rows if r["skipped"]]
    assert rows[0]["skipped"] and scales[0] == 2 ** 14  # hysteresis 2: the first overflow keeps the scale
    assert rows[1]["skipped"] and scales[1] == 2 ** 13  # then each one halves it
    assert all(b <= a for a, b in zip(scales, scales[1:]))
    trained = [r["lm loss"] for r in rows if not r["skipped"]]
    assert len(skipped) >= 2 and len(trained) >= 5 and trained[-1] < trained[0] - 0.3, trained
    # Resume from iteration 5: the grad scaler's state comes back with the optimizer's.
    resumed_log = tmp_path / "resumed.jsonl"
    resumed = shutil.copytree(ckpt, tmp_path / "resume", ignore=shutil.ignore_patterns("iter_0000010"))
    (resumed / "latest_checkpointed_iteration.txt").write_text("5\n")
    run_torchrun(1, "pretrain_ixt.py", [*FP16, "--load", resumed, "--log-file", resumed_log])
    again, _ = read_metrics(resumed_log)
    assert [r["iteration"] for r in again] == list(range(6, 11))
    for a, b in zip(rows[5:], again):
        assert (a["loss scale"], a["skipped"]) == (b["loss scale"], b["skipped"])
        assert a["lm loss"] == pytest.approx(b["lm loss"], rel=1e-6)


@pytest.mark.parametrize("flags, message", [
    (["--fp16", "--bf16"], "--fp16 and --bf16 exclude each other"),
    (["--grad-reduce-in-bf16"], "--grad-reduce-in-bf16 reduces BF16 gradients: it needs --bf16"),
    (["--decoupled-min-lr", "1e-5"], "--decoupled-min-lr needs --decoupled-lr"),
    (["--decoupled-lr", "1e-5", "--min-lr", "1e-4"], "--decoupled-lr (1e-05) must be at least its final"),
    (["--fp16", "--min-loss-scale", "8", "--initial-loss-scale", "4"], "--min-loss-scale (8) must be positive"),
])
def test_refusals(flags, message):
    cfg, _ = parse_config(["--config", str(TINY), "--mock-data", *flags])
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(cfg, 1, cuda=False)


def test_cross_entropy_fusion_in_the_kernel_plan():
    cfg, _ = parse_config(["--config", str(TINY), "--mock-data", "--cross-entropy-loss-fusion"])
    h100 = DeviceFacts(cuda=True, device_name="H100", compute_capability=(9, 0), te_version="2.8.0")
    assert plan_kernels(cfg, h100).cross_entropy_loss_fusion
    # megatron-core's jit-fused kernel is a CUDA fusion: off on CPU (the unfused loss is the same).
    assert not plan_kernels(cfg, DeviceFacts(cuda=False)).cross_entropy_loss_fusion
    cfg.model.cross_entropy_fusion_impl = "te"
    assert plan_kernels(cfg, h100).cross_entropy_loss_fusion
    with pytest.raises(ConfigError, match="--cross-entropy-fusion-impl te needs Transformer Engine"):
        plan_kernels(cfg, DeviceFacts(cuda=True, device_name="H100", compute_capability=(9, 0)))
