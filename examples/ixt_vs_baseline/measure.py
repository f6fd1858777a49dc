"""Measurements of one training run, in one process (TP=1), for the demo and for
examples/ixt_vs_baseline:

1. held-out loss of every saved checkpoint on high-quality held-out documents (text tokens
   only), under the conditions of the run's kind: ``plain`` (no prefix: ``[eod] text``),
   ``bos`` (``[eod] [bos] text``, the control trained with ``--prepend-bos``) and ``ixt``
   (no prefix, the best and the worst feedback: each document's ``best_feedback`` /
   ``worst_feedback``, or levels 5 and 1 with a quality template);
2. a task metric on the final checkpoint: continuations of held-out prompts, sampled
   under each condition and judged by the project's critics (text critic for prose,
   python critic for code).

    python examples/ixt_vs_baseline/measure.py --run ixt=CKPT_DIR --kind ixt \
        --heldout heldout_hq.jsonl --prompts prompts.jsonl --template quality --output ixt.json

One process (one core) loads every checkpoint of one run in turn: much cheaper than a
torchrun launch (and its start-up) per checkpoint; run.py measures the runs side by side.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch

from megatron_ixt.runtime.logs import setup_logging

setup_logging()

from megatron_ixt.format.prefixes import prefix_token_ids  # noqa: E402
from megatron_ixt.evaluation.engine import InferenceModel, config_from_checkpoint, init_inference  # noqa: E402
from megatron_ixt.evaluation.generation import Request, SamplingConfig, generate  # noqa: E402
from megatron_ixt.checkpoint.files import TRACKER_FILE, checkpoint_name  # noqa: E402

logger = logging.getLogger("megatron_ixt")
# Conditions measured per kind of run. Every condition scores exactly the same text tokens.
# The curves need one condition per reference and two for IXT (best: the headline; none:
# IXT without a prefix against plain); the worst feedback is measured at the final
# checkpoint only (the conditioning gap on good documents). Every forward pass counts
# against the demo's 15 minutes.
# The same-critique control ("same") is read under its one fixed prefix: its template
# renders the same text whatever the feedback, so "best" is that prefix. It has no task
# metric (sampling is the demo's most expensive measurement per condition).
CONDITIONS = {"plain": ("none",), "bos": ("bos",), "ixt": ("none", "best"), "same": ("best",)}
FINAL_CONDITIONS = {"plain": (), "bos": (), "ixt": ("worst",), "same": ()}
TASK_CONDITIONS = {"plain": ("none",), "bos": ("bos",), "ixt": ("best", "worst"), "same": ()}


def saved_iterations(ckpt: Path) -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in ckpt.glob("iter_*") if re.fullmatch(r"iter_\d{7}", p.name))


def checkpoint_view(ckpt: Path, iteration: int, root: Path) -> str:
    """A folder whose "latest" checkpoint is ``iteration`` of ``ckpt`` (a symlink and a
    tracker file): the inference tools always load the latest one, and there is no flag
    to pick another (see README)."""
    view = root / f"{ckpt.parent.name}_{ckpt.name}_{iteration}"
    view.mkdir(parents=True, exist_ok=True)
    link = Path(checkpoint_name(str(view), iteration))
    if not link.exists():
        link.symlink_to(Path(checkpoint_name(str(ckpt), iteration)).resolve(), target_is_directory=True)
    (view / TRACKER_FILE).write_text(str(iteration))
    return str(view)


# --- held-out loss ------------------------------------------------------------------------

def text_loss(model, sequences: list[tuple[list[int], int]], batch_size: int = 16) -> float:
    """Token-weighted mean loss of the text tokens of ``sequences`` ((tokens, context
    length) pairs: the first ``context`` tokens are the leading eod and the prefix)."""
    total, count = 0.0, 0
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]))  # less padding
    for start in range(0, len(order), batch_size):
        batch = [sequences[i] for i in order[start:start + batch_size]]
        length = max(len(seq) for seq, _ in batch)
        tokens = torch.zeros(len(batch), length, dtype=torch.long)
        for b, (seq, _) in enumerate(batch):
            tokens[b, :len(seq)] = torch.tensor(seq)
        losses = model.token_losses(tokens[:, :-1], tokens[:, 1:])
        for b, (seq, context) in enumerate(batch):
            total += losses[b, context - 1:len(seq) - 1].sum().item()
            count += len(seq) - context
    return total / count


def context_ids(tokenizer, template: str, doc: dict, condition: str) -> list[int]:
    """What precedes the text under ``condition``, after the leading eod."""
    if condition == "none":
        return []
    if condition == "bos":
        return [tokenizer.bos]
    feedback = doc.get(f"{condition}_feedback") or {"best": 5, "worst": 1}[condition]
    return prefix_token_ids(tokenizer, template, feedback)


def loss_sequences(tokenizer, docs: list[dict], template: str, seq_length: int,
                   conditions=("none", "bos", "best", "worst"), max_text_tokens: int = 0,
                   window_template: Optional[str] = None, start: Optional[list[int]] = None) -> dict[str, list]:
    """Per condition, ``[eod] context text`` for every document. The text window is the same
    in every condition and every run (cut so that the longest context still fits), so all
    conditions and all models score exactly the same tokens, as
    tools/evaluate_conditioning.py does. ``window_template``: another run's template whose
    longer prefixes must fit too (a run measured later beside the demo's scores its tokens).
    ``start``: the model's document start (default ``[eod]``, the models trained here; an
    imported model's may be empty, and then the first text token, which has no context
    without a prefix, is left out of every condition)."""
    start = [tokenizer.eod] if start is None else list(start)
    skip = 0 if start else 1
    out: dict[str, list] = {cond: [] for cond in conditions}
    for doc in docs:
        contexts = {cond: context_ids(tokenizer, template, doc, cond) for cond in conditions}
        longest = max(len(c) for c in contexts.values())
        if window_template:
            longest = max([longest] + [len(context_ids(tokenizer, window_template, doc, cond)) for cond in conditions])
        room = seq_length - longest - len(start)
        room = min(room, max_text_tokens + skip) if max_text_tokens else room
        text = list(tokenizer.tokenize(doc["text"]))[:room]
        for cond, context in contexts.items():
            out[cond].append(([*start, *context, *text], len(start) + len(context) + skip))
    return out


# --- task metric --------------------------------------------------------------------------

def complete_lines(code: str) -> str:
    """Generated code up to its last complete line (sampling stops mid-line)."""
    return code[:code.rfind("\n") + 1] if "\n" in code else ""


def judge(critics: dict, kind: str, prompt: str, continuation: str) -> dict:
    """The critic's verdict on a sample; "accepted" is level 4 or 5 (score >= 6/10)."""
    if kind == "code":
        doc = {"text": prompt + complete_lines(continuation), "domain": "code", "fragment": True}
        feedback = critics["python"].critique(doc)
    else:
        feedback = critics["text"].critique({"text": continuation, "domain": "prose"})
    return {"score": feedback.score, "accepted": feedback.score >= 6.0, "critique": feedback.critique}


