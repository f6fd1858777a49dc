"""The GPU acceptance tests (``make gpu-check`` runs them with the 1b benchmark). Marked
``gpu``: skipped without CUDA. Each one exercises a decision that only a GPU run takes.

- BF16 with the torch attention at both normalizations, with document masks (FlexAttention)
  and without (flash attention through SDPA), on NCCL without the CPU compatibility layer.
- ``--exit-duration-in-mins``: the elapsed-time all-reduce runs on a CUDA tensor (NCCL).
- Save, then an exact resume on CUDA.
- CPU against GPU: the same fp32 model from one checkpoint, with document masks, trains to
  the same losses (the CPU run uses SDPA with a boolean mask, the GPU run FlexAttention).
"""

from __future__ import annotations

import pytest

from tests.launch import TINY, read_metrics, run_torchrun

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
