"""The configuration tree.

One dataclass per concern; every leaf is named after the Megatron-LM argument it mirrors,
so ``--tensor-model-parallel-size`` on the command line, ``tensor_model_parallel_size:``
in a YAML file and ``cfg.parallel.tensor_model_parallel_size`` in code are the same thing.
The command line is generated from these classes (``megatron_ixt.config.cli``); each
field's ``help`` metadata is its documentation there. The other tools take their shared
flags from the same classes (the layout from ``ParallelConfig``, the tokenizer from
``TokenizerConfig``) and their own from dataclasses declared with ``arg`` / ``required``,
all through ``megatron_ixt.config.flags``. This module imports only the standard library.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional


def arg(default: Any, help: str, *, choices: Optional[tuple] = None, nargs: "Optional[str | int]" = None,
        flag: Optional[str] = None, item: type = str) -> Any:
    """A config field: its default, its help text and, optionally, fixed choices, ``nargs``
    for list-valued flags (whose values are of type ``item``), or a flag name that differs
    from the field name."""
    meta = {"help": help, "choices": choices, "nargs": nargs, "flag": flag, "item": item}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def required(help: str, *, choices: Optional[tuple] = None, nargs: Optional[str] = None,
             flag: Optional[str] = None) -> Any:
    """A field without a default: its flag is required (``config.flags``). Declare such
    fields first, or the class ``kw_only``, as dataclasses ask."""
    return arg(dataclasses.MISSING, help, choices=choices, nargs=nargs, flag=flag)


TOKENIZER_TYPES = ("SentencePieceTokenizer", "HuggingFaceTokenizer", "GPT2BPETokenizer", "TikTokenizer", "NullTokenizer")
"""The ``--tokenizer-type`` names (Megatron-LM's) that ``tokenizers.build`` accepts."""
TOKENIZER_FILE_FIELDS = ("tokenizer_type", "tokenizer_model", "vocab_file", "merge_file")
"""The ``TokenizerConfig`` fields a tool reading a checkpoint may override (inference, export);
the vocabulary size and its padding are the checkpoint's, since they fix its weights' shape."""


DOCUMENT_STARTS = ("eod", "bos", "none")


@dataclass
class ModelConfig:
    num_layers: int = arg(4, "Number of transformer layers.")
    hidden_size: int = arg(128, "Transformer hidden size.")
    ffn_hidden_size: Optional[int] = arg(None, "MLP hidden size (default: 4 x hidden size).")
    num_attention_heads: int = arg(4, "Number of attention heads.")
    num_query_groups: Optional[int] = arg(None, "Key/value head groups for grouped-query attention (default: one per head).")
    group_query_attention: bool = arg(False, "Use grouped-query attention with --num-query-groups.")
    kv_channels: Optional[int] = arg(None, "Projection size per head (default: hidden/heads).")
    seq_length: int = arg(256, "Sequence length of a training sample.")
    max_position_embeddings: Optional[int] = arg(None, "Maximum positions for learned absolute embeddings (default: seq-length).")
    position_embedding_type: str = arg("learned_absolute", "Position embedding.", choices=("rope", "learned_absolute"))
    rotary_base: int = arg(10000, "RoPE base.")
    rotary_percent: float = arg(1.0, "Fraction of each head's channels that RoPE rotates.")
    use_rope_scaling: bool = arg(False, "Llama 3.x RoPE frequency scaling (megatron-core's, with low/high frequency "
                                        "factors 1 and 4 and an original context of 8192).")
    rope_scaling_factor: float = arg(8.0, "Factor of --use-rope-scaling (Llama 3.1: 8, Llama 3.2: 32).")
    window_size: Optional[str] = arg(
        None, "Sliding-window attention as Megatron-LM writes it, 'LEFT,RIGHT' (Mistral-7B-v0.1: 4095,0). This "
        "project's attention has no window: a model with one is accepted while --seq-length <= LEFT + 1, where "
        "the window never excludes a key and full causal attention is exactly the windowed one.")
    normalization: str = arg("LayerNorm", "Normalization layer.", choices=("RMSNorm", "LayerNorm"))
    apply_layernorm_1p: bool = arg(False, "Zero-centred gamma: norms store gamma - 1 and compute with gamma + 1, "
                                          "for precision in 16 bits (megatron-core's layernorm_zero_centered_gamma).")
    norm_epsilon: float = arg(1e-5, "Epsilon of the normalization layers.")
    swiglu: bool = arg(False, "SwiGLU MLP (gated SiLU) instead of GeLU.")
    disable_bias_linear: bool = arg(False, "No biases in linear layers.")
    add_qkv_bias: bool = arg(False, "Biases in the query/key/value projection, even with --disable-bias-linear (Qwen2).")
    qk_layernorm: bool = arg(False, "Normalize each head's queries and keys (--normalization) before RoPE (Qwen3).")
    untie_embeddings_and_output_weights: bool = arg(False, "Separate input embedding and output layer weights.")
    init_method_std: float = arg(0.02, "Standard deviation of the weight initialisation.")
    document_start: Optional[str] = arg(
        None, "What precedes a document in the model's context at generation and evaluation: eod (this "
        "project's packed pretraining data, where the previous document's EOD does), bos (the tokenizer's "
        "BOS, as its own encoding adds), none (an imported model whose tokenizer adds nothing). Recorded "
        "in checkpoints; default: the --load checkpoint's, else eod.", choices=DOCUMENT_STARTS)
    recompute_granularity: Optional[str] = arg(
        None, "Activation recomputation: full (each chosen layer's activations are recomputed in the backward "
        "pass from its input) or selective (the core attention only).", choices=("full", "selective"))
    recompute_method: Optional[str] = arg(
        None, "With --recompute-granularity full: uniform (every group of --recompute-num-layers layers "
        "recomputed from its input) or block (the first --recompute-num-layers layers of each stage).",
        choices=("uniform", "block"))
    recompute_num_layers: Optional[int] = arg(None, "Layers per recomputed group (uniform) or recomputed layers "
                                                    "per pipeline stage (block).")
    hidden_dropout: float = arg(0.0, "Dropout after attention and MLP.")
    attention_dropout: float = arg(0.0, "Dropout on attention probabilities.")
    transformer_impl: Optional[str] = arg(None, "Layer implementation (default: transformer_engine when importable, else local).",
                                          choices=("transformer_engine", "local"))
    attention_backend: str = arg(
        "auto", "Attention kernel. auto: Transformer Engine's with TE layers, else the torch attention "
        "(SDPA / FlexAttention); flash, fused, unfused: that Transformer Engine kernel; local: megatron-core's "
        "unfused DotProductAttention (materialises [b, heads, s, s]); torch: the torch attention.",
        choices=("auto", "flash", "fused", "unfused", "local", "torch"))
    bf16: bool = arg(False, "Train in BF16 mixed precision (fp32 master weights).")
    fp16: bool = arg(False, "Train in FP16 mixed precision (fp32 master weights) with loss scaling: dynamic "
                            "unless --loss-scale is given.")
    cross_entropy_loss_fusion: bool = arg(False, "megatron-core's fused vocabulary-parallel cross entropy.")
    cross_entropy_fusion_impl: str = arg("native", "Implementation of --cross-entropy-loss-fusion: megatron-core's "
                                                   "(native) or Transformer Engine's (te).", choices=("native", "te"))
    fp8_format: Optional[str] = arg(None, "FP8 format (needs Transformer Engine).", choices=("e4m3", "hybrid"), flag="fp8-format")
    fp8_recipe: str = arg("delayed", "FP8 scaling recipe.", choices=("delayed", "tensorwise", "mxfp8", "blockwise"))
    fp8_margin: int = arg(0, "Scaling margin for FP8.")
    fp8_amax_history_len: int = arg(1024, "Amax history length for delayed scaling.")
    fp8_amax_compute_algo: str = arg("max", "Amax from history.", choices=("max", "most_recent"))
    fp8_param_gather: bool = arg(False, "Keep the compute copy of the weights in FP8 and all-gather them in FP8 "
                                        "(Transformer Engine; with --use-distributed-optimizer).")


@dataclass
class ParallelConfig:
    tensor_model_parallel_size: int = arg(1, "Tensor-parallel degree (TP).")
    pipeline_model_parallel_size: int = arg(1, "Pipeline-parallel degree (PP).")
    num_layers_per_virtual_pipeline_stage: Optional[int] = arg(None, "Layers per virtual stage: turns on the interleaved 1F1B schedule.")
    context_parallel_size: int = arg(1, "Context-parallel degree (CP): each sequence split across CP ranks. Above 1 "
                                        "it needs Transformer Engine's attention.")
    sequence_parallel: bool = arg(False, "Shard activations along the sequence inside TP regions (switched off, with a "
                                         "warning, at TP=1, as Megatron-LM does).")
    distributed_backend: Optional[str] = arg(None, "Process-group backend (default: nccl on CUDA, gloo on CPU).", choices=("nccl", "gloo"))
    distributed_timeout_minutes: int = arg(10, "Timeout of collective operations.")


@dataclass
class DataConfig:
    data_path: list = arg([], "Indexed dataset prefixes, optionally weighted: '0.7 A 0.3 B'.", nargs="*")
    mock_data: bool = arg(False, "Train on megatron-core's mock GPT dataset (random tokens).")
    split: str = arg("969,30,1", "Train/valid/test split weights over each dataset's documents.")
    data_cache_path: Optional[str] = arg(None, "Where dataset index caches go (a path every rank sees).")
    reset_position_ids: bool = arg(False, "Restart position ids at each document boundary.")
    reset_attention_mask: bool = arg(False, "No attention across document boundaries inside a sample.")
    eod_mask_loss: bool = arg(False, "No loss on end-of-document tokens.")
    sft: bool = arg(False, "Supervised fine-tuning on conversations preprocessed with tools/preprocess_data.py "
                           "--sft (Megatron-LM's flag): loss on the assistant tokens only, feedback in the system "
                           "message, conversations packed whole with no attention between them.")
    mmap_bin_files: bool = arg(True, "Memory-map the datasets' .bin files (--no-mmap-bin-files reads each "
                                     "sample with a file read instead).")
    num_workers: int = arg(2, "DataLoader worker processes per loading rank (TP rank 0 of a stage that reads "
                                 "data); persistent, each prefetching 2 micro-batches. 0 reads in the training process.")


@dataclass
class TokenizerConfig:
    """Which tokenizer, and how the model's vocabulary is padded around it: the one spec that
    training, preprocessing, inference and conversion pass around (``tokenizers.build.
    tokenizer_from_config`` builds it). Megatron-LM's names; its ``--vocab-size`` too."""

    tokenizer_type: str = arg("NullTokenizer", "Tokenizer kind (Megatron-LM's names).", choices=TOKENIZER_TYPES)
    """Megatron-LM's type name; which of the fields below it reads is in ``tokenizers.build``."""
    tokenizer_model: Optional[str] = arg(None, "SentencePiece .model, tokenizer.json (or its folder) "
                                               "for HuggingFaceTokenizer, or the tiktoken .json vocabulary "
                                               "for TikTokenizer.")
    """SentencePieceTokenizer: the ``.model`` file; HuggingFaceTokenizer: ``tokenizer.json``
    or the folder holding it; TikTokenizer: Megatron-LM's tiktoken JSON vocabulary (a list of
    ``{rank, token_bytes, token_str}``)."""
    vocab_file: Optional[str] = arg(None, "GPT-2 BPE vocabulary (encoder.json).")
    """GPT2BPETokenizer only."""
    merge_file: Optional[str] = arg(None, "GPT-2 BPE merges (vocab.bpe).")
    """GPT2BPETokenizer only."""
    vocab_size: Optional[int] = arg(None, "Vocabulary size of the NullTokenizer (also mock data's); TikTokenizer: "
                                          "cuts its vocabulary to this many ids, special tokens included (default: "
                                          "Megatron-LM's 131072, or fewer when the file has fewer); every other "
                                          "type knows its own.")
    """NullTokenizer: its ids are ``0 .. vocab_size - 1``, the eod ``vocab_size`` and the
    two feedback delimiters the next two ids. TikTokenizer: as in Megatron-LM, the vocabulary
    is cut to ``vocab_size - tiktoken_num_special_tokens`` ranks. Every other type knows its
    own size."""
    tiktoken_pattern: Optional[str] = arg(None, "TikTokenizer (required): the pre-tokenization pattern, "
                                                "Megatron-LM's v1 or v2. Accepted and ignored with other types "
                                                "(Megatron-LM's Llama 3 example passes it with NullTokenizer).",
                                          choices=("v1", "v2"))
    tiktoken_num_special_tokens: int = arg(1000, "TikTokenizer: ids 0..N-1 reserved for special tokens; the "
                                                 "vocabulary's ranks start at N. The feedback delimiters take the "
                                                 "last two unused ones.")
    tiktoken_special_tokens: Optional[list] = arg(None, "TikTokenizer: the special tokens, ids 0, 1, ... in "
                                                        "order; must include <unk> <s> </s> (the default).",
                                                  nargs="+")
    make_vocab_size_divisible_by: int = arg(128, "Pad the vocabulary to a multiple of this times TP size.")
    """The model's embedding and output layer have ``padded_vocab_size`` rows, so that each
    tensor-parallel shard is a multiple of this (aligned GEMMs); the padding rows belong to
    no token (generation masks them, export cuts them)."""

    def padded_vocab_size(self, vocab_size: int, tensor_model_parallel_size: int) -> int:
        """Megatron-LM's padding: ``vocab_size`` rounded up to a multiple of
        ``make_vocab_size_divisible_by x tensor_model_parallel_size``."""
        multiple = self.make_vocab_size_divisible_by * tensor_model_parallel_size
        return ((vocab_size + multiple - 1) // multiple) * multiple


@dataclass
class OptimizerConfig:
    optimizer: str = arg("adam", "Optimizer (Adam with decoupled weight decay, i.e. AdamW).", choices=("adam", "sgd"))
    lr: float = arg(3e-4, "Peak learning rate.")
    min_lr: float = arg(0.0, "Learning rate at the end of decay.")
    lr_decay_style: str = arg("cosine", "Decay after warm-up.", choices=("constant", "linear", "cosine", "inverse-square-root", "WSD"))
    lr_decay_iters: Optional[int] = arg(None, "Iterations to decay over (default: --train-iters).")
    lr_decay_samples: Optional[int] = arg(None, "Samples to decay over (default: --train-samples); with --train-samples.")
    lr_warmup_iters: int = arg(0, "Linear warm-up iterations.")
    lr_warmup_samples: int = arg(0, "Linear warm-up samples; with --train-samples.")
    lr_warmup_fraction: Optional[float] = arg(None, "Warm-up as a fraction of the decay iterations or samples "
                                                    "(overrides --lr-warmup-iters/--lr-warmup-samples).")
    lr_wsd_decay_iters: Optional[int] = arg(None, "WSD: iterations of the final decay phase.")
    lr_wsd_decay_samples: Optional[int] = arg(None, "WSD: samples of the final decay phase; with --train-samples.")
    lr_wsd_decay_style: str = arg("linear", "WSD: shape of the final decay.", choices=("linear", "cosine", "exponential", "minus_sqrt"))
    decoupled_lr: Optional[float] = arg(None, "Peak learning rate of the input embedding and the output layer "
                                              "(default: --lr).")
    decoupled_min_lr: Optional[float] = arg(None, "Final learning rate of the input embedding and the output layer "
                                                  "(default: --min-lr).")
    weight_decay: float = arg(0.01, "Decoupled weight decay.")
    override_opt_param_scheduler: bool = arg(
        False, "On resume, use this run's schedule flags (--lr, --min-lr, warm-up, decay, --weight-decay) instead "
        "of the checkpoint's; the step count still comes from the checkpoint. Without it or "
        "--use-checkpoint-opt-param-scheduler, a resume whose schedule flags differ from the checkpoint's is refused.")
    use_checkpoint_opt_param_scheduler: bool = arg(
        False, "On resume, keep the checkpoint's schedule (lr, min-lr, warm-up, decay, weight decay) and ignore "
        "this run's schedule flags.")
    adam_beta1: float = arg(0.9, "Adam beta1.")
    adam_beta2: float = arg(0.95, "Adam beta2.")
    adam_eps: float = arg(1e-8, "Adam epsilon.")
    clip_grad: float = arg(1.0, "Clip gradients to this global L2 norm (0 disables).")
    loss_scale: Optional[float] = arg(None, "--fp16: a static loss scale (default: dynamic loss scaling).")
    initial_loss_scale: float = arg(2.0 ** 32, "--fp16: the dynamic loss scale's initial value.")
    min_loss_scale: float = arg(1.0, "--fp16: the dynamic loss scale's floor.")
    loss_scale_window: float = arg(1000, "--fp16: steps without overflow before the loss scale doubles.")
    hysteresis: int = arg(2, "--fp16: overflows tolerated before the loss scale halves (the tolerance is restored "
                             "after --loss-scale-window clean steps).")
    grad_reduce_in_bf16: bool = arg(False, "Accumulate and reduce gradients over data-parallel ranks in BF16 "
                                           "(with --bf16; default fp32).")
    use_distributed_optimizer: bool = arg(False, "Shard optimizer state over data-parallel ranks (ZeRO-1; NCCL only).")
    overlap_grad_reduce: bool = arg(False, "Overlap the data-parallel gradient reduction with backward.")
    overlap_param_gather: bool = arg(False, "Overlap the distributed optimizer's parameter all-gather with forward.")


DEFAULT_TRAIN_ITERS = 100
"""``--train-iters`` when neither it nor ``--train-samples`` is given (``config.validate``)."""
ITERATION_SCHEDULE_FIELDS = ("train_iters", "lr_decay_iters", "lr_warmup_iters", "lr_wsd_decay_iters")
SAMPLE_SCHEDULE_FIELDS = ("train_samples", "lr_decay_samples", "lr_warmup_samples", "lr_wsd_decay_samples")
"""The two kinds of schedule, of which a run uses one (Megatron-LM's rule): counted in
iterations, or in samples (``--train-samples``). Batch-size ramp-up goes with either."""


@dataclass
class TrainingConfig:
    micro_batch_size: int = arg(2, "Samples per micro-batch per data-parallel rank.")
    global_batch_size: Optional[int] = arg(None, "Samples per iteration over all ranks (default: micro batch x DP).")
    rampup_batch_size: Optional[list] = arg(
        None, "Batch-size ramp-up, START INCREMENT SAMPLES: the global batch grows from START by INCREMENT over "
        "the first SAMPLES samples up to --global-batch-size (megatron-core's micro-batch calculator).",
        nargs=3, item=int)
    train_iters: Optional[int] = arg(None, "Training iterations (default 100; with --train-samples, derived from "
                                           "it as Megatron-LM's update_train_iters does).")
    train_samples: Optional[int] = arg(None, "Training samples (instead of --train-iters): the schedule is counted "
                                             "in samples (--lr-decay-samples, --lr-warmup-samples, "
                                             "--lr-wsd-decay-samples), as with --rampup-batch-size it must be.")
    calculate_per_token_loss: bool = arg(
        True, "The loss is the mean over every trained token of the global batch (each token weighs the same, "
        "whatever micro-batch or rank it is on: every parallel layout computes the same loss). Unlike "
        "Megatron-LM, on by default; --no-calculate-per-token-loss gives Megatron-LM's default, the mean "
        "over micro-batches of each micro-batch's per-token mean.")
    empty_unused_memory_level: int = arg(0, "torch.cuda.empty_cache() to reduce fragmentation, as Megatron-LM: 1 "
                                            "after each forward-backward (training and evaluation), 2 also after "
                                            "each optimizer step. CUDA only: a no-op on CPU.", choices=(0, 1, 2))
    manual_gc: bool = arg(False, "Disable Python's automatic garbage collector and collect every "
                                 "--manual-gc-interval steps instead, on all ranks at once.")
    manual_gc_interval: int = arg(0, "--manual-gc: steps between collections (0: only at the start and, with "
                                     "--manual-gc-eval, around evaluations).")
    manual_gc_eval: bool = arg(True, "--manual-gc: also collect before and after each evaluation.")
    seed: int = arg(1234, "Random seed.")
    eval_interval: int = arg(1000, "Validate every this many iterations (0: never).")
    eval_iters: int = arg(10, "Validation iterations each time.")
    exit_interval: Optional[int] = arg(None, "Exit after the iteration that is a multiple of this.")
    exit_duration_in_mins: Optional[float] = arg(None, "Save and exit after this many minutes of training.")
    exit_on_missing_checkpoint: bool = arg(False, "Fail if --load finds no checkpoint.")
    skip_nan_iterations: int = arg(3, "Stop after this many consecutive iterations with a NaN/Inf loss or grad norm.")
    deterministic_mode: bool = arg(False, "Deterministic kernels (slower on GPU).")


@dataclass
class CheckpointConfig:
    save: Optional[str] = arg(None, "Checkpoint directory to save into.")
    load: Optional[str] = arg(None, "Checkpoint directory to resume from.")
    save_interval: Optional[int] = arg(None, "Save every this many iterations.")
    no_load_optim: bool = arg(False, "Do not load optimizer state.")
    no_load_rng: bool = arg(False, "Do not load RNG state.")
    finetune: bool = arg(False, "Load weights only and reset iteration and sample counters.")
    keep_last_n: Optional[int] = arg(None, "Keep only the newest N checkpoints.")
    async_save: bool = arg(False, "Write checkpoints in the background (torch_dist format).")
    ckpt_format: str = arg("torch_dist", "Checkpoint format.", choices=("torch_dist",))


@dataclass
class LoggingConfig:
    log_interval: int = arg(10, "Print a metrics line every this many iterations.")
    tensorboard_dir: Optional[str] = arg(None, "Write TensorBoard scalars here.")
    log_file: Optional[str] = arg(None, "Also append the metrics as JSON lines to this file.")
    log_throughput: bool = arg(False, "Show Megatron-LM's 'throughput per GPU (TFLOP/s/GPU)' in each metrics line "
                                      "and write it as 'throughput' to TensorBoard, W&B and --log-file.")
    profile: bool = arg(False, "Profile steps --profile-step-start to --profile-step-end: with "
                               "--use-pytorch-profiler a trace under --tensorboard-dir, else an nsys capture range "
                               "(CUDA; run under nsys profile --capture-range=cudaProfilerApi).")
    profile_step_start: int = arg(10, "--profile: global step to start profiling (torch.profiler records steps "
                                      "START to END-1, the nsys range covers START+1 to END, as in Megatron-LM).")
    profile_step_end: int = arg(12, "--profile: global step to stop profiling.")
    profile_ranks: list = arg([0], "--profile: global ranks that profile.", nargs="+", item=int)
    use_pytorch_profiler: bool = arg(False, "--profile with torch.profiler, writing a TensorBoard trace.")
    wandb_project: Optional[str] = arg(None, "Log the metrics to this Weights & Biases project (pip install "
                                             "'megatron_ixt[wandb]'; offline when WANDB_MODE=offline or no network).")
    wandb_exp_name: Optional[str] = arg(None, "The W&B run name.")
    wandb_save_dir: Optional[str] = arg(None, "Where W&B writes its run folder (default: --save's wandb/).")
    wandb_entity: Optional[str] = arg(None, "The W&B entity (team or user).")


@dataclass
class IXTConfig:
    ixt_prefix_loss: str = arg("include", "Train on feedback-prefix tokens ('include', as the IXT paper) or mask them ('exclude', as MeCo).",
                               choices=("include", "exclude"))
    ixt_feedback_dropout: float = arg(0.05, "Fraction of annotated documents whose prefix is dropped (unconditional mode).")
    ixt_repeat_prefix: bool = arg(False, "Re-insert a document's prefix where it continues in a new sample.")
    ixt_cooldown_fraction: float = arg(0.0, "Train the last fraction of iterations without prefixes (MeCo cooldown).")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    ixt: IXTConfig = field(default_factory=IXTConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        """The inverse of ``to_dict``, also for a dict saved by an older layout of the tree
        (a checkpoint's ``config``): leaf names are unique across sections, so each leaf goes
        to the section that holds it today (the tokenizer fields moved from ``data`` and
        ``model`` to ``tokenizer``). A leaf no section holds any more is dropped."""
        cfg = cls()
        sections = {f.name: section.name for section in dataclasses.fields(cls)
                    for f in dataclasses.fields(section.default_factory)}  # type: ignore[arg-type]
        for leaves in values.values():
            for name, value in leaves.items():
                if name in sections:
                    setattr(getattr(cfg, sections[name]), name, value)
        return cfg


SECTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Config))