def task_metric(model, tokenizer, prompts: list[dict], condition: str, template: str, args) -> dict:
    from megatron_ixt.feedback import build_critic

    # Sample length is our choice, not the model's: the text critic's length rules (fewer
    # than 50 words, fewer than 3 sentences) would fail every 64-token sample alike.
    critics = {"python": build_critic("python"),
               "text": build_critic("text", skip_rules=("too_short", "few_sentences"),
                                    min_checked_words=args.sample_min_words)}
    contexts, meta = [], []
    for p in prompts:
        for _ in range(args.samples_per_prompt):
            contexts.append([*model.document_start_ids, *context_ids(tokenizer, template, p, condition),
                             *tokenizer.tokenize(p["prompt"])])
            meta.append(p)
    # The library's batched generator (KV cache); each prompt samples from its own seeded stream.
    requests = [Request(c, max(0, min(args.gen_tokens, args.seq_length - len(c)))) for c in contexts]
    sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k, seed=args.seed)
    samples = [c.ids for c in generate(model, tokenizer, requests, sampling, batch_size=64)]
    results: dict = {}
    judged = []
    for p, ids in zip(meta, samples):
        text = tokenizer.detokenize(ids)
        verdict = judge(critics, p["kind"], p["prompt"], text)
        r = results.setdefault(p["kind"], {"samples": 0, "accepted": 0, "score_sum": 0.0})
        r["samples"] += 1
        r["accepted"] += verdict["accepted"]
        r["score_sum"] += verdict["score"]
        judged.append({"kind": p["kind"], "prompt": p["prompt"], "id": p.get("id"), "output": text, **verdict})
    for critic in critics.values():
        critic.close()
    for r in results.values():
        r["share_accepted"] = r["accepted"] / r["samples"]
        r["mean_score"] = r.pop("score_sum") / r["samples"]
    return {"by_kind": results, "samples": judged}


