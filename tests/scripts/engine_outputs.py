"""Logits of fixed token batches and a greedy generation under the best feedback, from this
project's inference engine at the layout given by the flags (test helper for the Hugging
Face export: run under torchrun; rank 0 saves the results)."""

import argparse
import sys

import torch

from megatron_ixt.format.prefixes import prefix_token_ids
from megatron_ixt.evaluation.engine import add_inference_args, load_for_inference, on_output_rank
from megatron_ixt.evaluation.generation import Request, SamplingConfig, generate
from megatron_ixt.runtime.distributed import destroy_distributed
from megatron_ixt.runtime.logs import setup_logging


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
    args = parser.parse_args()
    cfg, model, tokenizer = load_for_inference(args)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, args.random_high or tokenizer.vocab_size, (2, args.random_length or cfg.model.seq_length),
                           generator=generator)
    prefix = [] if args.no_feedback else prefix_token_ids(tokenizer, "quality", 5)
    context = [*model.document_start_ids, *prefix, *tokenizer.tokenize(args.prompt)]
    logits = model.logits(tokens)
    context_logits = model.logits(torch.tensor([context]))
    [completion] = generate(model, tokenizer, [Request(context, args.max_new_tokens)], SamplingConfig(greedy=True))
    generated = completion.ids
    if on_output_rank():
        torch.save({"tokens": tokens, "logits": logits.cpu(), "context": context,
                    "context_logits": context_logits.cpu(), "generated_ids": generated,
                    "vocab_size": tokenizer.vocab_size, "eod": tokenizer.eod,
                    "document_start": cfg.model.document_start}, args.out)
    destroy_distributed()


if __name__ == "__main__":
    sys.exit(main())
