"""Numerical parity of parallel layouts: TP, TP+SP, PP, interleaved PP, DP and TP x PP
train the same model on the same batches as a single process, to fp32 round-off; so do
TP+SP, PP and DP with document masks (``--reset-attention-mask``) through the torch attention
(SDPA with a mask built from document ids), and the same with megatron-core's unfused attention.

All runs start from one initial checkpoint written by a single process (megatron-core
initialises TP shards from per-rank RNG streams, so "same seed" alone would not give the
same weights); loading it into each layout is itself a resharding test.

Tolerance: every layout computes the same math in a different summation order (TP splits
GEMM reductions and all-reduces partial sums, DP all-reduces gradients, PP sums micro-batch
gradients per stage). fp32 round-off is ~6e-8 relative per operation; over 8 Adam steps at
lr 3e-3 we measured at most 6.2e-8 relative difference in loss and 2.3e-7 in grad norm
(printed with -s). We allow 1e-6 for losses and 1e-5 for grad norms: 15-40x the measured
round-off, yet far below the step-to-step change of either (~2e-2), so a real bug (a missing
all-reduce, a wrong scaling by DP size or micro-batch count, a mis-routed pipeline message)
cannot pass.
"""

from __future__ import annotations

import pytest

from tests.launch import TINY, read_metrics, run_torchrun

ITERS = 8
COMMON = ["--config", TINY, "--mock-data", "--train-iters", ITERS, "--lr-warmup-iters", 0,
          "--eval-interval", 0, "--log-interval", 4]
# Mock samples hold several documents (megatron-core's mock dataset ends each with EOD).
DOCUMENTS = ["--reset-attention-mask", "--reset-position-ids"]

LAYOUTS = {
    "tp2": (2, ["--tensor-model-parallel-size", 2]),
    "tp2_sp": (2, ["--tensor-model-parallel-size", 2, "--sequence-parallel"]),
    "pp2": (2, ["--pipeline-model-parallel-size", 2]),
    "pp2_interleaved": (2, ["--pipeline-model-parallel-size", 2, "--num-layers-per-virtual-pipeline-stage", 1]),
    "dp2": (2, []),
    "tp2_pp2": (4, ["--tensor-model-parallel-size", 2, "--pipeline-model-parallel-size", 2]),
}
DOCUMENT_LAYOUTS = {
    "tp2_sp": (2, ["--tensor-model-parallel-size", 2, "--sequence-parallel"]),
    "pp2": (2, ["--pipeline-model-parallel-size", 2]),
    "dp2": (2, []),
}


@pytest.fixture(scope="module")
def initial_checkpoint(tmp_path_factory):
    ckpt = tmp_path_factory.mktemp("init")
    run_torchrun(1, "pretrain_ixt.py", ["--config", TINY, "--mock-data", "--train-iters", 0,
                                        "--lr-warmup-iters", 0, "--eval-interval", 0, "--save", ckpt])
    return ckpt


def train(tmp_path, initial_checkpoint, nproc, extra):
    log = tmp_path / "metrics.jsonl"
    run_torchrun(nproc, "pretrain_ixt.py", [*COMMON, *extra, "--load", initial_checkpoint, "--finetune",
                                            "--log-file", log])
    train_rows, _ = read_metrics(log)
    assert [r["iteration"] for r in train_rows] == list(range(1, ITERS + 1))
    return [r["lm loss"] for r in train_rows], [r["grad_norm"] for r in train_rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, initial_checkpoint):
    losses, norms = train(tmp_path_factory.mktemp("ref"), initial_checkpoint, 1, [])
    assert losses[-1] < losses[0] - 0.5, f"the reference run does not learn: {losses}"
    return losses, norms


@pytest.fixture(scope="module")
def document_reference(tmp_path_factory, initial_checkpoint):
    return train(tmp_path_factory.mktemp("docref"), initial_checkpoint, 1, DOCUMENTS)


def assert_parity(layout, losses, norms, reference):
    ref_losses, ref_norms = reference
    worst_loss = max(abs(a - b) / abs(b) for a, b in zip(losses, ref_losses))
    worst_norm = max(abs(a - b) / abs(b) for a, b in zip(norms, ref_norms))
    print(f"{layout}: max relative difference loss {worst_loss:.1e}, grad norm {worst_norm:.1e}")
    assert losses == pytest.approx(ref_losses, rel=1e-6), f"{layout} losses {losses} vs {ref_losses}"
    assert norms == pytest.approx(ref_norms, rel=1e-5), f"{layout} grad norms {norms} vs {ref_norms}"


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_matches_single_process(layout, tmp_path, initial_checkpoint, reference):
    nproc, extra = LAYOUTS[layout]
    assert_parity(layout, *train(tmp_path, initial_checkpoint, nproc, extra), reference)


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(DOCUMENT_LAYOUTS))
def test_document_masks_match_single_process(layout, tmp_path, initial_checkpoint, document_reference, reference):
    nproc, extra = DOCUMENT_LAYOUTS[layout]
    assert_parity(f"{layout} + document masks", *train(tmp_path, initial_checkpoint, nproc, [*DOCUMENTS, *extra]),
                  document_reference)
    # The masks change the result: a run that ignored them would equal the plain reference.
    assert abs(document_reference[0][-1] - reference[0][-1]) > 1e-3


@pytest.mark.slow
def test_unfused_attention_with_document_masks_matches_torch_attention(tmp_path, initial_checkpoint, document_reference):
    """megatron-core's own DotProductAttention (dense mask) trains exactly like the torch attention."""
    losses, norms = train(tmp_path, initial_checkpoint, 2, [*DOCUMENTS, "--attention-backend", "local",
                                                            "--tensor-model-parallel-size", 2])
    assert_parity("unfused tp2 + document masks", losses, norms, document_reference)
