"""Import a Hugging Face checkpoint (Llama, Mistral, Qwen2, Qwen3: `families.py`) as a
megatron-core distributed checkpoint.

Input: a folder with `config.json`, `model.safetensors` (or shards with
`model.safetensors.index.json`) and `tokenizer.json` (or a SentencePiece `tokenizer.model`).
Output (`--save DIR`), ready for `pretrain_ixt.py --config DIR/model.yaml --load DIR`:

    DIR/iter_0000000/              the weights (torch_dist), as pretrain_ixt.py saves them
    DIR/latest_checkpointed_iteration.txt
    DIR/tokenizer/                 the tokenizer files, copied
    DIR/model.yaml                 model shape, tokenizer and layout settings for training

The tokenizer gets the feedback delimiters as this project's tokenizers give them (its
own tokens if it has them, else two ids after its vocabulary). The embedding (and output)
matrices get a row for each appended delimiter, initialised to the mean of the model's rows
(Hugging Face's `resize_token_embeddings` convention: a new token starts as an "average"
token), and zero rows for the vocabulary padding of the chosen TP size, which belongs to no
token and never ties the checkpoint to a layout (`checkpoint.load.check_vocabulary`).

The checkpoint records the model's document start (`--document-start`): `bos` when its
tokenizer puts a BOS before a text, else `none`; generation and evaluation follow it, so
greedy output equals transformers' for the same prompt.

The weights stream (`safetensors_io.py`): the model is built once, uninitialised, in the dtype
it is saved in, and each parameter is filled from the few source tensors it needs, read when
needed. The peak memory is one copy of the weights written plus what megatron-core's
checkpoint writer copies: it saves each MLP's gate and up halves as two tensors (so that any
TP size can load them) and clones those views first, about a third of a Llama's weights
(`benchmarks/convert.py`: 1.38x the weights in all, against 3.1x before streaming).

The weights are written from one process at TP=1 with the padding of the chosen TP size;
the checkpoint records the chosen layout, and megatron-core reshards it when a run at
that (or any other) layout loads it. A layout the model's shapes cannot take is refused
before anything is written. The checkpoint holds weights only: loading it restores no
optimizer, RNG or iteration counters, with or without `--finetune`.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil

import torch
import yaml

from megatron_ixt.conversion import ConversionError
from megatron_ixt.conversion.families import SOURCE_CONFIG, model_settings_from_hf
from megatron_ixt.conversion.llama import import_plan
from megatron_ixt.conversion.safetensors_io import HFWeights

logger = logging.getLogger(__name__)


def copy_tokenizer(folder: str, destination: str) -> tuple[str, str]:
    """Copy the tokenizer files; return (tokenizer type, path) for this project's flags."""
    os.makedirs(destination, exist_ok=True)
    # chat_template.jinja: where recent transformers keep the chat template (SFT renders with it).
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                 "chat_template.jinja"):
        if os.path.isfile(os.path.join(folder, name)):
            shutil.copy2(os.path.join(folder, name), os.path.join(destination, name))
    if os.path.isfile(os.path.join(destination, "tokenizer.json")):
        return "HuggingFaceTokenizer", os.path.join(destination, "tokenizer.json")
    if os.path.isfile(os.path.join(destination, "tokenizer.model")):
        return "SentencePieceTokenizer", os.path.join(destination, "tokenizer.model")
    raise ConversionError(f"{folder}: no tokenizer.json or tokenizer.model")


def document_start_of(tokenizer, folder: str) -> str:
    """The model's document start (``--document-start``) as its own tokenizer encodes a text:
    ``bos`` when it puts a BOS first (Llama 2/3), else ``none`` (SmolLM2, GPT-2 style)."""
    if hasattr(tokenizer, "added_bos"):  # tokenizer.json: what its post-processor adds
        return "bos" if tokenizer.added_bos is not None else "none"
    settings = {}
    config = os.path.join(folder, "tokenizer_config.json")
    if os.path.isfile(config):
        with open(config) as f:
            settings = json.load(f)
    # SentencePiece: its slow tokenizer's flag, whose default is true for Llama's tokenizer class.
    default = str(settings.get("tokenizer_class", "")).startswith("Llama")
    return "bos" if settings.get("add_bos_token", default) else "none"


