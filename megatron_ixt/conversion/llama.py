"""megatron-core GPT <-> Hugging Face Llama: configuration and weights.

Weights are the module state dict of a single-rank (TP=1, PP=1) megatron-core `GPTModel`
built with the local layer spec (`model/gpt.py`); megatron-core's dist_checkpointing gives
exactly these full tensors whatever layout a checkpoint was saved at. Per layer `i`:

| megatron-core (`decoder.layers.i.`)            | Hugging Face Llama (`model.layers.i.`)          |
|------------------------------------------------|-------------------------------------------------|
| `input_layernorm.weight`                       | `input_layernorm.weight`                        |
| `self_attention.linear_qkv.weight`             | `self_attn.{q,k,v}_proj.weight`                 |
| `self_attention.linear_proj.weight`            | `self_attn.o_proj.weight`                       |
| `pre_mlp_layernorm.weight`                     | `post_attention_layernorm.weight`               |
| `mlp.linear_fc1.weight`                        | `mlp.{gate,up}_proj.weight`                     |
| `mlp.linear_fc2.weight`                        | `mlp.down_proj.weight`                          |

plus `embedding.word_embeddings.weight` / `model.embed_tokens.weight`,
`decoder.final_layernorm.weight` / `model.norm.weight` and `output_layer.weight` /
`lm_head.weight` (absent when tied).

Layouts: `linear_qkv` holds, per query group, that group's query heads, then its key head,
then its value head (rows of `kv_channels` each); Llama keeps q, k and v apart, query heads
of group g being heads g*n/g .. (g+1)*n/g - 1, which is also how Llama's grouped-query
attention pairs them. `linear_fc1` at TP=1 is [gate; up] (the first half goes through SiLU,
megatron-core's `glu`). RoPE needs no permutation: megatron-core rotates the two halves of
each head (`rotary_interleaved=False`), as Llama's `rotate_half` does, with the same
inverse frequencies `base ** (-2i/d)`.
"""

from __future__ import annotations

from typing import Optional

import torch

from megatron_ixt.conversion import ConversionError

HF_ARCHITECTURE = "LlamaForCausalLM"


def resolved_dims(m) -> dict:
    """Heads, groups, head size and MLP size with megatron-core's defaults filled in."""
    heads = m.num_attention_heads
    groups = m.num_query_groups if m.group_query_attention and m.num_query_groups else heads
    return {
        "heads": heads,
        "groups": groups,
        "head_dim": m.kv_channels or m.hidden_size // heads,
        "ffn": m.ffn_hidden_size or 4 * m.hidden_size,
    }


def check_exportable(m) -> None:
    """Refuse, naming each setting, a model a Hugging Face Llama cannot represent exactly."""
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
    if m.fp8_format is not None:
        problems.append(f"--fp8-format {m.fp8_format} (export an FP32/BF16 model)")
    if problems:
        raise ConversionError("this model has no exact Hugging Face Llama equivalent: " + "; ".join(problems))


def hf_config(m, vocab_size: int, eod: int, dtype: str, max_positions: int) -> dict:
    """The `config.json` of the exported model."""
    dims = resolved_dims(m)
    return {
        "architectures": [HF_ARCHITECTURE],
        "model_type": "llama",
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
        # Both spellings: transformers >= 5 reads rope_parameters, earlier releases and
        # serving engines rope_theta.
        "rope_theta": float(m.rotary_base),
        "rope_parameters": {"rope_type": "default", "rope_theta": float(m.rotary_base)},
        "tie_word_embeddings": not m.untie_embeddings_and_output_weights,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": m.init_method_std,
        "bos_token_id": eod,
        "eos_token_id": eod,
        "use_cache": True,
        "dtype": dtype,
        "torch_dtype": dtype,
    }


def to_hf(sd: dict, m, vocab_size: int) -> dict:
    """megatron-core state dict (TP=1, full tensors) -> Llama state dict. The vocabulary
    padding rows (make_vocab_size_divisible_by) are cut: they belong to no token."""
    dims = resolved_dims(m)
    per_group = dims["heads"] // dims["groups"]
    d, h = dims["head_dim"], m.hidden_size
    out = {"model.embed_tokens.weight": sd["embedding.word_embeddings.weight"][:vocab_size]}
    for i in range(m.num_layers):
        src, dst = f"decoder.layers.{i}.", f"model.layers.{i}."
        qkv = sd[src + "self_attention.linear_qkv.weight"].reshape(dims["groups"], (per_group + 2) * d, h)
        out[dst + "self_attn.q_proj.weight"] = qkv[:, :per_group * d].reshape(-1, h)
        out[dst + "self_attn.k_proj.weight"] = qkv[:, per_group * d:(per_group + 1) * d].reshape(-1, h)
        out[dst + "self_attn.v_proj.weight"] = qkv[:, (per_group + 1) * d:].reshape(-1, h)
        out[dst + "self_attn.o_proj.weight"] = sd[src + "self_attention.linear_proj.weight"]
        out[dst + "input_layernorm.weight"] = sd[src + "input_layernorm.weight"]
        out[dst + "post_attention_layernorm.weight"] = sd[src + "pre_mlp_layernorm.weight"]
        gate, up = sd[src + "mlp.linear_fc1.weight"].chunk(2, dim=0)
        out[dst + "mlp.gate_proj.weight"] = gate
        out[dst + "mlp.up_proj.weight"] = up
        out[dst + "mlp.down_proj.weight"] = sd[src + "mlp.linear_fc2.weight"]
    out["model.norm.weight"] = sd["decoder.final_layernorm.weight"]
    if m.untie_embeddings_and_output_weights:
        out["lm_head.weight"] = sd["output_layer.weight"][:vocab_size]
    return {k: v.contiguous() for k, v in out.items()}


