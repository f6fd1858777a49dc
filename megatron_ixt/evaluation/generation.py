"""Sampling under a chosen feedback prefix (test-time control).

The context is ``[start] <|feedback|> prefix <|/feedback|> prompt``, as documents appear in
training; ``[start]`` is the model's document start (``--document-start``, recorded in its
checkpoint): the EOD for models pretrained here, the BOS or nothing for an imported model, as
its own tokenizer encodes a text (so greedy output equals transformers' ``generate``). The delimiter tokens (and the vocabulary padding) are blocked, so the model can
neither close nor open a prefix of its own. Every rank computes the same logits (broadcast
from the last pipeline stage) and samples with the same seeded generator, so all ranks agree
on each token without further communication. No KV cache: each step re-runs the context,
which is fine for the model sizes this runs on CPU; on GPU clusters use megatron-core's
inference engine for serving.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from megatron_ixt.config.schema import arg


@dataclass
class SamplingConfig:
    """How ``generate`` picks each next token; also the sampling flags of tools/generate.py."""

    max_new_tokens: int = arg(64, "Tokens to generate at most.")
    temperature: float = arg(1.0, "Divide the logits by this before sampling.")
    top_k: int = arg(0, "Sample among the k most likely tokens only (0: all).")
    top_p: float = arg(1.0, "Sample among the most likely tokens whose probabilities sum to this (nucleus).")
    greedy: bool = arg(False, "Always take the most likely token (no sampling).")
    seed: int = arg(0, "Seed of the sampling.")


def control_prefix(tokenizer, template: str, level: Optional[int] = None, critique: Optional[str] = None,
                   thresholds=None) -> list[int]:
    """Token ids of the prefix to generate under: a quality ``level`` (1..5, default 5) and,
    for a critique template, a written ``critique`` (default: none written)."""
    from megatron_ixt.format.prefixes import feedback_for_level, load_template, prefix_token_ids

    level = level or 5
    kind = load_template(template).kind
    if kind == "critique":
        return prefix_token_ids(tokenizer, template, feedback_for_level(level, critique=critique), thresholds)
    if critique is not None:
        raise ValueError(f"--critique needs a critique template; the prefix template is {template!r} ({kind})")
    return prefix_token_ids(tokenizer, template, level, thresholds)


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k then nucleus (top-p) filtering of a [V] logits vector."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        remove = cumulative - torch.softmax(sorted_logits, dim=-1) > top_p  # keep the token that crosses p
        logits = logits.clone()
        logits[order[remove]] = float("-inf")
    return logits


def generate(model, tokenizer, prefix_ids: list[int], prompt: str, cfg: SamplingConfig,
             blocked: Optional[list[int]] = None, max_length: Optional[int] = None) -> str:
    """Continue ``prompt`` after the given prefix token ids; returns the generated text."""
    return tokenizer.detokenize(generate_ids(model, tokenizer, prefix_ids, prompt, cfg, blocked, max_length))


def generate_ids(model, tokenizer, prefix_ids: list[int], prompt: str, cfg: SamplingConfig,
                 blocked: Optional[list[int]] = None, max_length: Optional[int] = None) -> list[int]:
    """As `generate`, but returns the generated token ids (without the final eod)."""
    context = [*model.document_start_ids, *prefix_ids, *tokenizer.tokenize(prompt)]
    return continue_ids(model, tokenizer, context, cfg, blocked, max_length)


def chat_context(tokenizer, user: str, feedback_ids: list[int], system: Optional[str] = None) -> list[int]:
    """The ids an SFT model continues to answer ``user``: the conversation rendered by the
    tokenizer's chat template with ``feedback_ids`` in the system message (as SFT trained it,
    ``tokenizers/chat.py``) and the template's generation prompt."""
    from megatron_ixt.tokenizers.chat import chat_template_for, render_ids

    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": user}]
    ids, _ = render_ids(tokenizer, chat_template_for(tokenizer), messages, feedback_ids or None,
                        add_generation_prompt=True)
    return ids.tolist()


def continue_ids(model, tokenizer, context: list[int], cfg: SamplingConfig, blocked: Optional[list[int]] = None,
                 max_length: Optional[int] = None) -> list[int]:
    """Sample after the token ids ``context`` until the eod or ``cfg.max_new_tokens``."""
    context = list(context)
    blocked = set(blocked or []) | {tokenizer.feedback_open_id, tokenizer.feedback_close_id}
    generator = torch.Generator().manual_seed(cfg.seed)
    out: list[int] = []
    for _ in range(cfg.max_new_tokens):
        if max_length is not None and len(context) >= max_length:
            break
        logits = model.logits(torch.tensor([context]))[0, -1].float().cpu()
        logits[tokenizer.vocab_size:] = float("-inf")  # TP padding of the vocabulary
        logits[list(blocked)] = float("-inf")
        if cfg.greedy or cfg.temperature <= 0:
            token = int(torch.argmax(logits))
        else:
            probs = torch.softmax(filter_logits(logits / cfg.temperature, cfg.top_k, cfg.top_p), dim=-1)
            token = int(torch.multinomial(probs, 1, generator=generator))
        if token == tokenizer.eod:
            break
        context.append(token)
        out.append(token)
    return out
