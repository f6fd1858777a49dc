"""Generation under a chosen feedback (test-time control): batched, with a KV cache, at any layout.

What a prompt is continued from (its feedback and its context) is ``evaluation.control``'s.
:func:`generate` decodes many prompts, ``batch_size`` at a time, on megatron-core's static
inference path (``engine.Decoder``: its KV cache and its forward step), as gpt-fast and
megatron-core's own ``TextGenerationController`` do, in a prefill and one-token decode steps:

1. prompts are sorted by length (longest first, as lm-eval does), so that a batch holds
   prompts of similar lengths; results come back in the input order;
2. **layout** (:class:`_Batch`): right-aligned, a batch's shorter prompts start later in the
   cache (their earlier positions masked), so that every prompt ends, and every row starts
   generating, at the same step; the prefill writes the prompts in one forward pass per group
   of similar lengths. Transformer Engine's attention takes no padding mask: there the
   prompts are left-aligned, as megatron-core's static batching lays them out, the prefill
   covers the shortest prompt, and a longer prompt feeds its own next token at each step
   until it ends (its step's sample ignored). RoPE depends on relative positions only, so a
   row's shift changes nothing; learned position embeddings get each row's own positions;
3. **decode**: one position per step for every row in the cache;
4. a row ends at the EOD, at a stop string, or after its ``max_new_tokens``; once a quarter
   of the rows still in the cache have ended, they are dropped from it, so finished rows
   stop costing compute; the batch ends when every row has.

Only the last position's logits leave the model (megatron-core's
``materialize_only_last_token_logits``): TP ranks gather them, and the last pipeline stage
samples and broadcasts the chosen ids alone to the other stages (:meth:`_Batch.step`).

Sampling: greedy, or temperature / top-k / top-p. Each prompt draws from its own generator,
seeded from the seed and the prompt's index (:func:`prompt_seed`), one draw per generated
token, so what a prompt samples does not depend on how prompts are batched. The feedback
delimiters (and the vocabulary's padding rows) are never sampled: the model can neither open
nor close a prefix of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

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
    seed: int = arg(0, "Seed of the sampling (each prompt draws from its own generator, seeded from this and "
                       "the prompt's index).")

    @property
    def is_greedy(self) -> bool:
        return self.greedy or self.temperature <= 0


@dataclass
class Request:
    """One prompt to continue: its token ids, how many tokens at most, and the strings that
    end it (besides the EOD)."""

    context: list[int]
    max_new_tokens: int
    stop: Sequence[str] = ()


@dataclass
class Completion:
    """What :func:`generate` made of one request."""

    ids: list[int] = field(default_factory=list)
    """The generated ids, without the EOD (with the tokens of a stop string that ended it)."""
    text: str = ""
    """The generated text, cut before the first stop string."""
    finish_reason: str = "length"
    """``eod``, ``stop`` (a stop string) or ``length`` (``max_new_tokens``)."""


# -- sampling ------------------------------------------------------------------------------

def prompt_seed(seed: int, index: int) -> int:
    """The seed of prompt ``index``'s generator: splitmix64 of both (torch's CPU generator
    keeps 32 bits of its seed, so the two cannot simply share one integer)."""
    mask = (1 << 64) - 1
    z = (seed * 0x9E3779B97F4A7C15 + index + 1) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k, then nucleus (top-p) filtering of logits [..., V]: what is filtered out gets -inf."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        remove = probs.cumsum(-1) - probs > top_p  # keep the token that crosses p
        logits = logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return logits


def sample(logits: torch.Tensor, sampling: SamplingConfig, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """One id per row of ``logits`` [n, V]; row ``i`` draws from ``generators[i]``."""
    if sampling.is_greedy:
        return logits.argmax(-1)
    probs = torch.softmax(filter_logits(logits / sampling.temperature, sampling.top_k, sampling.top_p), dim=-1)
    return torch.cat([torch.multinomial(row, 1, generator=g) for row, g in zip(probs, generators)])


# -- batched decoding ----------------------------------------------------------------------

PREFILL_TOKENS = 2048
"""A prefill pass of fewer tokens than this is slower per token (on 2 CPU cores, SmolLM2:
3.5 ms per token for one prompt of 136 tokens, 1.9 ms in passes of 2,000 or more)."""
PREFILL_PADDING = 0.125
"""The share of a prefill pass's tokens that may be left padding once it holds enough tokens."""


