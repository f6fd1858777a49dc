"""Checks that a configuration can run on the given world, before any process group exists.

Every error names the flags involved, so the fix is obvious from one line.
"""

from __future__ import annotations

import importlib.util
import logging

from megatron_ixt.config.cli import ConfigError, leaf_fields
from megatron_ixt.config.batch_schedule import calculator, iterations_for_samples
from megatron_ixt.config.schema import DEFAULT_TRAIN_ITERS, Config

logger = logging.getLogger("megatron_ixt")

TE_INSTALL_HINT = ("install Transformer Engine (pip install --no-build-isolation 'transformer_engine[pytorch]') "
                   "or use an NGC PyTorch container, which ships it")


def data_parallel_size(cfg: Config, world_size: int) -> int:
    p = cfg.parallel
    return world_size // (p.tensor_model_parallel_size * p.pipeline_model_parallel_size * p.context_parallel_size)


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
    """Refuse flags given (on the command line or in --config) that this run would ignore, and
    read what given flags imply."""
    tok = cfg.tokenizer
    if "tokenizer_type" not in given and tok.vocab_file and tok.merge_file:
        # Megatron-LM's GPT-3 scripts name the GPT-2 files and no --tokenizer-type (its older
        # default); the NullTokenizer would silently ignore them.
        logger.info("--vocab-file and --merge-file without --tokenizer-type: GPT2BPETokenizer")
        tok.tokenizer_type = "GPT2BPETokenizer"
    if cfg.data.sft:
        for name, (value, why) in SFT_INERT.items():
            if name in given and getattr(getattr(cfg, leaf_fields()[name][0]), name) == value:
                shown = f"--{name.replace('_', '-')}" + ("" if value is True else f" {value}")
                raise ConfigError(f"{shown} does nothing under --sft: {why}; drop it")


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"


