"""BF16 on CPU, the way a GPU run is driven, and initial weights that do not depend on the
parallel layout.

- BF16: every layout the GPU path uses (TP=2, PP=2, DP=2) at both normalizations trains
  with falling loss through megatron-core's ``Float16Module`` and its mixed-precision
  optimizer (fp32 main weights), so dtype bugs show up here before a GPU sees them. Its first
  loss is within BF16 rounding of the fp32 run from the same weights.
- Initialisation: the same seed gives the same model at TP=2 and PP=2 as in one process, so
  the first-iteration losses agree to fp32 round-off (a different initial model would differ
  by ~1e-3); a different seed gives a different model.
"""

from __future__ import annotations

import pytest

from tests.launch import TINY, read_metrics, run_torchrun

COMMON = ["--config", TINY, "--mock-data", "--lr-warmup-iters", 0, "--eval-interval", 0, "--log-interval", 5]
LAYOUTS = {"tp2": ["--tensor-model-parallel-size", 2], "pp2": ["--pipeline-model-parallel-size", 2], "dp2": []}


def losses(tmp_path, nproc, extra, iters):
    log = tmp_path / "metrics.jsonl"
    run_torchrun(nproc, "pretrain_ixt.py", [*COMMON, "--train-iters", iters, *extra, "--log-file", log])
    rows, _ = read_metrics(log)
    assert not any(r["skipped"] for r in rows), rows
    return [r["lm loss"] for r in rows]


@pytest.fixture(scope="module")
def fp32_first_loss(tmp_path_factory):
    return {norm: losses(tmp_path_factory.mktemp(f"fp32{norm}"), 1, ["--normalization", norm], 1)[0]
            for norm in ("RMSNorm", "LayerNorm")}


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["RMSNorm", "LayerNorm"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_bf16_trains_at_every_layout(tmp_path, layout, norm, fp32_first_loss):
    got = losses(tmp_path, 2, ["--bf16", "--normalization", norm, *LAYOUTS[layout]], 10)
    print(f"bf16 {layout} {norm}: {got[0]:.4f} -> {got[-1]:.4f} (fp32 first loss {fp32_first_loss[norm]:.4f})")
    assert got[-1] < got[0] - 0.5, got
    # Same initial weights, rounded to BF16: the first loss moves by BF16 round-off only.
    assert got[0] == pytest.approx(fp32_first_loss[norm], rel=2e-3)


@pytest.mark.slow
def test_initial_weights_do_not_depend_on_the_layout(tmp_path):
    reference = losses(tmp_path / "ref", 1, [], 1)[0]
    for name, extra in LAYOUTS.items():
        if name == "dp2":
            continue
        first = losses(tmp_path / name, 2, extra, 1)[0]
        print(f"{name}: first loss {first!r} vs single process {reference!r}")
        assert first == pytest.approx(reference, rel=1e-6), name
    other_seed = losses(tmp_path / "seed", 1, ["--seed", 99], 1)[0]
    assert abs(other_seed - reference) > 1e-4
