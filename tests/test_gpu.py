"""The GPU acceptance tests (``make gpu-check`` runs them with the 1b benchmark). Marked
``gpu``: skipped without CUDA. Each one exercises a decision that only a GPU run takes.

- BF16 with the torch attention at both normalizations, with document masks (FlexAttention)
  and without (flash attention through SDPA), on NCCL without the CPU compatibility layer.
- ``--exit-duration-in-mins``: the elapsed-time all-reduce runs on a CUDA tensor (NCCL).
- Save, then an exact resume on CUDA.
- CPU against GPU: the same fp32 model from one checkpoint, with document masks, trains to
  the same losses (the CPU run uses SDPA with a boolean mask, the GPU run FlexAttention).
- Megatron-LM's flags that only a GPU runs: ``--fp16`` with megatron-core's grad scaler on
  CUDA tensors (no compatibility layer), ``--fp8-param-gather`` (Transformer Engine, FP8
  GPU) and ``--context-parallel-size 2`` against CP 1 (Transformer Engine, two GPUs); the
  last two are skipped, with the reason, where the machine lacks what they need.
- FlexAttention at the shapes IXT trains: s=2048, head_dim 128, GQA 16/4, eight documents per
  sample (full, partial and skipped blocks), against SDPA with the boolean mask, in bf16 and
  fp32, outputs and gradients; and one compilation for micro-batches with other boundaries.
"""

from __future__ import annotations

import pytest

import torch

from tests.launch import TINY, read_metrics, run_torchrun
from tests.model.test_attention import DOCUMENT_LENGTHS, document_ids_of, flex_against_sdpa

pytestmark = pytest.mark.gpu

BASE = ["--config", TINY, "--mock-data", "--eval-interval", 0, "--lr-warmup-iters", 0, "--log-interval", 5]
DOCUMENTS = ["--reset-attention-mask", "--reset-position-ids"]


def train(tmp_path, args, env=None, nproc=1):
    log = tmp_path / "m.jsonl"
    proc = run_torchrun(nproc, "pretrain_ixt.py", [*BASE, *args, "--log-file", log], env=env)
    rows, _ = read_metrics(log)
    return proc, rows


@pytest.mark.parametrize("norm", ["RMSNorm", "LayerNorm"])
@pytest.mark.parametrize("documents", [False, True], ids=["causal", "documents"])
def test_bf16_torch_attention(tmp_path, norm, documents):
    proc, rows = train(tmp_path, ["--train-iters", 30, "--bf16", "--normalization", norm, "--attention-backend",
                                  "torch", *(DOCUMENTS if documents else [])])
    assert rows[-1]["lm loss"] < rows[0]["lm loss"] - 0.5 and not any(r["skipped"] for r in rows)
    assert "cuda/nccl" in proc.stdout + proc.stderr
    assert ("attention flex (document masks: ids)" if documents else "attention sdpa (document masks: none)") in (
        proc.stdout + proc.stderr)
    assert "compatibility layer active" not in proc.stdout + proc.stderr


def test_exit_duration_on_cuda(tmp_path):
    ckpt = tmp_path / "ckpt"
    proc, rows = train(tmp_path, ["--train-iters", 100000, "--exit-duration-in-mins", 0.1, "--save", ckpt])
    assert 0 < len(rows) < 100000
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == str(len(rows))


def test_save_and_exact_resume_on_cuda(tmp_path):
    straight = train(tmp_path / "a", ["--train-iters", 8, "--bf16"])[1]
    ckpt = tmp_path / "ckpt"
    train(tmp_path / "b", ["--train-iters", 8, "--bf16", "--save", ckpt, "--exit-interval", 4])
    resumed = train(tmp_path / "c", ["--train-iters", 8, "--bf16", "--load", ckpt, "--save", ckpt])[1]
    assert [r["iteration"] for r in resumed] == [5, 6, 7, 8]
    # Same kernels, same order: equal up to the nondeterminism of attention's backward.
    assert [r["lm loss"] for r in resumed] == pytest.approx([r["lm loss"] for r in straight[4:]], rel=1e-4)


def test_cpu_and_gpu_train_the_same_fp32_model_with_document_masks(tmp_path):
    init = tmp_path / "init"
    train(tmp_path / "i", ["--train-iters", 0, "--save", init])
    common = ["--train-iters", 8, "--load", init, "--finetune", *DOCUMENTS]
    gpu = train(tmp_path / "gpu", common)[1]
    cpu = train(tmp_path / "cpu", common, env={"CUDA_VISIBLE_DEVICES": ""})[1]
    g, c = [r["lm loss"] for r in gpu], [r["lm loss"] for r in cpu]
    print("GPU", g, "\nCPU", c)
    # fp32 on both (TF32 is off for matmuls by default); different kernels sum in different
    # orders (~1e-6 per step), amplified over 8 Adam steps.
    assert g == pytest.approx(c, rel=2e-4)