def import_config(settings: dict, tensor_parallel: int, pipeline_parallel: int, seq_length: int | None,
                  divisible_by: int, bf16: bool, fp16: bool = False, apply_layernorm_1p: bool = False):
    """The training configuration of the imported model, its layout checked against its
    shapes (``config.validate.check_layout``: raises ConfigError, exit 2). ``bf16``/``fp16``:
    the dtype the weights are stored in; ``apply_layernorm_1p``: norm weights stored as
    gamma - 1, for training with --apply-layernorm-1p."""
    from megatron_ixt.config.schema import Config
    from megatron_ixt.config.cli import ConfigError
    from megatron_ixt.config.validate import check_layout, window_left

    cfg = Config()
    for name, value in settings.items():
        setattr(cfg.model, name, value)
    left = window_left(settings.get("window_size"))
    cfg.model.seq_length = seq_length or min(settings["max_position_embeddings"] or 4096, 4096,
                                             4096 if left is None else left + 1)
    cfg.tokenizer.make_vocab_size_divisible_by = divisible_by
    if bf16 and fp16:
        raise ConfigError("--bf16 and --fp16 exclude each other: choose the dtype to store the weights in")
    cfg.model.bf16, cfg.model.fp16 = bf16, fp16
    cfg.model.apply_layernorm_1p = apply_layernorm_1p
    cfg.parallel.tensor_model_parallel_size = tensor_parallel
    cfg.parallel.pipeline_model_parallel_size = pipeline_parallel
    # The weights are written in megatron-core's local layer layout (below), and the checkpoint
    # says so: resuming it where Transformer Engine would be chosen is refused by name.
    cfg.model.transformer_impl = "local"
    check_layout(cfg)
    return cfg


def import_from_hf(input_dir: str, save: str, tensor_parallel: int = 1, pipeline_parallel: int = 1,
                   seq_length: int | None = None, divisible_by: int = 128, bf16: bool = False,
                   fp16: bool = False, apply_layernorm_1p: bool = False) -> dict:
    """Convert (module docstring); returns a summary. Every refusal (a layout the model's
    shapes cannot take, an unsupported model, a non-empty ``save``) comes before anything is
    written; a failure later removes what this call created."""
    config_path = os.path.join(input_dir, "config.json")
    if not os.path.isfile(config_path):
        raise ConversionError(f"{input_dir}: no config.json")
    with open(config_path) as f:
        hf_config = json.load(f)
    settings = model_settings_from_hf(hf_config, config_path, seq_length)
    cfg = import_config(settings, tensor_parallel, pipeline_parallel, seq_length, divisible_by, bf16, fp16,
                        apply_layernorm_1p)
    if os.path.exists(save) and os.listdir(save):
        raise ConversionError(f"--save {save}: exists and is not empty")
    created = not os.path.exists(save)
    try:
        return _write_import(input_dir, save, cfg, settings, hf_config)
    except BaseException:
        if created:
            shutil.rmtree(save, ignore_errors=True)
        raise


