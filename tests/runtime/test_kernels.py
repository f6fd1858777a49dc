"""Every CUDA-only decision, asserted on CPU for simulated devices.

``plan_kernels`` is a pure function of the configuration and the device facts, so these
tests run the same decisions a GPU run takes (H100 with and without Transformer Engine or
apex, an A100, a Blackwell part, a CPU) without a GPU.
"""

from __future__ import annotations

import pytest

from megatron_ixt.config import ConfigError
from megatron_ixt.config.cli import parse_config
from megatron_ixt.model.flops import PEAK_TFLOPS, device_peak_tflops
from megatron_ixt.runtime.kernels import DeviceFacts, plan_kernels

from tests.launch import TINY

CPU = DeviceFacts(cuda=False, flex_attention=True)
H100_TE = DeviceFacts(cuda=True, device_name="NVIDIA H100 80GB HBM3", compute_capability=(9, 0),
                      te_version="2.8.0", apex=True, flex_attention=True)
H100_TE_NO_APEX = DeviceFacts(cuda=True, device_name="NVIDIA H100 80GB HBM3", compute_capability=(9, 0),
                              te_version="2.8.0", apex=False, flex_attention=True)
H100_BARE = DeviceFacts(cuda=True, device_name="NVIDIA H100 80GB HBM3", compute_capability=(9, 0),
                        flex_attention=True)
H100_APEX = DeviceFacts(cuda=True, device_name="NVIDIA H100 80GB HBM3", compute_capability=(9, 0), apex=True,
                        flex_attention=True)
H100_OLD_TE = DeviceFacts(cuda=True, device_name="NVIDIA H100 80GB HBM3", compute_capability=(9, 0),
                          te_version="1.6.0", flex_attention=True)
A100_TE = DeviceFacts(cuda=True, device_name="NVIDIA A100-SXM4-80GB", compute_capability=(8, 0),
                      te_version="2.8.0", apex=True, flex_attention=True)
B200_TE = DeviceFacts(cuda=True, device_name="NVIDIA B200", compute_capability=(10, 0), te_version="2.8.0",
                      flex_attention=True)


def cfg(*flags):
    config, _ = parse_config(["--config", str(TINY), "--mock-data", *map(str, flags)])
    if "--transformer-impl" not in flags:
        config.model.transformer_impl = None  # let the plan choose, as on a user's machine
    return config


def test_cpu_plan():
    plan = plan_kernels(cfg(), CPU)
    assert (plan.device, plan.backend, plan.cpu_compat, plan.transformer_impl) == ("cpu", "gloo", True, "local")
    assert (plan.attention, plan.document_masks) == ("sdpa", "none")
    assert not any([plan.masked_softmax_fusion, plan.bias_activation_fusion, plan.bias_dropout_fusion,
                    plan.apply_rope_fusion, plan.gradient_accumulation_fusion, plan.deallocate_pipeline_outputs])
    assert plan.env == {} and plan.fp8_recipe is None
    # Document masks on CPU: SDPA with a boolean mask built from document ids (no CPU FlexAttention backward).
    assert (plan_kernels(cfg("--reset-attention-mask"), CPU).attention,
            plan_kernels(cfg("--reset-attention-mask"), CPU).document_masks) == ("sdpa", "ids")
    # megatron-core's unfused attention gets a dense mask.
    plan = plan_kernels(cfg("--reset-attention-mask", "--attention-backend", "local"), CPU)
    assert (plan.attention, plan.document_masks, plan.masked_softmax_fusion) == ("unfused", "dense", False)


def test_h100_with_transformer_engine():
    plan = plan_kernels(cfg("--tensor-model-parallel-size", 2), H100_TE)
    assert (plan.device, plan.backend, plan.cpu_compat, plan.transformer_impl) == ("cuda", "nccl", False,
                                                                                   "transformer_engine")
    assert (plan.attention, plan.te_attention_backend, plan.document_masks) == ("te", "auto", "none")
    assert plan.apply_rope_fusion and plan.gradient_accumulation_fusion and plan.bias_activation_fusion
    assert plan.bias_dropout_fusion
    assert not plan.masked_softmax_fusion  # only megatron-core's unfused attention uses apex's softmax
    assert plan.env == {"CUDA_DEVICE_MAX_CONNECTIONS": "1"}
    # Document masks under TE go through packed sequences (THD), never a mask TE would ignore.
    plan = plan_kernels(cfg("--reset-attention-mask"), H100_TE)
    assert (plan.attention, plan.document_masks) == ("te", "packed")
    assert plan.env == {}  # TP=1
    # Pipeline stages free their sent outputs on CUDA; interleaving aligns parameter gathers.
    plan = plan_kernels(cfg("--pipeline-model-parallel-size", 2, "--num-layers-per-virtual-pipeline-stage", 1,
                            "--use-distributed-optimizer", "--overlap-param-gather"), H100_TE)
    assert plan.deallocate_pipeline_outputs and plan.align_param_gather


