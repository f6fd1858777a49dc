"""Hugging Face model families <-> this project's model settings (Megatron-LM flag names).

| family (`model_type`) | what it adds to Llama's architecture | megatron-core option |
|---|---|---|
| `llama` (Llama 2, 3.x; SmolLM2) | Llama 3.x: `rope_type: llama3` frequency scaling | `--use-rope-scaling`, `--rope-scaling-factor` |
| `mistral` | a sliding window (Mistral-7B-v0.1: 4,096; later ones none) | `--window-size W-1,0`, exact while `--seq-length <= W` |
| `qwen2` (Qwen2, Qwen2.5) | biases on q, k, v | `--add-qkv-bias` |
| `qwen3` | RMSNorm of each head's queries and keys; `head_dim` set apart from hidden / heads | `--qk-layernorm`, `--kv-channels` |

Anything megatron-core would compute differently is refused, naming the field: other RoPE
types (linear, dynamic, YaRN, LongRoPE), Llama 3.x scaling whose low/high frequency factors
or original context differ from the 1 / 4 / 8,192 megatron-core fixes, biases elsewhere,
mixture-of-experts models, activations other than SiLU.

Export writes each family back as its own `model_type` and config: the one the model was
imported from when its tokenizer folder records it (`SOURCE_CONFIG`), else the one its
settings name (QK-norm: qwen3, QKV bias: qwen2, a window: mistral, else llama).
"""

from __future__ import annotations

import json
import os
from typing import Optional

from megatron_ixt.config.validate import window_left
from megatron_ixt.conversion import ConversionError
from megatron_ixt.conversion.llama import resolved_dims

FAMILIES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
            "qwen3": "Qwen3ForCausalLM"}
# What megatron-core's Llama 3.x scaling fixes (RotaryEmbedding._apply_scaling's defaults).
LLAMA3_FIXED = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
SOURCE_CONFIG = "source_config.json"
"""The imported folder's config.json, kept beside the tokenizer files (which every checkpoint
trained from the import points to): export reads its ``model_type`` back."""


def _rope(config: dict) -> dict:
    """RoPE settings, from transformers >= 5's ``rope_parameters`` or the older ``rope_scaling``
    plus ``rope_theta``."""
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        rope = {}
    rope = dict(rope)
    rope["rope_type"] = rope.get("rope_type", rope.get("type")) or "default"
    rope.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    return rope


def _window(config: dict, model_type: str) -> Optional[int]:
    """The sliding window the model really uses, in tokens; None for full attention. Qwen2/3
    configs carry ``sliding_window`` with ``use_sliding_window: false``: no window."""
    layer_types = config.get("layer_types")
    if model_type in ("qwen2", "qwen3"):
        used = config.get("use_sliding_window") or (layer_types and "sliding_attention" in layer_types)
    else:
        used = True
    window = config.get("sliding_window")
    return int(window) if used and window else None


def model_settings_from_hf(config: dict, where: str, seq_length: Optional[int] = None) -> dict:
    """This project's model settings for a Hugging Face ``config.json`` of a supported family;
    refuses, naming the field, what megatron-core's GPT would compute differently."""
    def need(key):
        if config.get(key) is None:
            raise ConversionError(f"{where}: no '{key}'")
        return config[key]

    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise ConversionError(f"{where}: model_type {model_type!r}; supported: {', '.join(FAMILIES)} "
                              "(dense decoder-only models with Llama's layout)")
    problems = []
    if config.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {config['hidden_act']!r} (only silu, i.e. SwiGLU)")
    for key in ("num_experts", "num_local_experts", "n_routed_experts"):
        if config.get(key):
            problems.append(f"{key} {config[key]} (mixture of experts)")
    if config.get("mlp_bias"):
        problems.append("mlp_bias true (biases in the MLP)")
    if config.get("attention_bias"):
        problems.append("attention_bias true (biases on q, k, v and o; megatron-core's --add-qkv-bias has none on o)")
    if (config.get("pretraining_tp") or 1) != 1:
        problems.append(f"pretraining_tp {config['pretraining_tp']}")
    rope = _rope(config)
    scaling = {}
    if rope["rope_type"] == "llama3":
        for key, fixed in LLAMA3_FIXED.items():
            if float(rope.get(key, fixed)) != fixed:
                problems.append(f"rope {key} {rope.get(key)} (megatron-core's Llama 3 scaling fixes {fixed:g})")
        scaling = {"use_rope_scaling": True, "rope_scaling_factor": float(rope.get("factor", 8.0))}
    elif rope["rope_type"] != "default":
        problems.append(f"rope_type {rope['rope_type']!r} (only plain RoPE and Llama 3's 'llama3' scaling)")
    theta = float(rope["rope_theta"])
    if theta != int(theta):
        problems.append(f"rope_theta {theta} (--rotary-base is an integer)")
    if config.get("partial_rotary_factor", 1.0) != 1.0:
        problems.append(f"partial_rotary_factor {config['partial_rotary_factor']}")
    window = _window(config, model_type)
    if window is not None and seq_length is not None and seq_length > window:
        problems.append(f"sliding_window {window} with --seq-length {seq_length}: this project's attention has no "
                        f"window, so the model is exact only for sequences of at most {window} tokens "
                        f"(pass --seq-length {window} or less)")
    if problems:
        raise ConversionError(f"{where}: cannot convert exactly: " + "; ".join(problems))
    hidden, heads = need("hidden_size"), need("num_attention_heads")
    groups = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    return {
        "num_layers": need("num_hidden_layers"),
        "hidden_size": hidden,
        "ffn_hidden_size": need("intermediate_size"),
        "num_attention_heads": heads,
        "group_query_attention": groups != heads,
        "num_query_groups": groups if groups != heads else None,
        "kv_channels": head_dim if head_dim != hidden // heads else None,
        "max_position_embeddings": config.get("max_position_embeddings"),
        "position_embedding_type": "rope",
        "rotary_base": int(theta),
        "rotary_percent": 1.0,
        **scaling,
        "window_size": f"{window - 1},0" if window else None,
        "normalization": "RMSNorm",
        "norm_epsilon": float(config.get("rms_norm_eps", 1e-6)),
        "swiglu": True,
        "disable_bias_linear": True,
        "add_qkv_bias": model_type == "qwen2",
        "qk_layernorm": model_type == "qwen3",
        "untie_embeddings_and_output_weights": not config.get("tie_word_embeddings", False),
        "init_method_std": float(config.get("initializer_range", 0.02)),
    }


