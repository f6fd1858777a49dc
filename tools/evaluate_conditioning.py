"""Measure how much a trained model uses feedback: the loss of held-out text under no
prefix, its own feedback, the best and the worst feedback.

    torchrun --nproc-per-node 2 tools/evaluate_conditioning.py --load CKPT \
        --input heldout.jsonl --output conditioning.json \
        [--tensor-model-parallel-size 2 | --pipeline-model-parallel-size 2]

    python tools/evaluate_conditioning.py --load SFT_CKPT --chat --input conversations.jsonl

With --chat (a model fine-tuned with --sft) the input is conversations (the SFT format:
``messages`` and an optional ``feedback``), and the losses are those of the assistant turns
with the feedback in the system message, as SFT trained it.

The prefix template and the quality thresholds (fixed fifths or the corpus quantiles)
default to those of the data the checkpoint was trained on, which it records.
"""

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_ixt.runtime.logs import setup_logging  # noqa: E402

setup_logging()

from megatron_ixt.config.cli import ConfigError  # noqa: E402
from megatron_ixt.config.flags import add_dataclass_arguments  # noqa: E402
from megatron_ixt.config.schema import arg, required  # noqa: E402
from megatron_ixt.format.errors import DataError  # noqa: E402
from megatron_ixt.evaluation.conditioning import evaluate_chat_conditioning, evaluate_conditioning  # noqa: E402
from megatron_ixt.evaluation.engine import (  # noqa: E402
    add_inference_args, load_for_inference, on_output_rank, prefix_template_for)
from megatron_ixt.runtime.distributed import destroy_distributed  # noqa: E402


def read_documents(path: str, limit: int, chat: bool = False) -> list:
    """The first ``limit`` documents of ``path`` (with ``chat``: conversations, one item per
    conversation of a line)."""
    from megatron_ixt.format.conversation import parse_conversation_line

    docs = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            if chat:
                line = parse_conversation_line(raw.rstrip(b"\n"), path, number)
                docs += [{**line.obj, "messages": list(turns)} for turns in line.conversations]
            else:
                try:
                    doc = json.loads(raw)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{number}: not valid JSON ({e.msg})") from None
                if not isinstance(doc, dict) or not isinstance(doc.get("text"), str):
                    raise DataError(f"{path}:{number}: field 'text': expected a string")
                docs.append(doc)
            if len(docs) >= limit:
                return docs[:limit]
    return docs


@dataclass
class EvaluationConfig:
    """The documents to evaluate and how (besides the inference flags)."""

    input: str = required("held-out JSONL documents, or conversations with --chat (with or without feedback)")
    chat: bool = arg(False, "SFT models: the input is conversations; score the assistant turns with the feedback in "
                            "the system message")
    max_docs: int = arg(200, "documents read from --input at most")
    seq_length: Optional[int] = arg(None, "longest sequence (document start + prefix + text) evaluated; default and "
                                          "maximum: the checkpoint's --seq-length")
    batch_size: int = arg(8, "sequences per forward pass")
    output: Optional[str] = arg(None, "write the per-document results and the summary here (JSON)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_inference_args(parser)
    add_dataclass_arguments(parser, EvaluationConfig)
    args = parser.parse_args()
    try:
        docs = read_documents(args.input, args.max_docs, args.chat)
        cfg, model, tokenizer = load_for_inference(args)
        template = prefix_template_for(model, args.prefix_template)
        seq_length = args.seq_length or cfg.model.seq_length
        if not 2 < seq_length <= cfg.model.seq_length:
            raise ConfigError(f"--seq-length {seq_length}: expected 3 .. {cfg.model.seq_length} (the checkpoint's "
                              "--seq-length, the longest sequence the model was trained on)")
    except (ConfigError, DataError, OSError) as e:
        print(f"evaluate_conditioning.py: error: {e}", file=sys.stderr)
        return 2
    start = time.time()

    def progress(done, total):
        if on_output_rank() and (done == total or done % (args.batch_size * 10) == 0):
            rate = done / max(time.time() - start, 1e-9)
            print(f"  {done}/{total} forward passes ({rate:.1f}/s, ETA {(total - done) / max(rate, 1e-9):.0f} s)",
                  flush=True)

    evaluate = evaluate_chat_conditioning if args.chat else evaluate_conditioning
    result = evaluate(model, tokenizer, docs, template, seq_length, args.batch_size,
                      thresholds=model.quality_thresholds(), progress=progress)
    if on_output_rank():
        print(f"checkpoint {args.load} (iteration {model.iteration}), {len(result.per_document)} documents, "
              f"template {template}, quality thresholds {model.quality_thresholds().mode}")
        print(result.table())
        if args.output:
            tmp = args.output + ".tmp"
            with open(tmp, "w") as f:
                f.write(result.to_json())
            os.replace(tmp, args.output)
    destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
