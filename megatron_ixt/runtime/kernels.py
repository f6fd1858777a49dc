"""Every CUDA-only decision of a run, made in one place.

A GPU run depends on facts about the machine (CUDA or not, the compute capability, the
Transformer Engine version, whether apex's fused kernels exist) and on the configuration.
:func:`plan_kernels` maps both to one :class:`KernelPlan`: which attention runs, how
document masks reach it, which fusions are on, where collective tensors live, which FP8
recipe is allowed and which environment variables the processes need. It is a *pure*
function, so CPU tests call it with simulated devices (an H100 with and without Transformer
Engine or apex, an A100, a CPU) and assert every choice; nothing else in the package makes
any of these decisions.

Document masks (``--reset-attention-mask``), by attention backend:

=====================  ===============================================================
attention              how document boundaries reach the kernel
=====================  ===============================================================
``te``                 packed sequences: ``cu_seqlens`` in megatron-core's
                       ``PackedSeqParams`` (THD, padding-causal), as Megatron-LM packs
                       sequences; TE's ``causal`` mask type would ignore any mask
``flex`` (CUDA)        per-token document ids -> a block-sparse FlexAttention mask
``sdpa`` (CPU)         per-token document ids -> a boolean ``[b, 1, s, s]`` mask for
                       SDPA's CPU kernel, which does not build the scores from it
``sdpa`` (CUDA, with   the same boolean mask for the memory-efficient kernel (FlexAttention
attention dropout)     has no dropout)
``unfused``            megatron-core's ``DotProductAttention``, dense ``[b, 1, s, s]``
                       mask, with a ``padding`` mask type so apex's fused softmax honours it
=====================  ===============================================================

Without document masks the torch attention is ``F.scaled_dot_product_attention(is_causal=True)``
(flash attention on CUDA) and no mask exists anywhere.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Optional

import torch

from megatron_ixt.config.cli import ConfigError
from megatron_ixt.config.validate import TE_INSTALL_HINT

logger = logging.getLogger(__name__)

# Oldest Transformer Engine whose THD attention accepts megatron-core's padding-causal
# packed sequences (megatron-core converts ``causal`` to ``padding_causal`` from 1.7 on).
TE_MIN_VERSION_PACKED = (1, 7)

# FP8 recipes and the oldest compute capability that runs them.
FP8_RECIPE_MIN_CAPABILITY = {
    "delayed": (8, 9),     # Ada / Hopper and newer
    "tensorwise": (8, 9),
    "blockwise": (9, 0),   # Hopper's block-scaled GEMMs
    "mxfp8": (10, 0),      # microscaling needs Blackwell tensor cores
}

# Megatron-LM's --attention-backend choices, plus ``torch`` (this project's torch-native
# core attention). ``local`` is megatron-core's unfused DotProductAttention, as in Megatron-LM.
ATTENTION_BACKENDS = ("auto", "flash", "fused", "unfused", "local", "torch")
_TE_ONLY_BACKENDS = ("flash", "fused", "unfused")


def _version_tuple(version: Optional[str]) -> tuple:
    if not version:
        return ()
    parts = []
    for piece in version.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


@dataclasses.dataclass(frozen=True)
class DeviceFacts:
    """What the machine offers. ``detect()`` reads the real one; tests build simulated ones."""

    cuda: bool
    device_name: Optional[str] = None
    compute_capability: Optional[tuple] = None
    te_version: Optional[str] = None  # None: Transformer Engine is not importable
    apex: bool = False  # apex's CUDA extensions (fused masked softmax, fused weight-gradient GEMM)
    flex_attention: bool = False  # torch.nn.attention.flex_attention is importable

    @staticmethod
    def detect() -> "DeviceFacts":
        return _detect()


@functools.lru_cache(maxsize=1)
def _detect() -> DeviceFacts:
    cuda = torch.cuda.is_available()
    te_version = None
    try:
        import transformer_engine
        import transformer_engine.pytorch  # noqa: F401

        te_version = getattr(transformer_engine, "__version__", "0")
    except Exception:  # ImportError, or a broken install (missing CUDA libraries)
        pass
    apex = False
    if cuda:
        try:
            import fused_weight_gradient_mlp_cuda  # noqa: F401
            import scaled_masked_softmax_cuda  # noqa: F401

            apex = True
        except ImportError:
            pass
    try:
        from torch.nn.attention import flex_attention  # noqa: F401

        flex = True
    except ImportError:
        flex = False
    return DeviceFacts(
        cuda=cuda,
        device_name=torch.cuda.get_device_name() if cuda else None,
        compute_capability=tuple(torch.cuda.get_device_capability()) if cuda else None,
        te_version=te_version,
        apex=apex,
        flex_attention=flex,
    )


@dataclasses.dataclass(frozen=True)
class KernelPlan:
    device: str                        # "cuda" | "cpu": tensors and collective buffers live here
    backend: str                       # process-group backend: "nccl" | "gloo"
    cpu_compat: bool                   # megatron-core needs the CPU compatibility layer
    transformer_impl: str              # "transformer_engine" | "local"
    attention: str                     # "te" | "sdpa" | "flex" | "unfused"
    te_attention_backend: Optional[str]  # megatron-core AttnBackend name for TE attention
    document_masks: str                # "none" | "packed" | "ids" | "dense"
    masked_softmax_fusion: bool
    bias_activation_fusion: bool
    bias_dropout_fusion: bool
    apply_rope_fusion: bool
    gradient_accumulation_fusion: bool
    deallocate_pipeline_outputs: bool
    align_param_gather: bool
    fp8_recipe: Optional[str]
    env: dict                          # environment variables each process needs before CUDA starts
    cross_entropy_loss_fusion: bool = False  # --cross-entropy-loss-fusion, where it runs

    def describe(self) -> str:
        fusions = [n for n in ("masked_softmax_fusion", "bias_activation_fusion", "bias_dropout_fusion",
                               "apply_rope_fusion", "gradient_accumulation_fusion", "cross_entropy_loss_fusion")
                   if getattr(self, n)]
        return (f"{self.device}/{self.backend}, {self.transformer_impl} layers, attention {self.attention}"
                f" (document masks: {self.document_masks}), fusions: {', '.join(fusions) or 'none'}"
                + (f", fp8 {self.fp8_recipe}" if self.fp8_recipe else ""))


def plan_kernels(cfg, facts: DeviceFacts) -> KernelPlan:
    """The kernel plan of ``cfg`` on ``facts``; raises :class:`ConfigError` (naming the flags)
    for a combination that cannot run or cannot honour ``--reset-attention-mask``."""
    m, p, d = cfg.model, cfg.parallel, cfg.data
    te_installed = facts.te_version is not None
    backend = p.distributed_backend or ("nccl" if facts.cuda else "gloo")

    impl = m.transformer_impl or ("transformer_engine" if te_installed and facts.cuda else "local")
    if impl == "transformer_engine":
        if not te_installed:
            raise ConfigError(f"--transformer-impl transformer_engine: Transformer Engine is not importable; "
                              f"{TE_INSTALL_HINT}, or pass --transformer-impl local")
        if not facts.cuda:
            raise ConfigError("--transformer-impl transformer_engine needs a CUDA GPU; pass --transformer-impl local on CPU")

    choice = m.attention_backend
    if impl == "local" and choice in _TE_ONLY_BACKENDS:
        raise ConfigError(f"--attention-backend {choice} selects a Transformer Engine kernel and needs "
                          "--transformer-impl transformer_engine; without it use --attention-backend torch or local")
    if choice in ("auto", *_TE_ONLY_BACKENDS):
        attention = "te" if impl == "transformer_engine" else "sdpa"
    elif choice == "torch":
        attention = "sdpa"
    else:  # local
        attention = "unfused"

    documents = d.reset_attention_mask or d.sft  # SFT: no attention between packed conversations
    document_masks = "none"
    if documents:
        if attention == "te":
            if _version_tuple(facts.te_version) < TE_MIN_VERSION_PACKED:
                raise ConfigError(
                    f"--reset-attention-mask with Transformer Engine {facts.te_version} attention: packed sequences "
                    f"need Transformer Engine >= {'.'.join(map(str, TE_MIN_VERSION_PACKED))}; upgrade it, or pass "
                    "--attention-backend torch")
            if choice == "unfused":
                raise ConfigError("--reset-attention-mask with --attention-backend unfused: Transformer Engine's unfused "
                                  "attention has no packed (THD) sequences, so document masks would be ignored; "
                                  "use --attention-backend auto, flash, fused or torch")
            document_masks = "packed"
        elif attention == "sdpa":
            if facts.cuda and m.attention_dropout > 0.0:
                # FlexAttention has no dropout, and SDPA with a boolean mask would fall back to
                # its math kernel (flash takes no mask, the memory-efficient kernel no GQA),
                # which materialises [b, heads, s, s]: refused rather than slow and huge.
                source = "--sft" if d.sft and not d.reset_attention_mask else "--reset-attention-mask"
                raise ConfigError(
                    f"{source} (document masks) with --attention-dropout {m.attention_dropout:g} on CUDA: the torch "
                    "attention has no fused kernel for both (FlexAttention has no dropout; SDPA would materialise "
                    "[b, heads, s, s]); use --attention-dropout 0, or Transformer Engine's attention")
            if facts.cuda and facts.flex_attention:
                attention, document_masks = "flex", "ids"
            else:
                document_masks = "ids"
        else:
            document_masks = "dense"

    if p.context_parallel_size > 1 and attention != "te":
        # megatron-core splits attention across CP ranks only inside TE's DotProductAttention
        # (ring/all-gather exchange of keys and values); the local spec's attention has no CP.
        raise ConfigError(f"--context-parallel-size {p.context_parallel_size} needs Transformer Engine's attention "
                          "(megatron-core's context parallelism lives in it): "
                          + (f"{TE_INSTALL_HINT}" if not te_installed else
                             "use --transformer-impl transformer_engine and --attention-backend auto, flash or fused"))

    if m.cross_entropy_loss_fusion and m.cross_entropy_fusion_impl == "te" and not te_installed:
        raise ConfigError(f"--cross-entropy-fusion-impl te needs Transformer Engine: {TE_INSTALL_HINT}, or use "
                          "--cross-entropy-fusion-impl native")

    fp8_recipe = None
    if m.fp8_format is not None:
        if not te_installed:
            raise ConfigError(f"--fp8-format {m.fp8_format} needs Transformer Engine: {TE_INSTALL_HINT}")
        if impl != "transformer_engine":
            raise ConfigError("--fp8-format needs --transformer-impl transformer_engine")
        need = FP8_RECIPE_MIN_CAPABILITY[m.fp8_recipe]
        cc = facts.compute_capability or (0, 0)
        if tuple(cc) < need:
            raise ConfigError(
                f"--fp8-recipe {m.fp8_recipe} needs compute capability {need[0]}.{need[1]} or newer; "
                f"{facts.device_name or 'this device'} has {cc[0]}.{cc[1]}"
                + ("; use --fp8-recipe delayed or tensorwise on Hopper" if tuple(cc) >= (8, 9) else
                   "; FP8 needs an Ada, Hopper or Blackwell GPU: drop --fp8-format"))
        fp8_recipe = m.fp8_recipe

    cuda, te = facts.cuda, impl == "transformer_engine"
    env = {}
    if cuda and p.tensor_model_parallel_size > 1:
        # Megatron-LM's requirement: one hardware queue, so that the TP communication kernel is
        # scheduled before the GEMM that overlaps with it.
        env["CUDA_DEVICE_MAX_CONNECTIONS"] = "1"
    vpp = p.num_layers_per_virtual_pipeline_stage is not None
    return KernelPlan(
        device="cuda" if cuda else "cpu",
        backend=backend,
        cpu_compat=not cuda,
        transformer_impl=impl,
        attention=attention,
        te_attention_backend=choice if attention == "te" else None,  # "te" only comes from auto/flash/fused/unfused
        document_masks=document_masks,
        # apex's kernel; megatron-core's torch softmax is used otherwise (same math).
        masked_softmax_fusion=cuda and facts.apex and attention == "unfused",
        # megatron-core's jit-fused bias+SwiGLU/GeLU and bias+dropout+add: CUDA only.
        bias_activation_fusion=cuda and (m.swiglu or not m.disable_bias_linear),
        bias_dropout_fusion=cuda,
        # Fused RoPE comes from Transformer Engine.
        apply_rope_fusion=cuda and te and m.position_embedding_type == "rope",
        # Weight-gradient GEMMs accumulate straight into the fp32 main_grad: TE linears do it
        # themselves; megatron-core's local linears need apex's fused_weight_gradient_mlp_cuda.
        gradient_accumulation_fusion=cuda and (te or facts.apex),
        # Free each stage's output activations once sent (Megatron-LM always does). CUDA only:
        # NCCL's stream ordering makes it safe, but gloo's asynchronous sends (the interleaved
        # schedule) still read the buffer after it is freed (NaNs measured on CPU).
        deallocate_pipeline_outputs=cuda and p.pipeline_model_parallel_size > 1,
        align_param_gather=cfg.optimizer.overlap_param_gather and vpp,
        fp8_recipe=fp8_recipe,
        env=env,
        # megatron-core's fused cross entropy: jit-fused (torch.compile, with BF16 gradients)
        # or Transformer Engine's, CUDA kernels both; on CPU the unfused vocab-parallel cross
        # entropy computes the same loss.
        cross_entropy_loss_fusion=cuda and m.cross_entropy_loss_fusion,
    )


def validate_for_this_machine(cfg, world_size: int, facts: Optional[DeviceFacts] = None) -> KernelPlan:
    """The entry points' check, run once at the top of a run (``pretrain_ixt.py``,
    ``evaluation.engine.init_inference``): the configuration on ``world_size`` processes, then
    its kernel plan on this machine (both raise :class:`ConfigError`). The last edit of
    ``cfg``: it fills ``transformer_impl``, so the resolved choice is what checkpoints record.
    The plan is then handed down (``training.context.RunContext``), never recomputed.
    ``facts``: another machine's (a dry run checks the job's target, ``training.dry_run``)."""
    from megatron_ixt.config.validate import validate

    facts = facts or DeviceFacts.detect()
    validate(cfg, world_size, cuda=facts.cuda)
    plan = plan_kernels(cfg, facts)
    cfg.model.transformer_impl = plan.transformer_impl
    return plan


def kernel_plan(cfg) -> KernelPlan:
    """The plan of an already validated ``cfg`` on this machine, for a tool that builds its
    own configuration (``conversion.import_hf``); entry points call :func:`validate_for_this_machine`."""
    return plan_kernels(cfg, DeviceFacts.detect())


def apply_environment(plan: KernelPlan) -> None:
    """Set the plan's environment variables in this process; must run before the first CUDA
    call. A value the user already set differently is kept, with a warning."""
    for name, value in plan.env.items():
        current = os.environ.get(name)
        if current is None:
            os.environ[name] = value
        elif current != value:
            logger.warning("%s=%s is set; Megatron-LM's setting for this layout is %s", name, current, value)


def current_device() -> torch.device:
    """Where this process's tensors and collective buffers live (NCCL needs CUDA tensors)."""
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