# -- Hugging Face -> megatron-core ---------------------------------------------------------


def model_settings_from_hf(config: dict, where: str) -> dict:
    """This project's model settings (Megatron-LM flag names) for a Llama `config.json`;
    refuses, naming the field, what megatron-core's GPT would compute differently."""
    def need(key):
        if config.get(key) is None:
            raise ConversionError(f"{where}: no '{key}'")
        return config[key]

    model_type = config.get("model_type")
    if model_type != "llama":
        raise ConversionError(f"{where}: model_type {model_type!r}; only Llama-style models ('llama') are supported")
    problems = []
    if config.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {config['hidden_act']!r} (only silu, i.e. SwiGLU)")
    for key in ("attention_bias", "mlp_bias"):
        if config.get(key):
            problems.append(f"{key} true (biases)")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if rope_type not in (None, "default"):
        problems.append(f"rope type {rope_type!r} (only plain RoPE)")
    if (config.get("pretraining_tp") or 1) != 1:
        problems.append(f"pretraining_tp {config['pretraining_tp']}")
    theta = (rope.get("rope_theta") if isinstance(rope, dict) else None) or config.get("rope_theta", 10000.0)
    if float(theta) != int(theta):
        problems.append(f"rope_theta {theta} (this project's --rotary-base is an integer)")
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
        "normalization": "RMSNorm",
        "norm_epsilon": float(config.get("rms_norm_eps", 1e-6)),
        "swiglu": True,
        "disable_bias_linear": True,
        "untie_embeddings_and_output_weights": not config.get("tie_word_embeddings", False),
        "init_method_std": float(config.get("initializer_range", 0.02)),
    }


def from_hf(hf: dict, m, vocab_size: int, padded_vocab: int, new_rows: Optional[list[int]] = None) -> dict:
    """Llama state dict -> megatron-core state dict (TP=1) with `padded_vocab` embedding rows.

    Token ids the Hugging Face model has no row for (appended delimiters, below `vocab_size`)
    and the rows listed in `new_rows` start as the mean of the existing rows (Hugging Face's
    `resize_token_embeddings` convention: a new token starts as an "average" token); the
    padding rows from `vocab_size` on, which belong to no token, are zero."""
    dims = resolved_dims(m)
    per_group = dims["heads"] // dims["groups"]
    d, h = dims["head_dim"], m.hidden_size

    def rows(matrix: torch.Tensor) -> torch.Tensor:
        out = matrix.new_zeros(padded_vocab, matrix.shape[1])
        keep = min(matrix.shape[0], vocab_size)
        mean = matrix.mean(dim=0)
        out[:keep] = matrix[:keep]
        out[keep:vocab_size] = mean
        for i in new_rows or []:
            out[i] = mean
        return out

    sd = {"embedding.word_embeddings.weight": rows(hf["model.embed_tokens.weight"])}
    for i in range(m.num_layers):
        src, dst = f"model.layers.{i}.", f"decoder.layers.{i}."
        q = hf[src + "self_attn.q_proj.weight"].reshape(dims["groups"], per_group * d, h)
        k = hf[src + "self_attn.k_proj.weight"].reshape(dims["groups"], d, h)
        v = hf[src + "self_attn.v_proj.weight"].reshape(dims["groups"], d, h)
        sd[dst + "self_attention.linear_qkv.weight"] = torch.cat([q, k, v], dim=1).reshape(-1, h)
        sd[dst + "self_attention.linear_proj.weight"] = hf[src + "self_attn.o_proj.weight"]
        sd[dst + "input_layernorm.weight"] = hf[src + "input_layernorm.weight"]
        sd[dst + "pre_mlp_layernorm.weight"] = hf[src + "post_attention_layernorm.weight"]
        sd[dst + "mlp.linear_fc1.weight"] = torch.cat([hf[src + "mlp.gate_proj.weight"], hf[src + "mlp.up_proj.weight"]])
        sd[dst + "mlp.linear_fc2.weight"] = hf[src + "mlp.down_proj.weight"]
    sd["decoder.final_layernorm.weight"] = hf["model.norm.weight"]
    if m.untie_embeddings_and_output_weights:
        head = hf.get("lm_head.weight")
        if head is None:
            raise ConversionError("config.json unties the embeddings but the checkpoint has no lm_head.weight")
        sd["output_layer.weight"] = rows(head)
    return {k: v.contiguous() for k, v in sd.items()}