def check_schedule(cfg: Config, dp: int) -> None:
    """Megatron-LM's two kinds of schedule, of which a run uses one: iterations
    (``--train-iters``, default 100, and ``--lr-*-iters``) or samples (``--train-samples``,
    ``--lr-*-samples``, ``--rampup-batch-size``). Fills what Megatron-LM derives:
    ``train_iters`` of a sample-based run (``update_train_iters``), ``lr_decay_iters`` /
    ``lr_decay_samples`` (default: the run's length). A configuration this filled in (a
    checkpoint's) validates again: a ``train_iters`` equal to the derived one is accepted
    here (``check_given`` refuses it given by the user)."""
    t, o = cfg.training, cfg.optimizer
    if t.train_samples is None:
        given = [name for name, value, unset in (
            ("lr_decay_samples", o.lr_decay_samples, None), ("lr_warmup_samples", o.lr_warmup_samples, 0),
            ("lr_wsd_decay_samples", o.lr_wsd_decay_samples, None)) if value != unset]
        if given:
            raise ConfigError(f"{', '.join(map(_flag, given))} count{'s' if len(given) == 1 else ''} samples: use "
                              f"{'it' if len(given) == 1 else 'them'} with --train-samples instead of --train-iters "
                              "(Megatron-LM's rule: one kind of schedule)")
        if t.train_iters is None:
            t.train_iters = DEFAULT_TRAIN_ITERS
        if t.rampup_batch_size:
            # Megatron-LM asserts ramp-up only with --train-samples, yet its own GPT-3 175B example
            # passes it with --train-iters. Its meaning is plain: --train-iters steps, the first
            # ones smaller; the --lr-*-iters flags count steps too (training/setup.py converts
            # them to the samples those steps consume).
            calculator(t, dp)
            _check_interleaved_rampup(cfg, dp)
        if o.lr_decay_iters is None:
            o.lr_decay_iters = max(t.train_iters, 1)
        warmup = int(o.lr_warmup_fraction * o.lr_decay_iters) if o.lr_warmup_fraction is not None else o.lr_warmup_iters
        if warmup >= o.lr_decay_iters:
            raise ConfigError(f"warm-up ({warmup} iterations from --lr-warmup-iters/--lr-warmup-fraction) must be "
                              f"shorter than --lr-decay-iters ({o.lr_decay_iters}; default --train-iters)")
        if o.lr_decay_style == "WSD" and o.lr_wsd_decay_iters is None:
            raise ConfigError("--lr-decay-style WSD needs --lr-wsd-decay-iters")
        return
    if t.train_samples < 1:
        raise ConfigError(f"--train-samples must be >= 1, got {t.train_samples}")
    calculator(t, dp)  # the ramp-up's rules, one line each
    _check_interleaved_rampup(cfg, dp)
    iterations = iterations_for_samples(t)
    given = [name for name, value, unset in (
        ("train_iters", t.train_iters, iterations), ("lr_decay_iters", o.lr_decay_iters, None),
        ("lr_warmup_iters", o.lr_warmup_iters, 0), ("lr_wsd_decay_iters", o.lr_wsd_decay_iters, None))
        if value is not None and value != unset]
    if given:
        raise ConfigError(f"{', '.join(map(_flag, given))} with --train-samples: a run counts its schedule in "
                          "iterations or in samples, not both (Megatron-LM's rule); use --lr-decay-samples, "
                          "--lr-warmup-samples, --lr-wsd-decay-samples")
    if iterations < 1:
        raise ConfigError(f"--train-samples ({t.train_samples}) is less than one global batch "
                          f"({t.global_batch_size}, --global-batch-size)")
    t.train_iters = iterations
    if o.lr_decay_samples is None:
        o.lr_decay_samples = t.train_samples
    warmup = o.lr_warmup_fraction * o.lr_decay_samples if o.lr_warmup_fraction is not None else o.lr_warmup_samples
    if warmup >= o.lr_decay_samples:
        raise ConfigError(f"warm-up ({warmup:g} samples from --lr-warmup-samples/--lr-warmup-fraction) must be "
                          f"shorter than --lr-decay-samples ({o.lr_decay_samples}; default --train-samples)")
    if o.lr_decay_style == "WSD" and o.lr_wsd_decay_samples is None:
        raise ConfigError("--lr-decay-style WSD with --train-samples needs --lr-wsd-decay-samples")


