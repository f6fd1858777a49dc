"""Generate text from a checkpoint under a chosen feedback (test-time control): one prompt, or
a file of prompts decoded in batches with a KV cache.

    torchrun --nproc-per-node 2 tools/generate.py --load CKPT --tensor-model-parallel-size 2 \
        --prefix-template quality --feedback-level 5 --prompt "def fibonacci(n):" --greedy

    python tools/generate.py --load CKPT --critique "Correct, idiomatic, documented." \
        --prompt "def parse(" --top-p 0.9 --temperature 0.8

    python tools/generate.py --load SFT_CKPT --chat --feedback-level 5 --greedy \
        --prompts-file questions.jsonl --output answers.jsonl --batch-size 64

The prefix template defaults to the one the checkpoint was trained with (recorded in it);
without a feedback flag, prompts are generated under the best quality level (5). With --chat
(a model fine-tuned with pretrain_ixt.py --sft) a prompt is a user message: the tokenizer's
chat template renders it, with the chosen feedback in the system message, as SFT trained it.

--prompts-file: JSON lines ``{"prompt": ..., "feedback": {...}}`` (``*.jsonl``; ``feedback``
optional, the document format's, overriding the flags for that prompt; other keys are copied
to the output) or plain text, one prompt per line. --output gets one JSON line per prompt, in
input order: the input's fields plus ``output``, ``tokens`` and ``finish_reason``
(``eod``, ``stop``, ``length``); without --output they go to standard output.
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
from megatron_ixt.config.schema import arg  # noqa: E402
from megatron_ixt.evaluation.control import Conditioner, FeedbackConfig, add_feedback_args  # noqa: E402
from megatron_ixt.evaluation.engine import add_inference_args, load_for_inference, on_output_rank  # noqa: E402
from megatron_ixt.evaluation.generation import Request, SamplingConfig, generate  # noqa: E402
from megatron_ixt.evaluation.prompts import Prompt, read_prompts, write_jsonl  # noqa: E402
from megatron_ixt.format.errors import DataError  # noqa: E402
from megatron_ixt.runtime.distributed import destroy_distributed  # noqa: E402
from megatron_ixt.runtime.progress import Progress  # noqa: E402


@dataclass
class PromptsConfig:
    """What to continue (one of the first two) and where the results go."""

    prompt: Optional[str] = arg(None, "Text the model continues (with --chat: the user's message).")
    prompts_file: Optional[str] = arg(None, "Many prompts: JSON lines {\"prompt\": ..., \"feedback\": {...}} "
                                            "(*.jsonl) or plain text, one prompt per line.")
    output: Optional[str] = arg(None, "With --prompts-file: write the results here (JSON lines, input order; "
                                      "default: standard output).")
    batch_size: int = arg(32, "Prompts decoded together.")
    stop: list = arg([], "Strings that end a generation (besides the end of document); the output is cut "
                         "before the first.", nargs="+")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_inference_args(parser)
    source = parser.add_mutually_exclusive_group(required=True)
    add_dataclass_arguments(source, PromptsConfig, fields=("prompt", "prompts_file"))
    add_dataclass_arguments(parser, PromptsConfig, fields=("output", "batch_size", "stop"))
    add_feedback_args(parser)
    add_dataclass_arguments(parser, SamplingConfig)
    args = parser.parse_args()
    sampling = dataclass_values(args, SamplingConfig)
    try:
        if args.output and not args.prompts_file:
            raise ValueError("--output needs --prompts-file")
        if args.batch_size < 1:
            raise ValueError(f"--batch-size {args.batch_size}: expected at least 1")
        prompts = read_prompts(args.prompts_file) if args.prompts_file else [Prompt(args.prompt, 0)]
        cfg, model, tokenizer = load_for_inference(args)
        control = Conditioner(model, tokenizer, dataclass_values(args, FeedbackConfig), args.prefix_template,
                              default_level=5, per_prompt_feedback=any(p.feedback for p in prompts))
        contexts = [control.context(p.text, p.feedback, p.system) for p in prompts]
        check_room(contexts, prompts, sampling.max_new_tokens, cfg.model.seq_length, args.prompts_file)
    except (ConfigError, ValueError, OSError, DataError) as e:
        print(f"generate.py: error: {e}", file=sys.stderr)
        return 2
    requests = [Request(c, sampling.max_new_tokens, tuple(args.stop)) for c in contexts]
    if args.prompts_file is None:
        [completion] = generate(model, tokenizer, requests, sampling)
        if on_output_rank():
            prefix = control.prefix
            print(f"[prefix] {tokenizer.detokenize(prefix) if prefix else '(none)'}")
            print(f"[prompt] {args.prompt}")
            print(f"[output] {completion.text}")
    else:
        progress = Progress("Generated", total=len(prompts), show_tokens=True, every_s=10.0, unit="prompts",
                            enabled=on_output_rank())
        done = [0]

        def report(tokens: int, finished: int) -> None:
            progress.update(finished - done[0], tokens=tokens)
            done[0] = finished

        completions = generate(model, tokenizer, requests, sampling, batch_size=args.batch_size, progress=report)
        progress.close(final_line=True)
        if on_output_rank():
            write_jsonl(args.output, [{**p.record, "output": c.text, "tokens": len(c.ids),
                                       "finish_reason": c.finish_reason} for p, c in zip(prompts, completions)])
    destroy_distributed()
    return 0


def check_room(contexts: list, prompts: list, max_new_tokens: int, seq_length: int, path: Optional[str]) -> None:
    """Refuse, before generating anything, a prompt that leaves no room for the tokens asked for."""
    for context, prompt in zip(contexts, prompts):
        if len(context) + max_new_tokens > seq_length:
            where = f"{path}:{prompt.line}: " if path else ""
            raise DataError(f"{where}the prompt takes {len(context)} tokens (with its feedback and the document "
                            f"start), which leaves {max(0, seq_length - len(context))} of the {max_new_tokens} "
                            f"new tokens asked for in the checkpoint's --seq-length {seq_length}")


if __name__ == "__main__":
    sys.exit(main())