def prefill_groups(lengths: Sequence[int]) -> list[tuple[int, int]]:
    """Runs ``[first, last)`` of rows (``lengths``: longest first) prefilled together: a run
    grows while its pass is small, or while its padding (each row padded to the run's first,
    longest, length) stays within :data:`PREFILL_PADDING` of it."""
    groups, first = [], 0
    while first < len(lengths):
        last = first + 1
        while last < len(lengths):
            area = (last + 1 - first) * lengths[first]
            padding = area - sum(lengths[first:last + 1])
            if area - lengths[first] >= PREFILL_TOKENS and padding > PREFILL_PADDING * area:
                break
            last += 1
        groups.append((first, last))
        first = last
    return groups


class _Batch:
    """The rows of one batch being decoded (``requests``: this batch's, longest first).

    Row ``i``'s prompt sits at cache positions ``[starts[i], ends[i])``, its generated tokens
    after. Right-aligned (the torch attention, which takes padding masks), every prompt ends
    at the longest one's length and the shorter ones start later; left-aligned
    (megatron-core's static batching, for attention that takes no masks), every prompt starts
    at 0."""

    COMPACT_SHARE = 0.25  # drop finished rows from the cache once this share of its rows has ended

    def __init__(self, model, tokenizer, requests: list[Request], seeds: list[int], sampling: SamplingConfig,
                 blocked: list[int], right_aligned: bool) -> None:
        self.model, self.tokenizer, self.requests, self.sampling = model, tokenizer, requests, sampling
        self.blocked, self.right_aligned = blocked, right_aligned
        lengths = [len(r.context) for r in requests]
        longest = max(lengths)
        self.starts = [longest - n if right_aligned else 0 for n in lengths]
        self.ends = [start + n for start, n in zip(self.starts, lengths)]
        self.total = max(end + r.max_new_tokens for end, r in zip(self.ends, requests))
        self.tokens = torch.full((len(requests), self.total), tokenizer.eod, dtype=torch.long)
        for i, r in enumerate(requests):
            self.tokens[i, self.starts[i]:self.ends[i]] = torch.tensor(r.context, dtype=torch.long)
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.out = [Completion() for _ in requests]
        self.done = [r.max_new_tokens <= 0 for r in requests]
        self.checked = [0] * len(requests)  # characters of each row's text already searched for stop strings
        self.rows = list(range(len(requests)))  # the batch rows in the cache, in cache order

    def run(self, progress: Optional[Callable[[int], None]]) -> list[Completion]:
        if all(self.done):
            return self.out
        decoder = self.model.decoder(len(self.requests), self.total)
        position = min(self.ends)  # = every end when right-aligned
        logits = self.prefill(decoder, position)
        while True:
            generated = self.step(logits, position)
            if progress:
                progress(generated)
            active = [k for k, row in enumerate(self.rows) if not self.done[row]]
            if not active:
                return self.out
            if len(active) <= (1 - self.COMPACT_SHARE) * len(self.rows):
                decoder.keep(active)
                self.rows = [self.rows[k] for k in active]
            logits = decoder.forward(self.tokens[self.rows, position:position + 1], position,
                                     starts=self._starts(self.rows))
            position += 1

    def prefill(self, decoder, end: int) -> Optional[torch.Tensor]:
        """Every row's positions before ``end``, in one forward pass per group of rows of
        similar lengths (a group's shorter prompts are padded on the left, masked); the
        logits of the last position (on the last pipeline stage)."""
        outputs = [decoder.forward(self.tokens[a:b, self.starts[a]:end], self.starts[a], a, self._starts(range(a, b)))
                   for a, b in prefill_groups([end - start for start in self.starts])]
        return None if outputs[0] is None else torch.cat(outputs)

    def _starts(self, rows) -> Optional[torch.Tensor]:
        return torch.tensor([self.starts[r] for r in rows]) if self.right_aligned else None

    def step(self, logits: Optional[torch.Tensor], position: int) -> int:
        """Take the next token of every row whose prompt ends before ``position``: sampled on
        the last pipeline stage (``logits`` [rows in cache, V]; None on other stages),
        broadcast to every stage. Returns how many tokens the step generated."""
        wanting = [k for k, row in enumerate(self.rows) if not self.done[row] and self.ends[row] <= position]
        chosen = None
        if logits is not None:
            chosen = torch.full((len(self.rows),), -1, dtype=torch.long)
            if wanting:
                rows = logits[wanting]
                rows[:, self.blocked] = float("-inf")
                chosen[wanting] = sample(rows, self.sampling, [self.generators[self.rows[k]] for k in wanting]).cpu()
        chosen = self.model.broadcast_from_last_stage(
            None if chosen is None else chosen.to(self.model.device), torch.long).cpu().tolist()
        for k in wanting:
            self._append(self.rows[k], chosen[k], position)
        return len(wanting)

    def _append(self, row: int, token: int, position: int) -> None:
        out, request = self.out[row], self.requests[row]
        if token == self.tokenizer.eod:
            self._finish(row, "eod")
            return
        out.ids.append(token)
        self.tokens[row, position] = token
        if request.stop and self._hit_stop(row):
            self._finish(row, "stop")
        elif len(out.ids) >= request.max_new_tokens:
            self._finish(row, "length")

    def _hit_stop(self, row: int) -> bool:
        """Whether a stop string appears in the text generated so far (searching only from
        where the previous search could not yet have seen a whole one)."""
        text = self.tokenizer.detokenize(self.out[row].ids)
        longest = max(len(s) for s in self.requests[row].stop)
        start = max(0, self.checked[row] - longest + 1)
        self.checked[row] = len(text)
        return any(s in text[start:] for s in self.requests[row].stop)

    def _finish(self, row: int, reason: str) -> None:
        self.done[row] = True
        out = self.out[row]
        out.finish_reason = reason
        text = self.tokenizer.detokenize(out.ids) if out.ids else ""
        for stop in self.requests[row].stop:  # as lm-eval cuts: at the first occurrence of each
            text = text.split(stop)[0]
        out.text = text


