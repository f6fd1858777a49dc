"""Checks that a configuration can run on the given world, before any process group exists.

Every error names the flags involved, so the fix is obvious from one line.
"""

from __future__ import annotations

import logging

from megatron_ixt.config.cli import ConfigError, leaf_fields
from megatron_ixt.config.schema import Config

logger = logging.getLogger("megatron_ixt")

TE_INSTALL_HINT = ("install Transformer Engine (pip install --no-build-isolation 'transformer_engine[pytorch]') "
                   "or use an NGC PyTorch container, which ships it")


def data_parallel_size(cfg: Config, world_size: int) -> int:
    return world_size // (cfg.parallel.tensor_model_parallel_size * cfg.parallel.pipeline_model_parallel_size)


def check_layout(cfg: Config) -> None:
    """Refuse a TP x PP (x virtual stages) layout the model's shapes cannot be split into:
    layers across pipeline stages, attention heads, key/value groups and the MLP across
    tensor-parallel ranks. One line naming the sizes (entry points exit 2). The importer
    (``conversion.import_hf``) runs it too, before it writes anything."""
    m, p = cfg.model, cfg.parallel
    tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
    if m.num_layers % pp:
        raise ConfigError(f"--num-layers ({m.num_layers}) is not divisible by --pipeline-model-parallel-size ({pp})")
    if p.num_layers_per_virtual_pipeline_stage is not None:
        v = p.num_layers_per_virtual_pipeline_stage
        if pp < 2:
            raise ConfigError("--num-layers-per-virtual-pipeline-stage needs --pipeline-model-parallel-size >= 2")
        if v < 1 or (m.num_layers // pp) % v:
            raise ConfigError(f"layers per pipeline stage ({m.num_layers // pp} = --num-layers / --pipeline-model-parallel-size) "
                              f"is not divisible by --num-layers-per-virtual-pipeline-stage ({v})")
    if m.num_attention_heads % tp:
        raise ConfigError(f"--num-attention-heads ({m.num_attention_heads}) is not divisible by --tensor-model-parallel-size ({tp})")
    if m.num_query_groups is not None and not m.group_query_attention:
        m.group_query_attention = True
    if m.group_query_attention:
        if m.num_query_groups is None:
            raise ConfigError("--group-query-attention needs --num-query-groups")
        if m.num_attention_heads % m.num_query_groups:
            raise ConfigError(f"--num-attention-heads ({m.num_attention_heads}) is not divisible by --num-query-groups ({m.num_query_groups})")
        if m.num_query_groups % tp:
            raise ConfigError(f"--num-query-groups ({m.num_query_groups}) is not divisible by --tensor-model-parallel-size ({tp})")
    ffn = m.ffn_hidden_size or 4 * m.hidden_size
    if ffn % tp:
        raise ConfigError(f"--ffn-hidden-size ({ffn}) is not divisible by --tensor-model-parallel-size ({tp})")
    if m.hidden_size % m.num_attention_heads and m.kv_channels is None:
        raise ConfigError(f"--hidden-size ({m.hidden_size}) is not divisible by --num-attention-heads ({m.num_attention_heads}); set --kv-channels")
    check_recompute(cfg)
    left = window_left(m.window_size)
    if left is not None and m.seq_length > left + 1:
        raise ConfigError(f"--seq-length {m.seq_length} is past the model's sliding window (--window-size {m.window_size}: "
                          f"{left + 1} tokens): this project's attention has no window, so it is exact only for "
                          f"sequences of at most {left + 1} tokens; use --seq-length {left + 1} or less")


# Flags that would do nothing under --sft, refused when given (a flag whose behaviour SFT has
# anyway, such as --reset-position-ids, is accepted): field -> (value that would act, why not).
SFT_INERT = {
    "eod_mask_loss": (True, "SFT trains the assistant turns only, each with its end (the EOD it appends, or "
                            "the template's end-of-turn token), so that the model learns to stop"),
    "ixt_prefix_loss": ("include", "the feedback is in the system message, which SFT never trains ('exclude' "
                                   "is what happens)"),
}


def check_given(cfg: Config, given: frozenset) -> None:
    """Refuse flags given (on the command line or in --config) that this run would ignore."""
    if cfg.data.sft:
        for name, (value, why) in SFT_INERT.items():
            if name in given and getattr(getattr(cfg, leaf_fields()[name][0]), name) == value:
                shown = f"--{name.replace('_', '-')}" + ("" if value is True else f" {value}")
                raise ConfigError(f"{shown} does nothing under --sft: {why}; drop it")


def check_recompute(cfg: Config) -> None:
    """Megatron-LM's rules for activation recomputation, in one line each, before megatron-core's
    TransformerConfig would raise them."""
    m, pp = cfg.model, cfg.parallel.pipeline_model_parallel_size
    if m.recompute_granularity is None:
        if m.recompute_method is not None or m.recompute_num_layers is not None:
            raise ConfigError("--recompute-method and --recompute-num-layers need --recompute-granularity full")
        return
    if m.recompute_granularity == "selective":
        if m.recompute_method is not None or m.recompute_num_layers is not None:
            raise ConfigError("--recompute-granularity selective recomputes the core attention of every layer: "
                              "drop --recompute-method and --recompute-num-layers")
        return
    if m.recompute_method is None or m.recompute_num_layers is None:
        raise ConfigError("--recompute-granularity full needs --recompute-method uniform|block and "
                          "--recompute-num-layers N")
    per_stage = m.num_layers // pp
    if not 1 <= m.recompute_num_layers <= per_stage:
        raise ConfigError(f"--recompute-num-layers ({m.recompute_num_layers}) must be between 1 and the layers per "
                          f"pipeline stage ({per_stage})")


def window_left(window_size) -> "int | None":
    """The left extent of Megatron-LM's ``--window-size LEFT,RIGHT`` (a query attends to the
    LEFT keys before it and itself); None for no window. Only causal windows (RIGHT 0)."""
    if window_size in (None, ""):
        return None
    parts = [p.strip() for p in str(window_size).strip("()[] ").split(",")]
    try:
        left, right = (int(parts[0]), int(parts[1])) if len(parts) == 2 else (None, None)
    except ValueError:
        left = right = None
    if left is None or left < 0 or right != 0:
        raise ConfigError(f"--window-size {window_size!r}: expected LEFT,0 (a causal window of LEFT + 1 tokens)")
    return left


def validate(cfg: Config, world_size: int, *, cuda: bool) -> None:
    """Raise :class:`ConfigError` on the first problem found; also fills derived defaults
    (``global_batch_size``, ``num_query_groups``, ``lr_decay_iters``). What depends on the
    device beyond CUDA-or-not (Transformer Engine, attention kernels, FP8 against the compute
    capability) is checked by ``megatron_ixt.runtime.kernels.plan_kernels``."""
    m, p, t, o = cfg.model, cfg.parallel, cfg.training, cfg.optimizer
    tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
    if tp < 1 or pp < 1:
        raise ConfigError("--tensor-model-parallel-size and --pipeline-model-parallel-size must be >= 1")
    check_layout(cfg)  # the model's shapes first: true of every launch
    if world_size % (tp * pp):
        raise ConfigError(f"world size {world_size} is not divisible by --tensor-model-parallel-size ({tp}) "
                          f"x --pipeline-model-parallel-size ({pp})")
    dp = world_size // (tp * pp)

    if t.global_batch_size is None:
        t.global_batch_size = t.micro_batch_size * dp
    if t.global_batch_size % (t.micro_batch_size * dp):
        raise ConfigError(f"--global-batch-size ({t.global_batch_size}) is not divisible by --micro-batch-size "
                          f"({t.micro_batch_size}) x data-parallel size ({dp})")
    if p.sequence_parallel and tp == 1:
        # Megatron-LM's rule: sequence parallelism splits TP regions, of which TP=1 has none;
        # a launch script shared across layouts keeps the flag.
        logger.warning("--sequence-parallel with --tensor-model-parallel-size 1: switched off (it shards "
                       "activations across tensor-parallel ranks, and there is one)")
        p.sequence_parallel = False

    backend = p.distributed_backend or ("nccl" if cuda else "gloo")
    if backend == "nccl" and not cuda:
        raise ConfigError("--distributed-backend nccl needs CUDA; use gloo on CPU")
    if o.use_distributed_optimizer and backend != "nccl":
        raise ConfigError("--use-distributed-optimizer needs NCCL (gloo has no reduce-scatter); "
                          "drop the flag on CPU")
    if o.overlap_param_gather and not o.use_distributed_optimizer:
        raise ConfigError("--overlap-param-gather needs --use-distributed-optimizer")

    if o.lr_decay_iters is None:
        o.lr_decay_iters = max(t.train_iters, 1)
    warmup = int(o.lr_warmup_fraction * o.lr_decay_iters) if o.lr_warmup_fraction is not None else o.lr_warmup_iters
    if warmup >= o.lr_decay_iters:
        raise ConfigError(f"warm-up ({warmup} iterations from --lr-warmup-iters/--lr-warmup-fraction) must be shorter "
                          f"than --lr-decay-iters ({o.lr_decay_iters}; default --train-iters)")
    if o.override_opt_param_scheduler and o.use_checkpoint_opt_param_scheduler:
        raise ConfigError("--override-opt-param-scheduler and --use-checkpoint-opt-param-scheduler exclude each other: "
                          "choose this run's schedule or the checkpoint's")
    if o.lr_decay_style == "WSD" and o.lr_wsd_decay_iters is None:
        raise ConfigError("--lr-decay-style WSD needs --lr-wsd-decay-iters")
    if not (0.0 <= cfg.ixt.ixt_feedback_dropout <= 1.0):
        raise ConfigError(f"--ixt-feedback-dropout must be in [0, 1], got {cfg.ixt.ixt_feedback_dropout}")
    if not (0.0 <= cfg.ixt.ixt_cooldown_fraction <= 1.0):
        raise ConfigError(f"--ixt-cooldown-fraction must be in [0, 1], got {cfg.ixt.ixt_cooldown_fraction}")
    if cfg.data.sft:
        if cfg.data.mock_data:
            raise ConfigError("--sft trains on conversations: pass --data-path PREFIX (tools/preprocess_data.py "
                              "--sft), not --mock-data")
        if cfg.ixt.ixt_repeat_prefix or cfg.ixt.ixt_cooldown_fraction:
            raise ConfigError("--ixt-repeat-prefix and --ixt-cooldown-fraction are pretraining options: an SFT "
                              "conversation is never split, and its feedback is in the system message")
    if not cfg.data.mock_data and not cfg.data.data_path:
        raise ConfigError("no training data: pass --data-path PREFIX [PREFIX ...] or --mock-data")
    if cfg.data.mock_data and cfg.tokenizer.tokenizer_type == "NullTokenizer" and cfg.tokenizer.vocab_size is None:
        raise ConfigError("--mock-data with --tokenizer-type NullTokenizer needs --vocab-size")
    if cfg.checkpoint.save_interval is not None and not cfg.checkpoint.save:
        raise ConfigError("--save-interval needs --save DIR")
