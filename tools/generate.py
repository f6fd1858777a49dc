"""Generate text from a checkpoint under a chosen feedback prefix (test-time control).

    torchrun --nproc-per-node 2 tools/generate.py --load CKPT --tensor-model-parallel-size 2 \
        --prefix-template quality --feedback-level 5 --prompt "def fibonacci(n):" --greedy

    python tools/generate.py --load CKPT --critique "Correct, idiomatic, documented." \
        --prompt "def parse(" --top-p 0.9 --temperature 0.8

    python tools/generate.py --load SFT_CKPT --chat --feedback-level 5 --greedy \
        --prompt "What is 12 * 7?"

The prefix template defaults to the one the checkpoint was trained with (recorded in it).
With --chat (a model fine-tuned with pretrain_ixt.py --sft) the prompt is a user message:
the tokenizer's chat template renders it, with the chosen feedback in the system message,
as SFT trained it.
"""

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_ixt.runtime.logs import setup_logging  # noqa: E402

setup_logging()

from megatron_ixt.config.cli import ConfigError  # noqa: E402
from megatron_ixt.config.flags import add_dataclass_arguments, dataclass_values  # noqa: E402
from megatron_ixt.config.schema import arg, required  # noqa: E402
from megatron_ixt.evaluation.engine import (  # noqa: E402
    add_inference_args, load_for_inference, on_output_rank, prefix_template_for)
from megatron_ixt.evaluation.generation import (  # noqa: E402
    SamplingConfig, chat_context, continue_ids, control_prefix, generate)
from megatron_ixt.format.errors import DataError  # noqa: E402
from megatron_ixt.runtime.distributed import destroy_distributed  # noqa: E402


@dataclass
class ControlConfig:
    """What to continue and under which feedback (at most one of the last three)."""

    prompt: str = required("Text the model continues (with --chat: the user's message).")
    chat: bool = arg(False, "Answer the prompt as a user message, through the tokenizer's chat template, with the "
                            "feedback in the system message (models fine-tuned with --sft).")
    system: Optional[str] = arg(None, "With --chat: a system message (the feedback is appended to it).")
    feedback_level: Optional[int] = arg(None, "condition on a quality level", choices=(1, 2, 3, 4, 5))
    critique: Optional[str] = arg(None, "condition on a written critique (critique template)")
    no_feedback: bool = arg(False, "unconditional (no prefix)")


CONDITIONS = ("feedback_level", "critique", "no_feedback")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_inference_args(parser)
    add_dataclass_arguments(parser, ControlConfig, fields=("prompt", "chat", "system"))
    add_dataclass_arguments(parser.add_mutually_exclusive_group(), ControlConfig, fields=CONDITIONS)
    add_dataclass_arguments(parser, SamplingConfig)
    args = parser.parse_args()
    sampling = dataclass_values(args, SamplingConfig)
    try:
        cfg, model, tokenizer = load_for_inference(args)
        if args.system is not None and not args.chat:
            raise ValueError("--system needs --chat")
        if args.no_feedback:
            prefix = []
        else:
            template = prefix_template_for(model, args.prefix_template)
            prefix = control_prefix(tokenizer, template, args.feedback_level, args.critique,
                                    model.quality_thresholds())
        context = chat_context(tokenizer, args.prompt, prefix, args.system) if args.chat else None
    except (ConfigError, ValueError, OSError, DataError) as e:
        print(f"generate.py: error: {e}", file=sys.stderr)
        return 2
    if context is not None:
        text = tokenizer.detokenize(continue_ids(model, tokenizer, context, sampling, max_length=cfg.model.seq_length))
    else:
        text = generate(model, tokenizer, prefix, args.prompt, sampling, max_length=cfg.model.seq_length)
    if on_output_rank():
        print(f"[prefix] {tokenizer.detokenize(prefix) if prefix else '(none)'}")
        print(f"[prompt] {args.prompt}")
        print(f"[output] {text}")
    destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
