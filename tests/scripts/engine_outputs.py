"""Logits of fixed token batches and a greedy generation under the best feedback, from this
project's inference engine at the layout given by the flags (test helper for the Hugging
Face export: run under torchrun; rank 0 saves the results).

With ``--generation-prompts N`` it also continues the first N of a few prompts of different
lengths every way the generator can (``generations``): batched with the KV cache
(right-aligned, and left-aligned as megatron-core's static batching lays prompts out), one
prompt at a time, without a cache (the whole context through the model for every token,
``uncached``), and seeded sampling batched and one at a time."""

import argparse
import sys

import torch

from megatron_ixt.format.prefixes import prefix_token_ids
from megatron_ixt.evaluation.engine import add_inference_args, load_for_inference, on_output_rank
from megatron_ixt.evaluation.generation import Request, SamplingConfig, generate
from megatron_ixt.runtime.distributed import destroy_distributed
from megatron_ixt.runtime.logs import setup_logging


PROMPTS = ["def fibonacci(n):\n", "import os\n", "class Parser:\n    def __init__(self, text):\n        self.",
           "# Copyright", "    return [x for x in"]


def uncached(model, tokenizer, context: list, new_tokens: int, blocked: list) -> list:
    """Greedy without a cache: the whole context through the model for every token."""
    out = []
    for _ in range(new_tokens):
        logits = model.logits(torch.tensor([context + out]))[0, -1, :tokenizer.vocab_size].float()
        logits[blocked] = float("-inf")
        token = int(logits.argmax())
        if token == tokenizer.eod:
            break
        out.append(token)
    return out


def every_generation(model, tokenizer, prefix: list, args) -> dict:
    contexts = [[*model.text_start(prefix), *tokenizer.tokenize(p)] for p in PROMPTS[:args.generation_prompts]]
    requests = [Request(c, args.max_new_tokens) for c in contexts]
    greedy = SamplingConfig(greedy=True)
    sampled = SamplingConfig(temperature=0.8, top_k=20, top_p=0.95, seed=7)

    def ids(sampling, **options):
        return [c.ids for c in generate(model, tokenizer, requests, sampling, **options)]

    blocked = [tokenizer.feedback_open_id, tokenizer.feedback_close_id]
    return {"batched": ids(greedy, batch_size=len(requests)),
            "left_aligned": ids(greedy, batch_size=len(requests), right_aligned=False),
            "one_by_one": ids(greedy, batch_size=1),
            "uncached": [uncached(model, tokenizer, c, args.max_new_tokens, blocked) for c in contexts],
            "sampled": ids(sampled, batch_size=len(requests)),
            "sampled_one_by_one": ids(sampled, batch_size=1)}


def main() -> None:
    setup_logging()
    parser = argparse.ArgumentParser()
    add_inference_args(parser)
    parser.add_argument("--out", required=True)
    parser.add_argument("--prompt", default="def fibonacci(n):\n")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--no-feedback", action="store_true", help="generate without a prefix")
    parser.add_argument("--random-length", type=int, help="length of the random token rows (default: seq length)")
    parser.add_argument("--random-high", type=int, help="random ids below this (default: the vocabulary size)")
    parser.add_argument("--generation-prompts", type=int, default=0)
    args = parser.parse_args()
    cfg, model, tokenizer = load_for_inference(args)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, args.random_high or tokenizer.vocab_size, (2, args.random_length or cfg.model.seq_length),
                           generator=generator)
    prefix = [] if args.no_feedback else prefix_token_ids(tokenizer, "quality", 5)
    context = [*model.text_start(prefix), *tokenizer.tokenize(args.prompt)]
    logits = model.logits(tokens)
    context_logits = model.logits(torch.tensor([context]))
    [completion] = generate(model, tokenizer, [Request(context, args.max_new_tokens)], SamplingConfig(greedy=True))
    generated = completion.ids
    generations = every_generation(model, tokenizer, prefix, args) if args.generation_prompts else None
    if on_output_rank():
        torch.save({"tokens": tokens, "logits": logits.cpu(), "context": context,
                    "context_logits": context_logits.cpu(), "generated_ids": generated,
                    "vocab_size": tokenizer.vocab_size, "eod": tokenizer.eod,
                    "document_start": cfg.model.document_start, "generations": generations}, args.out)
    destroy_distributed()


if __name__ == "__main__":
    sys.exit(main())