def _write_import(input_dir: str, save: str, cfg, settings: dict, hf_config: dict) -> dict:
    from megatron.core import dist_checkpointing

    from megatron_ixt.checkpoint import files
    from megatron_ixt.checkpoint.contents import CHECKPOINT_VERSION, unwrap
    from megatron_ixt.model.gpt import build_model_chunks, padded_vocab_size
    from megatron_ixt.runtime.distributed import initialize_distributed
    from megatron_ixt.runtime.kernels import kernel_plan
    from megatron_ixt.runtime.progress import Progress
    from megatron_ixt.tokenizers.build import build_tokenizer

    hf = HFWeights(input_dir)
    os.makedirs(save, exist_ok=True)
    tokenizer_type, tokenizer_path = copy_tokenizer(input_dir, os.path.join(os.path.abspath(save), "tokenizer"))
    with open(os.path.join(os.path.dirname(tokenizer_path), SOURCE_CONFIG), "w") as f:
        json.dump(hf_config, f, indent=2)  # its model_type is what export writes back (families.py)
    tokenizer = build_tokenizer(tokenizer_type, tokenizer_path)
    cfg.tokenizer.tokenizer_type = tokenizer_type
    cfg.tokenizer.tokenizer_model = tokenizer_path
    cfg.model.document_start = document_start_of(tokenizer, input_dir)
    tensor_parallel = cfg.parallel.tensor_model_parallel_size
    padded = padded_vocab_size(tokenizer.vocab_size, cfg)

    rows = hf.shape("model.embed_tokens.weight")[0] if "model.embed_tokens.weight" in hf else 0
    if tokenizer.base_vocab_size > rows:
        raise ConversionError(f"{input_dir}: the tokenizer has {tokenizer.base_vocab_size} tokens, the embedding "
                              f"only {rows} rows")
    build = copy.deepcopy(cfg)  # this process: TP=1, PP=1, the chosen layout's padding
    build.parallel.tensor_model_parallel_size = build.parallel.pipeline_model_parallel_size = 1
    build.tokenizer.make_vocab_size_divisible_by = cfg.tokenizer.make_vocab_size_divisible_by * tensor_parallel
    plan = kernel_plan(build)  # computed once, for the process groups and the model alike
    layout = initialize_distributed(build, plan)
    model = build_model_chunks(build, layout, plan, tokenizer.vocab_size, initialize=False)[0]
    assert unwrap(model).vocab_size == padded, (unwrap(model).vocab_size, padded)  # (BF16: inside Float16Module)

    appended = [i for i in (tokenizer.feedback_open_id, tokenizer.feedback_close_id)
                if tokenizer.delimiter_source == "appended"]
    fills = import_plan(cfg.model, tokenizer.vocab_size, new_rows=[i for i in appended if i < rows])
    params = {k: v for k, v in model.state_dict(keep_vars=True).items() if not k.endswith("_extra_state")}
    if set(fills) != set(params):
        raise ConversionError(f"weight names differ: missing {sorted(set(params) - set(fills))}, "
                              f"unexpected {sorted(set(fills) - set(params))}")
    used = set()

    def get(name):
        used.add(name)
        return hf.get(name)

    progress = Progress("Converted", total=len(fills), every_s=10.0, show_bytes=True, unit="tensors")
    with torch.no_grad():  # each parameter in place, from tensors read one at a time
        for name, fill in fills.items():
            fill(params[name].data, get)
            progress.update(nbytes=params[name].numel() * params[name].element_size())
    progress.close()
    ignored = sorted(set(hf.keys()) - used)
    if ignored:
        logger.warning("%s: %d tensors not used by the model: %s", input_dir, len(ignored), ", ".join(ignored[:8]))

    partial = files.partial_folder(save, 0)
    os.makedirs(partial)
    dist_checkpointing.save({
        "model": model.sharded_state_dict(),
        "iteration": 0,
        "config": cfg.to_dict(),
        "layout": {"tensor_model_parallel_size": tensor_parallel,
                   "pipeline_model_parallel_size": cfg.parallel.pipeline_model_parallel_size, "data_parallel_size": 1},
        "padded_vocab_size": padded,
        "vocab_size": tokenizer.vocab_size,
        "checkpoint_version": CHECKPOINT_VERSION,
        "weights_only": True,
        "converted_from": {"format": "huggingface", "path": os.path.abspath(input_dir),
                           "architectures": hf_config.get("architectures")},
    }, partial)
    # Published as training publishes its saves: config.yaml, fsync, rename, then the tracker,
    # written atomically.
    files.publish(save, 0, cfg.to_dict())
    user_config = {"model": {k: v for k, v in cfg.to_dict()["model"].items() if k in settings or k in (
        "seq_length", "bf16", "fp16", "apply_layernorm_1p", "document_start")},
                   "tokenizer": {"tokenizer_type": tokenizer_type, "tokenizer_model": tokenizer_path,
                                 "make_vocab_size_divisible_by": cfg.tokenizer.make_vocab_size_divisible_by},
                   "parallel": {"tensor_model_parallel_size": tensor_parallel,
                                "pipeline_model_parallel_size": cfg.parallel.pipeline_model_parallel_size}}
    with open(os.path.join(save, "model.yaml"), "w") as f:
        f.write(f"# Imported from {os.path.abspath(input_dir)} by tools/convert_checkpoint.py --from hf\n")
        yaml.safe_dump(user_config, f, sort_keys=False)
    summary = {"save": save, "vocab_size": tokenizer.vocab_size, "hf_rows": rows, "padded_vocab_size": padded,
               "delimiters": tokenizer.delimiter_source,
               "feedback_ids": [tokenizer.feedback_open_id, tokenizer.feedback_close_id],
               "document_start": cfg.model.document_start,
               "parameters": sum(v.numel() for v in params.values())}
    logger.info("imported %s into %s: %s", input_dir, save, summary)
    return summary
