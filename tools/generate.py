"""Generate text from a checkpoint under a chosen feedback prefix (test-time control).

    torchrun --nproc-per-node 2 tools/generate.py --load CKPT --tensor-model-parallel-size 2 \
        --prefix-template quality --feedback-level 5 --prompt "def fibonacci(n):" --greedy

    python tools/generate.py --load CKPT --prefix-template critique \
        --critique "Correct, idiomatic, documented." --prompt "def parse(" --top-p 0.9 --temperature 0.8
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_ixt.runtime.logs import setup_logging  # noqa: E402

setup_logging()

from megatron_ixt.config.cli import ConfigError  # noqa: E402
from megatron_ixt.data.prefixes import feedback_for_level, prefix_token_ids  # noqa: E402
from megatron_ixt.evaluation.engine import add_inference_args, load_for_inference, on_output_rank  # noqa: E402
from megatron_ixt.evaluation.generation import SamplingConfig, generate  # noqa: E402
from megatron_ixt.runtime.distributed import destroy_distributed  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_inference_args(parser)
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--prefix-template", default="quality", help="the template the model was trained with")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--feedback-level", type=int, choices=range(1, 6), help="condition on a quality level")
    which.add_argument("--critique", help="condition on a written critique (critique template)")
    which.add_argument("--no-feedback", action="store_true", help="unconditional (no prefix)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--greedy", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    try:
        cfg, model, tokenizer = load_for_inference(args)
        if args.no_feedback:
            prefix = []
        elif args.critique is not None:
            level = args.feedback_level or 5
            prefix = prefix_token_ids(tokenizer, args.prefix_template, feedback_for_level(level, critique=args.critique)
                                      if args.prefix_template == "critique" else args.critique)
        else:
            level = args.feedback_level or 5
            feedback = feedback_for_level(level) if args.prefix_template == "critique" else level
            prefix = prefix_token_ids(tokenizer, args.prefix_template, feedback)
    except (ConfigError, ValueError, OSError) as e:
        print(f"generate.py: error: {e}", file=sys.stderr)
        return 2
    sampling = SamplingConfig(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.greedy, args.seed)
    text = generate(model, tokenizer, prefix, args.prompt, sampling, max_length=cfg.model.seq_length)
    if on_output_rank():
        print(f"[prefix] {tokenizer.detokenize(prefix) if prefix else '(none)'}")
        print(f"[prompt] {args.prompt}")
        print(f"[output] {text}")
    destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