def _check_interleaved_rampup(cfg: Config, dp: int) -> None:
    """The interleaved schedule runs micro-batches in groups of PP: every ramp-up step must too."""
    t = cfg.training
    if t.rampup_batch_size and cfg.parallel.num_layers_per_virtual_pipeline_stage:
        pp = cfg.parallel.pipeline_model_parallel_size
        # megatron-core's interleaved schedule raises mid-run on a micro-batch count that is
        # not a multiple of PP (it runs them in groups of PP); the ramp-up's counts vary.
        start, increment = int(t.rampup_batch_size[0]), int(t.rampup_batch_size[1])
        counts = [b // (t.micro_batch_size * dp) for b in range(start, t.global_batch_size + 1, increment)]
        bad = [n for n in counts if n % pp]
        if bad:
            raise ConfigError(f"--rampup-batch-size with the interleaved schedule (--num-layers-per-virtual-pipeline-"
                              f"stage): a step of {bad[0]} micro-batches is not a multiple of "
                              f"--pipeline-model-parallel-size ({pp}); choose START and INCREMENT so that every "
                              "step's micro-batches per data-parallel rank are a multiple of it")


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


def check_context_parallel(cfg: Config) -> None:
    """Megatron-LM's rules for context parallelism and FP8 parameters (what needs Transformer
    Engine is the kernel plan's check: ``runtime.kernels.plan_kernels``)."""
    m, p = cfg.model, cfg.parallel
    cp = p.context_parallel_size
    if cp > 1:
        if m.seq_length % (2 * cp):
            raise ConfigError(f"--seq-length ({m.seq_length}) must be divisible by 2 x --context-parallel-size ({cp}): "
                              "each CP rank holds two balanced chunks of every sequence")
        if cfg.data.reset_attention_mask or cfg.data.sft:
            # Megatron-LM pads each packed document to a multiple of 2 x CP (cu_seqlens_padded) so
            # that TE's THD attention can split it; this project's packing does not pad them.
            source = "--sft" if cfg.data.sft else "--reset-attention-mask"
            raise ConfigError(f"{source} (document masks) with --context-parallel-size {cp}: packed documents "
                              f"would have to be padded to multiples of 2 x CP ({2 * cp} tokens), which this "
                              "project's packing does not do; use --context-parallel-size 1 or drop " + source)
    if m.fp8_param_gather:
        if m.fp8_format is None:
            raise ConfigError("--fp8-param-gather keeps the weights in FP8: it needs --fp8-format")
        if not cfg.optimizer.use_distributed_optimizer:
            raise ConfigError("--fp8-param-gather needs --use-distributed-optimizer (Megatron-LM's rule: the FP8 "
                              "weights are all-gathered from the optimizer's shards)")


def check_numerics(cfg: Config) -> None:
    """Mixed precision, loss scaling, gradient-reduction dtype and the decoupled learning rate:
    Megatron-LM's rules (and megatron-core's assertions) as one-line errors."""
    m, o = cfg.model, cfg.optimizer
    if m.fp16 and m.bf16:
        raise ConfigError("--fp16 and --bf16 exclude each other: choose one mixed precision")
    if o.grad_reduce_in_bf16 and not m.bf16:
        raise ConfigError("--grad-reduce-in-bf16 reduces BF16 gradients: it needs --bf16")
    if m.fp16:
        if o.loss_scale is not None and o.loss_scale <= 0:
            raise ConfigError(f"--loss-scale must be positive, got {o.loss_scale:g}")
        if o.loss_scale is None and not 0 < o.min_loss_scale <= o.initial_loss_scale:
            raise ConfigError(f"--min-loss-scale ({o.min_loss_scale:g}) must be positive and at most "
                              f"--initial-loss-scale ({o.initial_loss_scale:g})")
        if o.loss_scale_window < 1 or o.hysteresis < 1:
            raise ConfigError("--loss-scale-window and --hysteresis must be >= 1")
    if o.decoupled_min_lr is not None and o.decoupled_lr is None:
        # Megatron-LM ignores it then (megatron-core's parameter groups read it only with a decoupled lr).
        raise ConfigError("--decoupled-min-lr needs --decoupled-lr (the embedding's and output layer's peak)")
    if o.decoupled_lr is not None:
        floor = o.min_lr if o.decoupled_min_lr is None else o.decoupled_min_lr
        if not 0 <= floor <= o.decoupled_lr:
            raise ConfigError(f"--decoupled-lr ({o.decoupled_lr:g}) must be at least its final learning rate "
                              f"({floor:g}, --decoupled-min-lr or else --min-lr), which must be >= 0")


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


def check_tokenizer(cfg: Config) -> None:
    """Megatron-LM's tokenizer rules that need no file. ``--tiktoken-pattern`` with another
    type than TikTokenizer is accepted and ignored: Megatron-LM's Llama 3 example passes it
    with the NullTokenizer of mock data."""
    tk = cfg.tokenizer
    if tk.tokenizer_type != "TikTokenizer":
        return
    if tk.tiktoken_pattern is None:
        raise ConfigError("--tokenizer-type TikTokenizer needs --tiktoken-pattern v1 or v2 (the pre-tokenization "
                          "pattern its vocabulary was made with)")
    if not tk.tokenizer_model:
        raise ConfigError("--tokenizer-type TikTokenizer needs --tokenizer-model VOCAB.json (Megatron-LM's tiktoken "
                          "vocabulary file)")
    specials = tk.tiktoken_special_tokens or ()
    if tk.tiktoken_num_special_tokens < max(len(specials), 3):
        raise ConfigError(f"--tiktoken-num-special-tokens ({tk.tiktoken_num_special_tokens}) is fewer than the "
                          f"special tokens ({max(len(specials), 3)}: --tiktoken-special-tokens, at least "
                          "<unk> <s> </s>)")


def check_operations(cfg: Config) -> None:
    """Megatron-LM's operations flags: profiling, W&B logging, manual garbage collection."""
    lg, t = cfg.logging, cfg.training
    if lg.profile:
        if not 0 <= lg.profile_step_start < lg.profile_step_end:
            raise ConfigError(f"--profile-step-end ({lg.profile_step_end}) must be above --profile-step-start "
                              f"({lg.profile_step_start}), which must be >= 0")
        if lg.use_pytorch_profiler and not lg.tensorboard_dir:
            raise ConfigError("--use-pytorch-profiler writes its trace under --tensorboard-dir: pass "
                              "--tensorboard-dir DIR")
    elif lg.use_pytorch_profiler:
        logger.warning("--use-pytorch-profiler does nothing without --profile")
    if lg.wandb_project:
        if importlib.util.find_spec("wandb") is None:
            raise ConfigError("--wandb-project needs the wandb package: pip install 'megatron_ixt[wandb]'")
        if not lg.wandb_save_dir and not cfg.checkpoint.save:
            raise ConfigError("--wandb-project needs --wandb-save-dir DIR or --save DIR (W&B then writes to "
                              "--save's wandb/)")
    if t.manual_gc_interval < 0:
        raise ConfigError(f"--manual-gc-interval must be >= 0, got {t.manual_gc_interval}")


def validate(cfg: Config, world_size: int, *, cuda: bool) -> None:
    """Raise :class:`ConfigError` on the first problem found; also fills derived defaults
    (``global_batch_size``, ``num_query_groups``, ``train_iters``, ``lr_decay_iters`` or
    ``lr_decay_samples``). What depends on the
    device beyond CUDA-or-not (Transformer Engine, attention kernels, FP8 against the compute
    capability) is checked by ``megatron_ixt.runtime.kernels.plan_kernels``."""
    m, p, t, o = cfg.model, cfg.parallel, cfg.training, cfg.optimizer
    tp, pp = p.tensor_model_parallel_size, p.pipeline_model_parallel_size
    if tp < 1 or pp < 1:
        raise ConfigError("--tensor-model-parallel-size and --pipeline-model-parallel-size must be >= 1")
    check_layout(cfg)  # the model's shapes first: true of every launch
    check_numerics(cfg)
    cp = p.context_parallel_size
    if cp < 1:
        raise ConfigError("--context-parallel-size must be >= 1")
    if world_size % (tp * pp * cp):
        raise ConfigError(f"world size {world_size} is not divisible by --tensor-model-parallel-size ({tp}) "
                          f"x --pipeline-model-parallel-size ({pp})" + (f" x --context-parallel-size ({cp})" if cp > 1 else ""))
    dp = world_size // (tp * pp * cp)
    check_context_parallel(cfg)

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

    check_schedule(cfg, dp)
    if o.override_opt_param_scheduler and o.use_checkpoint_opt_param_scheduler:
        raise ConfigError("--override-opt-param-scheduler and --use-checkpoint-opt-param-scheduler exclude each other: "
                          "choose this run's schedule or the checkpoint's")
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
    check_tokenizer(cfg)
    if cfg.data.mock_data and cfg.tokenizer.tokenizer_type == "NullTokenizer" and cfg.tokenizer.vocab_size is None:
        raise ConfigError("--mock-data with --tokenizer-type NullTokenizer needs --vocab-size")
    if cfg.checkpoint.save_interval is not None and not cfg.checkpoint.save:
        raise ConfigError("--save-interval needs --save DIR")
    check_operations(cfg)
