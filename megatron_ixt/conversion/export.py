"""Export a checkpoint (any TP/PP layout) to a Hugging Face folder of its family (`families.py`).

The checkpoint is loaded on one process at TP=1, PP=1 through the same path as
inference (`evaluation/engine.py`): megatron-core's dist_checkpointing reshards it, so the
layout it was saved at does not matter, nor its vocabulary padding, which is cut on export:
`vocab_size` in `config.json` is the tokenizer's, delimiters included.

Writes `config.json`, the weights (`model.safetensors`, or shards of at most `--max-shard-size`
with `model.safetensors.index.json`), `generation_config.json` and the tokenizer files
(`hf_tokenizer.py`) into a temporary folder, renamed when all are complete. The weights stream
(`safetensors_io.py`): each Hugging Face tensor is cut from the loaded model and converted to
the chosen dtype when it is written, so the peak memory is the loaded model and one tensor
(and, while megatron-core loads the checkpoint, its copies of each MLP's gate and up halves).

The model's BOS convention goes with it: `bos_token_id` is the tokenizer's BOS where it has
one, and a model whose documents start with it (`--document-start bos`) gets a tokenizer that
adds it, as the tokenizer it was imported with did.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile

import torch

from megatron_ixt.conversion import ConversionError
from megatron_ixt.conversion.families import check_exportable, family_of, hf_config
from megatron_ixt.conversion.hf_tokenizer import bos_of, export_tokenizer
from megatron_ixt.conversion.llama import export_plan
from megatron_ixt.conversion.safetensors_io import write_sharded
from megatron_ixt.model.gpt import padded_vocab_size

logger = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_full_model(load: str, tokenizer_overrides: dict):
    """(config, full megatron state dict on CPU, tokenizer) of the checkpoint in `load`,
    on an initialised single-process group."""
    from megatron_ixt.checkpoint.files import checkpoint_name, read_tracker
    from megatron_ixt.checkpoint.load import read_common_state
    from megatron_ixt.evaluation.engine import InferenceModel, config_from_checkpoint, init_inference

    iteration = read_tracker(load)
    if iteration is None:
        raise ConversionError(f"--load {load}: no checkpoint (missing latest_checkpointed_iteration.txt)")
    common = read_common_state(checkpoint_name(load, iteration))
    if "config" not in common:
        raise ConversionError(f"--load {load}: not a checkpoint of this project (common.pt has no 'config'); "
                              "a Megatron-LM checkpoint loads with pretrain_ixt.py --finetune, then save and export")
    overrides = {"tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1, "sequence_parallel": False,
                 "num_layers_per_virtual_pipeline_stage": None, "hidden_dropout": 0.0, "attention_dropout": 0.0,
                 "transformer_impl": "local", **{k: v for k, v in tokenizer_overrides.items() if v is not None}}
    cfg = config_from_checkpoint(load, overrides)
    check_exportable(cfg.model)
    run = init_inference(cfg)
    tokenizer = run.tokenizer
    model = InferenceModel(run)  # refuses a tokenizer other than the checkpoint's
    state = {k: v.detach().cpu() for k, v in model.chunks[0].state_dict().items() if not k.endswith("_extra_state")}
    return cfg, state, tokenizer, model


def export_to_hf(load: str, output: str, dtype: str = "float32", tokenizer_overrides: dict | None = None,
                 max_shard_bytes: int = 5 * 1024 ** 3) -> dict:
    """Convert the checkpoint in `load` to a Hugging Face folder `output`; returns a summary."""
    if dtype not in DTYPES:
        raise ConversionError(f"--dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    cfg, state, tokenizer, model = load_full_model(load, tokenizer_overrides or {})
    m = cfg.model
    vocab = tokenizer.vocab_size
    max_positions = m.max_position_embeddings or m.seq_length
    model_file = getattr(tokenizer, "_files", {}).get("tokenizer_model")  # none for GPT-2's two files
    family = family_of(m, os.path.dirname(model_file) if model_file else None)
    # What a text starts with in transformers: the BOS of a model whose documents start with
    # it (or the one an imported `none` model's tokenizer names and never adds), else the EOD
    # (lm-eval puts bos_token_id before an empty context).
    bos = bos_of(tokenizer) if m.document_start in ("bos", "none") else None
    config = hf_config(m, family, vocab, tokenizer.eod if bos is None else bos, tokenizer.eod, dtype, max_positions)
    generation = {
        "bos_token_id": config["bos_token_id"],
        "eos_token_id": tokenizer.eod,
        "pad_token_id": tokenizer.eod,
        # The model may neither open nor close a feedback prefix of its own (as tools/generate.py).
        "suppress_tokens": [tokenizer.feedback_open_id, tokenizer.feedback_close_id],
        "max_length": max_positions,
    }
    items = []
    for name, source, extract in export_plan(m, vocab):
        shape = list(extract(state[source]).shape)  # a view, or one tensor's copy, dropped at once
        items.append((name, shape, DTYPES[dtype], lambda extract=extract, source=source: extract(state[source])))
    parent = os.path.dirname(os.path.abspath(output)) or "."
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.", suffix=".tmp", dir=parent)
    try:
        weight_files = write_sharded(work, items, max_shard_bytes)
        with open(os.path.join(work, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        with open(os.path.join(work, "generation_config.json"), "w") as f:
            json.dump(generation, f, indent=2)
        tokenizer_info = export_tokenizer(tokenizer, work, max_positions, bos=bos, add_bos=m.document_start == "bos")
        if os.path.isdir(output):
            shutil.rmtree(output)
        os.replace(work, output)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {"output": output, "iteration": model.iteration, "model_type": family, "vocab_size": vocab,
               "padded_vocab_size": padded_vocab_size(vocab, cfg),
               "parameters": sum(torch.Size(shape).numel() for _, shape, _, _ in items), "dtype": dtype,
               "weight_files": weight_files, "document_start": m.document_start, **tokenizer_info}
    logger.info("exported %s (iteration %d) to %s: %s", load, model.iteration, output, summary)
    return summary