def test_fp16_with_dynamic_loss_scaling_on_cuda(tmp_path):
    proc, rows = train(tmp_path, ["--train-iters", 30, "--fp16", "--attention-backend", "torch"])
    # The first steps overflow at the initial scale 2^32 and are skipped while it halves.
    assert rows[0]["skipped"] and not rows[-1]["skipped"], rows
    assert rows[-1]["lm loss"] < min(r["lm loss"] for r in rows[:5]) - 0.3
    assert "compatibility layer active" not in proc.stdout + proc.stderr


def _needs_transformer_engine(gpus: int = 1):
    pytest.importorskip("transformer_engine.pytorch", reason="Transformer Engine is not installed")
    if torch.cuda.device_count() < gpus:
        pytest.skip(f"needs {gpus} GPUs, this machine has {torch.cuda.device_count()}")


def test_fp8_param_gather(tmp_path):
    _needs_transformer_engine()
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 needs compute capability 8.9 or newer")
    fp8 = ["--train-iters", 20, "--bf16", "--transformer-impl", "transformer_engine", "--fp8-format", "hybrid",
           "--use-distributed-optimizer"]
    plain = train(tmp_path / "a", fp8)[1]
    proc, gathered = train(tmp_path / "b", [*fp8, "--fp8-param-gather"])
    assert proc.returncode == 0 and gathered[-1]["lm loss"] < gathered[0]["lm loss"] - 0.3
    # The same FP8 GEMMs on the same weights: the FP8 copy kept between steps changes rounding only.
    assert gathered[-1]["lm loss"] == pytest.approx(plain[-1]["lm loss"], rel=5e-2)


def test_context_parallel_matches_one_rank(tmp_path):
    _needs_transformer_engine(gpus=2)
    te = ["--train-iters", 10, "--bf16", "--transformer-impl", "transformer_engine", "--global-batch-size", 4]
    one = train(tmp_path / "a", te, nproc=1)[1]
    proc, two = train(tmp_path / "b", [*te, "--context-parallel-size", 2], nproc=2)
    assert proc.returncode == 0 and "CP 2" in proc.stdout + proc.stderr
    # Each CP rank holds two balanced chunks of every sequence; TE's attention exchanges keys
    # and values: the same loss up to bf16 rounding of the split attention.
    assert [r["lm loss"] for r in two] == pytest.approx([r["lm loss"] for r in one], rel=2e-2)


# bf16 rounds each of q, k, v, p and the output to 8 bits of mantissa (~4e-3 relative); the
# reference is fp32 SDPA on the same bf16 inputs. fp32: TF32 is off, sums differ in order only.
TOLERANCE = {torch.bfloat16: 3e-2, torch.float32: 2e-4}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_flex_attention_against_sdpa_at_2048(dtype):
    result = flex_against_sdpa("cuda", dtype)
    print(f"{dtype}: max |flex - sdpa| output {result['output']:.3g}, gradients {result['grads']:.3g}, "
          f"blocks {result['blocks']}")
    assert result["output"] < TOLERANCE[dtype] and result["grads"] < 4 * TOLERANCE[dtype]
    blocks = result["blocks"]
    assert blocks["full"] > 0 and blocks["partial"] > 0 and blocks["skipped"] > 0


def test_flex_attention_compiles_once_for_any_document_boundaries():
    """Micro-batches with other document boundaries (same shapes) reuse the compiled kernel and
    the compiled block-mask builder: Dynamo compiles nothing after the first."""
    from torch._dynamo.utils import counters

    from megatron_ixt.model.attention import _block_mask, _flex_attention_for

    flex = _flex_attention_for(torch.device("cuda"))
    q = torch.randn(2, 16, 2048, 128, device="cuda", dtype=torch.bfloat16)
    k = v = torch.randn(2, 4, 2048, 128, device="cuda", dtype=torch.bfloat16)
    compiled = []
    for shift in range(4):
        lengths = DOCUMENT_LENGTHS[shift:] + DOCUMENT_LENGTHS[:shift]
        ids = document_ids_of(lengths, 2048, device="cuda")
        flex(q, k, v, block_mask=_block_mask(ids), enable_gqa=True)
        torch.cuda.synchronize()
        compiled.append(counters["stats"]["unique_graphs"])
    print(f"Dynamo graphs after each micro-batch: {compiled}")
    assert compiled[0] >= 1 and compiled[1:] == [compiled[0]] * 3
