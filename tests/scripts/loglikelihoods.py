"""Reference scores for the lm-eval backend's test: each (context ids, continuation ids) pair
of a JSON file scored alone with ``InferenceModel.token_losses`` (the continuation's summed
log-probability) and ``logits`` (whether every continuation token is the argmax), at the
layout given by the flags; rank 0 writes the results as JSON."""

import argparse
import json
import sys

import torch

from megatron_ixt.evaluation.engine import add_inference_args, load_for_inference, on_output_rank
from megatron_ixt.runtime.distributed import destroy_distributed
from megatron_ixt.runtime.logs import setup_logging


def main() -> None:
    setup_logging()
    parser = argparse.ArgumentParser()
    add_inference_args(parser)
    parser.add_argument("--pairs", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    _, model, tokenizer = load_for_inference(args)
    scores = []
    for context, continuation in json.loads(open(args.pairs).read()):
        tokens = torch.tensor([context + continuation])
        losses = model.token_losses(tokens[:, :-1], tokens[:, 1:])[0, -len(continuation):]
        best = model.logits(tokens[:, :-1])[0, -len(continuation):, :tokenizer.vocab_size].argmax(-1)
        scores.append([-float(losses.sum()), best.tolist() == continuation])
    if on_output_rank():
        with open(args.out, "w") as f:
            json.dump(scores, f)
    destroy_distributed()


if __name__ == "__main__":
    sys.exit(main())