# --- main ---------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="NAME=CHECKPOINT_DIR")
    parser.add_argument("--kind", required=True, choices=sorted(CONDITIONS), help="what the run was trained on")
    parser.add_argument("--heldout", required=True, help="high-quality held-out documents (JSONL)")
    parser.add_argument("--prompts", help="task prompts (JSONL of {kind, prompt}); none: no task metric")
    parser.add_argument("--template", default="quality")
    parser.add_argument("--window-template", help="also fit this template's prefixes when choosing each "
                                                  "document's text window (the demo's, for a run added to it)")
    parser.add_argument("--seq-length", type=int, default=256)
    parser.add_argument("--gen-tokens", type=int, default=64)
    parser.add_argument("--max-text-tokens", type=int, default=0,
                        help="score at most this many text tokens per document (0: as many as fit)")
    parser.add_argument("--sample-min-words", type=int, default=40,
                        help="the text critic's least evidence for its spelling rule on samples")
    parser.add_argument("--samples-per-prompt", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    runs = dict([args.run.split("=", 1)])
    docs = [json.loads(line) for line in open(args.heldout, encoding="utf-8") if line.strip()]
    prompts = [json.loads(line) for line in open(args.prompts, encoding="utf-8")] if args.prompts else []

    overrides = {"tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1, "sequence_parallel": False,
                 "hidden_dropout": 0.0, "attention_dropout": 0.0}
    first = Path(next(iter(runs.values())))
    cfg = config_from_checkpoint(str(first), overrides)
    run = init_inference(cfg)
    tokenizer = run.tokenizer
    from megatron_ixt.format.errors import TokenizerError
    from megatron_ixt.tokenizers.base import document_start_ids

    try:  # the text window fits the BOS control's context too, where the tokenizer has a BOS
        tokenizer.bos
        windowed = ("none", "bos", "best", "worst")
    except (NotImplementedError, TokenizerError):  # an imported tokenizer without one (SmolLM2)
        windowed = ("none", "best", "worst")
    sequences = loss_sequences(tokenizer, docs, args.template, args.seq_length, conditions=windowed,
                               max_text_tokens=args.max_text_tokens, window_template=args.window_template,
                               start=document_start_ids(tokenizer, cfg.model.document_start))
    conditions, task_conditions = CONDITIONS[args.kind], TASK_CONDITIONS[args.kind]
    tokens_per_step = cfg.training.global_batch_size * cfg.model.seq_length
    result = {"documents": len(docs), "text_tokens": sum(len(s) - c for s, c in sequences["none"]),
              "tokens_per_step": tokens_per_step, "curves": {}, "task": {}}

    with tempfile.TemporaryDirectory(prefix="ixt-views-") as views:
        for name, ckpt in runs.items():
            ckpt = Path(ckpt)
            curve = result["curves"][name] = []
            iterations = saved_iterations(ckpt)
            for iteration in iterations:
                started = time.time()
                cfg.checkpoint.load = checkpoint_view(ckpt, iteration, Path(views))
                model = InferenceModel(run)
                point = {"iteration": iteration, "tokens": iteration * tokens_per_step}
                final = iteration == iterations[-1]
                for cond in conditions + (FINAL_CONDITIONS[args.kind] if final else ()):
                    point[cond] = text_loss(model, sequences[cond])
                curve.append(point)
                print(f"{name} iteration {iteration}: " + ", ".join(f"{c} {v:.4f}" for c, v in point.items()
                                                                     if c not in ("iteration", "tokens"))
                      + f" ({time.time() - started:.1f} s)", flush=True)
                if iteration == iterations[-1] and prompts:
                    for cond in task_conditions:
                        started = time.time()
                        task = task_metric(model, tokenizer, prompts, cond, args.template, args)
                        result["task"][f"{name}/{cond}"] = task
                        print(f"{name} {cond} task: " + ", ".join(
                            f"{k} {v['accepted']}/{v['samples']} accepted (mean score {v['mean_score']:.2f})"
                            for k, v in task["by_kind"].items()) + f" ({time.time() - started:.1f} s)", flush=True)
    tmp = args.output + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, args.output)
    torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