def test_h100_without_transformer_engine():
    plan = plan_kernels(cfg("--reset-attention-mask"), H100_BARE)
    assert (plan.transformer_impl, plan.attention, plan.document_masks) == ("local", "flex", "ids")
    assert not plan.apply_rope_fusion and not plan.gradient_accumulation_fusion and not plan.masked_softmax_fusion
    assert plan.bias_activation_fusion and plan.bias_dropout_fusion  # megatron-core's jit fusions need no TE
    # FlexAttention has no dropout, and SDPA's boolean-mask path would fall back to the math
    # kernel ([b, heads, s, s]): refused, naming both flags (CPU keeps SDPA: tests, laptops).
    for flags, source in ((["--reset-attention-mask"], "--reset-attention-mask"), (["--sft"], "--sft")):
        with pytest.raises(ConfigError, match=rf"{source} \(document masks\) with --attention-dropout 0.1 on CUDA"):
            plan_kernels(cfg(*flags, "--attention-dropout", 0.1), H100_BARE)
    plan = plan_kernels(cfg("--reset-attention-mask", "--attention-dropout", 0.1), CPU)
    assert (plan.attention, plan.document_masks) == ("sdpa", "ids")
    # No document masks: flash attention through SDPA, no mask at all.
    assert (plan_kernels(cfg(), H100_BARE).attention, plan_kernels(cfg(), H100_BARE).document_masks) == ("sdpa", "none")
    # The unfused attention with apex: fused softmax, with a padding mask type so the mask is honoured.
    plan = plan_kernels(cfg("--attention-backend", "local", "--reset-attention-mask"), H100_APEX)
    assert (plan.attention, plan.document_masks, plan.masked_softmax_fusion) == ("unfused", "dense", True)
    assert plan.gradient_accumulation_fusion  # apex's fused weight-gradient GEMM
    # ... and without apex the torch softmax (the crash the issue found: the fusion needs apex).
    assert not plan_kernels(cfg("--attention-backend", "local"), H100_BARE).masked_softmax_fusion


def test_te_without_apex_and_a100():
    plan = plan_kernels(cfg(), H100_TE_NO_APEX)
    assert plan.gradient_accumulation_fusion and not plan.masked_softmax_fusion
    plan = plan_kernels(cfg("--reset-attention-mask", "--attention-backend", "torch"), A100_TE)
    assert (plan.transformer_impl, plan.attention, plan.document_masks) == ("transformer_engine", "flex", "ids")
    assert plan.te_attention_backend is None


@pytest.mark.parametrize("flags, facts, message", [
    (["--reset-attention-mask", "--attention-backend", "unfused"], H100_TE,
     "--reset-attention-mask with --attention-backend unfused"),
    (["--reset-attention-mask"], H100_OLD_TE, "packed sequences need Transformer Engine >= 1.7"),
    (["--attention-backend", "flash"], H100_BARE, "--attention-backend flash selects a Transformer Engine kernel"),
    (["--attention-backend", "fused", "--transformer-impl", "local"], H100_TE, "needs --transformer-impl transformer_engine"),
    (["--transformer-impl", "transformer_engine"], CPU, "Transformer Engine is not importable"),
    (["--fp8-format", "hybrid"], H100_BARE, "--fp8-format hybrid needs Transformer Engine"),
    (["--fp8-format", "hybrid", "--transformer-impl", "local"], H100_TE, "--fp8-format needs --transformer-impl transformer_engine"),
    (["--fp8-format", "hybrid", "--fp8-recipe", "mxfp8"], H100_TE, "--fp8-recipe mxfp8 needs compute capability 10.0"),
    (["--fp8-format", "hybrid"], A100_TE, "FP8 needs an Ada, Hopper or Blackwell GPU"),
])
def test_refused_combinations(flags, facts, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan_kernels(cfg(*flags), facts)


def test_fp8_recipes_by_device():
    assert plan_kernels(cfg("--fp8-format", "hybrid", "--fp8-recipe", "delayed"), H100_TE).fp8_recipe == "delayed"
    assert plan_kernels(cfg("--fp8-format", "hybrid", "--fp8-recipe", "blockwise"), H100_TE).fp8_recipe == "blockwise"
    assert plan_kernels(cfg("--fp8-format", "hybrid", "--fp8-recipe", "mxfp8"), B200_TE).fp8_recipe == "mxfp8"


def test_peak_table_matches_exact_device_names():
    config = cfg("--bf16")
    assert device_peak_tflops(config, "NVIDIA H100 80GB HBM3") == 989.0
    assert device_peak_tflops(config, "NVIDIA H100 PCIe") == 756.0  # not the SXM figure
    assert device_peak_tflops(config, "NVIDIA H100 NVL") == 835.0
    assert device_peak_tflops(config, "NVIDIA H200") == 989.0
    assert device_peak_tflops(config, "NVIDIA H100 Something New") is None  # unknown: no MFU, no guess
    assert all(name.startswith("NVIDIA ") for name in PEAK_TFLOPS)


# Who may compute a kernel plan: the entry points, once per run; everything below them is
# handed the plan (training.context.RunContext). Paths relative to the repository.
PLAN_MAKERS = {"plan_kernels", "kernel_plan", "validate_for_this_machine", "detect"}
PLAN_COMPUTED_IN = {
    "pretrain_ixt.py",                        # training's entry point
    "megatron_ixt/evaluation/engine.py",      # init_inference: every inference tool's
    "megatron_ixt/conversion/import_hf.py",   # builds its own config and a one-process model
    "megatron_ixt/runtime/kernels.py",        # where the plan is made
}


def test_the_kernel_plan_is_computed_only_at_the_top():
    import ast

    from tests.launch import REPO

    callers = {}
    for path in [REPO / "pretrain_ixt.py", *sorted((REPO / "megatron_ixt").rglob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
                if name in PLAN_MAKERS:
                    callers.setdefault(str(path.relative_to(REPO)), set()).add(name)
    assert set(callers) <= PLAN_COMPUTED_IN, {p: n for p, n in callers.items() if p not in PLAN_COMPUTED_IN}