# -- export --------------------------------------------------------------------------------


def check_exportable(m) -> None:
    """Refuse, naming each setting, a model no supported Hugging Face family represents exactly."""
    problems = []
    if m.normalization != "RMSNorm":
        problems.append(f"--normalization {m.normalization} (Llama uses RMSNorm)")
    if not m.swiglu:
        problems.append("no --swiglu (the MLP is GeLU; Llama's is SwiGLU)")
    if not m.disable_bias_linear:
        problems.append("linear layers have biases (no --disable-bias-linear; Llama has none)")
    if m.position_embedding_type != "rope":
        problems.append(f"--position-embedding-type {m.position_embedding_type} (Llama uses RoPE)")
    elif m.rotary_percent != 1.0:
        problems.append(f"--rotary-percent {m.rotary_percent} (Llama rotates every channel of a head)")
    if m.add_qkv_bias and m.qk_layernorm:
        problems.append("--add-qkv-bias with --qk-layernorm (Qwen2 has the biases, Qwen3 the norms, none both)")
    if (m.add_qkv_bias or m.qk_layernorm) and m.use_rope_scaling:
        problems.append("--use-rope-scaling with " + ("--add-qkv-bias" if m.add_qkv_bias else "--qk-layernorm")
                        + " (only Llama has Llama 3's RoPE scaling)")
    if m.fp8_format is not None:
        problems.append(f"--fp8-format {m.fp8_format} (export an FP32/BF16 model)")
    if problems:
        raise ConversionError("this model has no exact Hugging Face equivalent: " + "; ".join(problems))


def family_of(m, tokenizer_folder: Optional[str]) -> str:
    """The Hugging Face family to export ``m`` as (module docstring)."""
    derived = "qwen3" if m.qk_layernorm else "qwen2" if m.add_qkv_bias else "mistral" if m.window_size else "llama"
    path = os.path.join(tokenizer_folder, SOURCE_CONFIG) if tokenizer_folder else None
    if path and os.path.isfile(path):
        with open(path) as f:
            recorded = json.load(f).get("model_type")
        # A Mistral without a window is Llama's architecture: only the record tells them apart.
        if recorded == derived or (recorded == "mistral" and derived == "llama"):
            return recorded
    return derived


def hf_config(m, family: str, vocab_size: int, bos: int, eos: int, dtype: str, max_positions: int) -> dict:
    """The ``config.json`` of the exported model."""
    dims = resolved_dims(m)
    rope = {"rope_type": "default", "rope_theta": float(m.rotary_base)}
    if m.use_rope_scaling:
        rope = {**rope, "rope_type": "llama3", "factor": m.rope_scaling_factor, **LLAMA3_FIXED}
    config = {
        "architectures": [FAMILIES[family]],
        "model_type": family,
        "vocab_size": vocab_size,
        "hidden_size": m.hidden_size,
        "intermediate_size": dims["ffn"],
        "num_hidden_layers": m.num_layers,
        "num_attention_heads": dims["heads"],
        "num_key_value_heads": dims["groups"],
        "head_dim": dims["head_dim"],
        "hidden_act": "silu",
        "max_position_embeddings": max_positions,
        "rms_norm_eps": m.norm_epsilon,
        # Both spellings: transformers >= 5 reads rope_parameters; earlier releases and
        # serving engines read rope_theta and rope_scaling.
        "rope_theta": float(m.rotary_base),
        "rope_parameters": rope,
        "rope_scaling": rope if m.use_rope_scaling else None,
        "tie_word_embeddings": not m.untie_embeddings_and_output_weights,
        "attention_dropout": 0.0,
        "initializer_range": m.init_method_std,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "use_cache": True,
        "dtype": dtype,
        "torch_dtype": dtype,
    }
    left = window_left(m.window_size)
    if family == "llama":
        config.update(attention_bias=False, mlp_bias=False)
    elif family == "mistral":
        config.update(sliding_window=None if left is None else left + 1)
    else:  # qwen2, qwen3: the window fields are theirs, off unless the model has one
        config.update(use_sliding_window=left is not None, sliding_window=None if left is None else left + 1,
                      max_window_layers=0 if left is not None else m.num_layers)
        if family == "qwen3":
            config.update(attention_bias=False)
    return config
