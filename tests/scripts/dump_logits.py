"""Load a checkpoint at the layout given by the flags and save the full logits of a fixed
batch (test helper for resharding: run under torchrun)."""

import sys

import torch

from megatron_ixt.config.cli import parse_config
from megatron_ixt.evaluation.engine import InferenceModel, config_from_checkpoint, init_inference, on_output_rank
from megatron_ixt.runtime.distributed import destroy_distributed
from megatron_ixt.runtime.logs import setup_logging


def main(load: str, out: str, flags: list) -> None:
    setup_logging()
    layout, _ = parse_config(flags)
    cfg = config_from_checkpoint(load, {
        "tensor_model_parallel_size": layout.parallel.tensor_model_parallel_size,
        "pipeline_model_parallel_size": layout.parallel.pipeline_model_parallel_size,
        "sequence_parallel": False,
    })
    run = init_inference(cfg)  # the checkpoint's NullTokenizer: --vocab-size + EOD + 2 delimiters
    model = InferenceModel(run)
    tokens = torch.randint(0, cfg.tokenizer.vocab_size, (2, cfg.model.seq_length), generator=torch.Generator().manual_seed(0))
    logits = model.logits(tokens)
    losses = model.token_losses(tokens[:, :-1], tokens[:, 1:])
    if on_output_rank():
        torch.save({"logits": logits.cpu(), "losses": losses.cpu()}, out)
    destroy_distributed()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