def generate(model, tokenizer, requests: Sequence[Request], sampling: SamplingConfig, batch_size: int = 32,
             blocked: Sequence[int] = (), progress: Optional[Callable[[int, int], None]] = None,
             right_aligned: Optional[bool] = None) -> list[Completion]:
    """Continue every request (see the module docstring); results in the order of
    ``requests``. ``progress(new tokens, prompts finished)`` is called after every step.
    ``right_aligned``: how a batch's prompts are laid out (:class:`_Batch`; default: right
    when the model's attention takes padding masks). Every rank of the model must call this
    with the same arguments."""
    if right_aligned is None:
        right_aligned = model.takes_padding_masks
    if any(not r.context for r in requests):
        raise ValueError("a prompt of no tokens (nothing to continue from)")
    # An empty stop string (a tokenizer whose end of text decodes to "") would end every row.
    requests = [Request(r.context, r.max_new_tokens, tuple(s for s in r.stop if s)) for r in requests]
    blocked = sorted(set(blocked) | {tokenizer.feedback_open_id, tokenizer.feedback_close_id})
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i].context))
    results: list[Optional[Completion]] = [None] * len(requests)
    finished = 0
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        batch = _Batch(model, tokenizer, [requests[i] for i in chunk], [prompt_seed(sampling.seed, i) for i in chunk],
                       sampling, blocked, right_aligned)
        report = None
        if progress:
            def report(tokens, batch=batch, before=finished):
                progress(tokens, before + sum(batch.done))
        for i, completion in zip(chunk, batch.run(report)):
            results[i] = completion
        finished += len(chunk)
    return results
