"""The online stage's rounds: sample under the target feedback, let the critics judge, train
on what was sampled with the feedback it earned (or, as baselines, on the accepted samples
only, or on every sample without feedback), and repeat from the new checkpoint.

Each stage is the project's own tool, run as a child process with its output shown and kept
in ``round_N/logs/STAGE.log``, so that a round on one machine is the same commands a cluster
runs as SLURM jobs (README, "Online stage"):

==========  ================================================  ===========================
stage       tool                                              writes (in ``round_N/``)
==========  ================================================  ===========================
sample      ``tools/generate.py --prompts-file``              ``requests.jsonl``,
                                                              ``samples.jsonl``
annotate    ``tools/annotate_feedback.py``                    ``documents.jsonl``,
                                                              ``annotations.jsonl``
dataset     ``tools/preprocess_data.py`` (``--sft``: chat)    ``train.jsonl``, ``dataset/``
train       ``pretrain_ixt.py`` (torchrun with N processes)   ``checkpoint/``
==========  ================================================  ===========================

**Resume.** A finished stage is recorded in ``round_N/state.json`` (with its wall time) only
once its outputs are complete (each tool writes to a temporary name, or resumes itself:
annotation and training); a new start skips what is recorded and reruns the stage that was
cut off, so a run killed after annotation trains without sampling again. The run's settings
are recorded in ``online.json``: a restart with another mode, critic, prompts file or target
is refused (start a new ``--output-dir``).

**On a cluster**, array tasks sample and annotate parts of a round (``--shard I/N``, in
``round_N/shards/``); the next start without ``--shard`` merges them and trains
(:meth:`Round.run_shard`).

**Levels.** "Accepted" is a verdict at level 4-5 (``tasks.ACCEPTED_LEVELS``). The level cut
points are chosen once, from round 1's verdicts (``thresholds.json``), and every round's
dataset and summary use them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Optional

import yaml

from megatron_ixt.checkpoint.files import checkpoint_path, read_tracker, write_atomic
from megatron_ixt.config.schema import Config, TokenizerConfig
from megatron_ixt.evaluation.prompts import write_jsonl
from megatron_ixt.evaluation.stats import wilson
from megatron_ixt.feedback.cli import LLMCriticConfig
from megatron_ixt.format.levels import NUM_LEVELS, QualityThresholds
from megatron_ixt.online.config import OnlineArgs, parse_shard
from megatron_ixt.online import tasks
from megatron_ixt.preprocess.config import TOKENIZER_FLAGS

logger = logging.getLogger("online_ixt")

REPO = Path(__file__).resolve().parents[2]
STAGES = ("sample", "annotate", "dataset", "train")
RECORDED_SETTINGS = ("load", "mode", "critic", "chat", "samples_per_prompt", "target_level", "target_critique",
                     "prefix_template", "quality_thresholds")
"""The settings a restart must share with the run it continues (online.json)."""


class StageFailed(RuntimeError):
    """A stage's tool exited non-zero; the message names it, its exit code and its log."""


def run_tool(command: list, log: Path) -> None:
    """Run one stage's tool, its output shown and appended to ``log``. A SIGTERM, SIGINT or
    SIGUSR1 to the driver is passed on to the tool."""
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [str(c) for c in command]
    with open(log, "a", encoding="utf-8") as sink:
        sink.write(f"$ {' '.join(command)}\n")
        sink.flush()
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 errors="replace", bufsize=1)
        # SIGUSR1 is the trainer's preemption warning (save, then exit 75): passed on too.
        previous = {s: signal.signal(s, lambda signum, _: child.send_signal(signum))
                    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
        try:
            for line in child.stdout:
                sys.stdout.write(line)
                sink.write(line)
            code = child.wait()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
    if code != 0:
        script = next(Path(c).name for c in command if c.endswith(".py"))
        raise StageFailed(f"{script} exited with {code}; its output is in {log}")


class OnlineRun:
    """The run folder and its rounds."""

    def __init__(self, args: OnlineArgs):
        self.args, self.cfg = args, args.config
        self.dir = Path(self.cfg.output_dir).resolve()

    # -- the run ------------------------------------------------------------------------

    def run(self) -> list[dict]:
        """Every round (the finished ones are read back); returns their summaries."""
        self.prompts = tasks.read_tasks(self.cfg.prompts, self.cfg.critic)
        checkpoint_config(self.cfg.load)
        self.dir.mkdir(parents=True, exist_ok=True)
        start, summaries = self.cfg.load, []
        for number in range(1, self.cfg.rounds + 1):
            round_ = Round(self, number, start)
            if number == 1:
                self.seq_length(round_)  # the training flags, checked before anything is sampled
                self._check_settings()
            if self.cfg.shard is not None and not round_.path("summary.json").exists():
                round_.run_shard(*parse_shard(self.cfg.shard))
                return summaries
            summary = round_.run()
            summaries.append(summary)
            start = summary["checkpoint"]
        return summaries

    def _check_settings(self) -> None:
        """Record the run's settings, or refuse a restart that changes them."""
        settings = {name: getattr(self.cfg, name) for name in RECORDED_SETTINGS}
        settings["load"] = str(Path(settings["load"]).resolve())
        settings["prompts_sha256"] = hashlib.sha256(Path(self.cfg.prompts).read_bytes()).hexdigest()
        record = self.dir / "online.json"
        if record.exists():
            before = json.loads(record.read_text())["settings"]
            changed = [k for k in settings if before.get(k) != settings[k]]
            if changed:
                raise ValueError(f"{record}: this run was started with other settings ("
                                 + "; ".join(f"{k}: {before.get(k)!r}, now {settings[k]!r}" for k in changed)
                                 + "); use a new --output-dir")
            return
        write_atomic(str(record), json.dumps({"settings": settings, "sampling": asdict(self.args.sampling),
                                              "training": self.args.training}, indent=2) + "\n")

    def thresholds(self) -> QualityThresholds:
        return QualityThresholds.from_dict(json.loads((self.dir / "thresholds.json").read_text()))

    # -- the commands of a round ----------------------------------------------------------

    def generate_command(self, round_: "Round", requests: Path, output: Path, seed_offset: int = 0) -> list:
        c, s = self.cfg, self.args.sampling
        command = [sys.executable, REPO / "tools/generate.py", "--load", round_.start, "--prompts-file",
                   requests, "--output", output, "--batch-size",
                   c.batch_size, "--max-new-tokens", s.max_new_tokens, "--temperature", s.temperature,
                   "--top-k", s.top_k, "--top-p", s.top_p, "--seed", s.seed + round_.number - 1 + seed_offset]
        command += ["--greedy"] * s.greedy + ["--chat"] * c.chat + (["--stop", *c.stop] if c.stop else [])
        if c.mode != "ixt":
            return command + ["--no-feedback"]
        target = ["--critique", c.target_critique] if c.target_critique else ["--feedback-level", c.target_level]
        return command + ["--prefix-template", c.prefix_template, *target]

    def annotate_command(self, documents: Path, output: Path) -> list:
        command = [sys.executable, REPO / "tools/annotate_feedback.py", "--input", documents, "--output", output,
                   "--critic", self.cfg.critic, "--summary-json", output.with_suffix(".summary.json")]
        if self.cfg.annotate_workers:
            command += ["--workers", self.cfg.annotate_workers]
        if self.cfg.critic == "llm":
            defaults = LLMCriticConfig()
            for f in fields(LLMCriticConfig):
                value = getattr(self.args.judge, f.name)
                if value is not None and value != getattr(defaults, f.name):
                    command += [f"--{f.name.replace('_', '-')}", value]
        return command

    def preprocess_command(self, round_: "Round", model: dict) -> list:
        c = self.cfg
        command = [sys.executable, REPO / "tools/preprocess_data.py", "--input", round_.path("train.jsonl"),
                   "--output-prefix", round_.path("dataset", "train"), "--prefix-template",
                   c.prefix_template if c.mode == "ixt" else "none", "--quality-thresholds",
                   thresholds_flag(self.thresholds()), *tokenizer_flags(model["tokenizer"])]
        if c.chat:
            return command + ["--sft", "--seq-length", self.seq_length(round_)]
        return command + ["--append-eod"] + ["--prepend-bos"] * (model["model"].get("document_start") == "bos")

    def train_command(self, round_: "Round") -> list:
        own = round_.path("checkpoint")
        # A round cut off while training resumes its own checkpoint; a new one fine-tunes
        # from the previous round's weights (new optimizer, iteration 0).
        resume = read_tracker(str(own)) is not None
        launch = [sys.executable] if self.cfg.nproc_per_node == 1 else [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", self.cfg.nproc_per_node]
        return [*launch, REPO / "pretrain_ixt.py", *self.training_flags(round_),
                "--load", own if resume else round_.start, *([] if resume else ["--finetune"])]

    def training_flags(self, round_: "Round") -> list:
        """The round's training flags but --load: the driver's, then the user's (theirs win)."""
        kind = "messages" if self.cfg.chat else "text"
        return ["--config", round_.path("model.yaml"), *["--sft"] * self.cfg.chat, "--save", round_.path("checkpoint"),
                "--data-path", round_.path("dataset", f"train_{kind}_document"), "--split", "100,0,0",
                "--data-cache-path", round_.path("cache"), "--log-file", round_.path("train_log.jsonl"),
                "--eval-interval", 0, *self.args.training]

    def seq_length(self, round_: "Round") -> int:
        """The training sequence length (the user's --seq-length, else the model's)."""
        from megatron_ixt.config.cli import parse_config

        cfg, _ = parse_config([str(a) for a in self.training_flags(round_)])
        return cfg.model.seq_length


def thresholds_flag(thresholds: QualityThresholds) -> str:
    """tools/preprocess_data.py's --quality-thresholds for the run's levels."""
    return "fixed" if thresholds.mode == "fixed" else ",".join(repr(c) for c in thresholds.cut_points)


def tokenizer_flags(tokenizer: dict) -> list:
    """The checkpoint's tokenizer as tools/preprocess_data.py's flags."""
    defaults, out = TokenizerConfig(), []
    for name in TOKENIZER_FLAGS:
        value = tokenizer.get(name)
        if value is not None and (name == "tokenizer_type" or value != getattr(defaults, name)):
            out += [f"--{name.replace('_', '-')}", *(value if isinstance(value, list) else [value])]
    return out


def checkpoint_config(load: str) -> dict:
    """The configuration a checkpoint was saved with (its ``config.yaml``)."""
    iteration = read_tracker(load)
    if iteration is None:
        raise ValueError(f"--load {load}: no checkpoint (missing latest_checkpointed_iteration.txt)")
    with open(os.path.join(checkpoint_path(load, iteration), "config.yaml"), encoding="utf-8") as f:
        return yaml.safe_load(f)


class Round:
    """``round_N/``: its stages, its state and its summary."""

    def __init__(self, run: OnlineRun, number: int, start: str):
        self.run_, self.number, self.start = run, number, str(start)
        self.dir = run.dir / f"round_{number}"
        self.dir.mkdir(parents=True, exist_ok=True)
        state = self.dir / "state.json"
        self.state = json.loads(state.read_text()) if state.exists() else {"start": self.start, "stages": {}}
        # A finished round is read back and needs nothing of its start checkpoint (which may
        # be pruned by then).
        self.model = None if self.path("summary.json").exists() else self._write_model_config()

    def path(self, *parts: str) -> Path:
        return self.dir.joinpath(*parts)

    def _write_model_config(self) -> dict:
        """``model.yaml``: the start checkpoint's model shape, tokenizer and layout (the
        values that differ from the defaults), what each round trains with."""
        saved = checkpoint_config(self.start)
        defaults = Config().to_dict()
        model = {k: v for k, v in saved["model"].items() if v != defaults["model"].get(k) or k == "seq_length"}
        config = {"model": model,
                  "tokenizer": {k: v for k, v in saved["tokenizer"].items() if v is not None},
                  "parallel": {k: saved["parallel"][k] for k in ("tensor_model_parallel_size",
                                                                 "pipeline_model_parallel_size")}}
        write_atomic(str(self.path("model.yaml")), f"# The model of {self.start}\n" + yaml.safe_dump(config, sort_keys=False))
        return config

    def run(self) -> dict:
        if self.path("summary.json").exists():  # a finished round
            return json.loads(self.path("summary.json").read_text())
        for stage in STAGES:
            done = self.state["stages"].get(stage)
            if done is not None:
                logger.info("round %d: %s: done before (%.1f s), kept", self.number, stage, done["wall_s"])
                continue
            logger.info("round %d: %s ...", self.number, stage)
            started = time.perf_counter()
            details = getattr(self, stage)() or {}
            self.state["stages"][stage] = {"wall_s": round(time.perf_counter() - started, 2), **details}
            write_atomic(str(self.path("state.json")), json.dumps(self.state, indent=2) + "\n")
            logger.info("round %d: %s done in %.1f s", self.number, stage, self.state["stages"][stage]["wall_s"])
        summary = self.summarize()
        write_atomic(str(self.path("summary.json")), json.dumps(summary, indent=2) + "\n")
        return summary

    # -- the stages ---------------------------------------------------------------------

    def sample(self) -> dict:
        requests = self._write_requests()
        parts = self._merge_shards(len(requests))
        if parts:
            return {"samples": len(requests), "shards": parts}
        run_tool(self.run_.generate_command(self, self.path("requests.jsonl"), self.path("samples.jsonl")),
                 self.path("logs", "sample.log"))
        return {"samples": len(requests)}

    def annotate(self) -> dict:
        samples = tasks.read_jsonl(self.path("samples.jsonl"))
        records = [r for r in (tasks.sample_record(s, self.run_.cfg.chat) for s in samples) if r is not None]
        if not self.state["stages"]["sample"].get("shards"):  # merged with the samples otherwise
            write_jsonl(self.path("documents.jsonl"), records)
            run_tool(self.run_.annotate_command(self.path("documents.jsonl"), self.path("annotations.jsonl")),
                     self.path("logs", "annotate.log"))
        thresholds = self.run_.dir / "thresholds.json"
        if self.number == 1 and not thresholds.exists():
            chosen = tasks.round_thresholds(tasks.read_jsonl(self.path("annotations.jsonl")),
                                            self.run_.cfg.quality_thresholds)
            write_atomic(str(thresholds), json.dumps(chosen.to_dict()) + "\n")
        return {"empty_answers": len(samples) - len(records)}

    # -- a cluster's array task: one part of the sampling and the annotation ----------------

    def _write_requests(self) -> list[dict]:
        requests = tasks.sample_requests(self.run_.prompts, self.run_.cfg.samples_per_prompt, self.number)
        write_jsonl(self.path("requests.jsonl"), requests)
        return requests

    def run_shard(self, index: int, count: int) -> None:
        """``--shard I/N``: sample and annotate the I-th of N consecutive parts of the round's
        requests into ``shards/``, then stop; the next start without ``--shard`` merges the
        parts in order (once all N are there) and goes on with the dataset and training. Each
        part seeds its samples from the seed, the part and their place in it, so N parts sample
        otherwise than one process."""
        requests = self._write_requests()
        name = f"{index}-of-{count}"
        done = self.path("shards", f"{name}.done.json")
        if done.exists():
            logger.info("round %d: shard %s: done before, kept", self.number, name)
            return
        mine = requests[index * len(requests) // count:(index + 1) * len(requests) // count]
        part = self.path("shards", f"{name}.requests.jsonl")
        part.parent.mkdir(exist_ok=True)
        write_jsonl(part, mine)
        samples, documents = part.with_name(f"{name}.samples.jsonl"), part.with_name(f"{name}.documents.jsonl")
        annotations = part.with_name(f"{name}.annotations.jsonl")
        started = time.perf_counter()
        if not mine:  # more parts than requests
            write_jsonl(samples, [])
        elif not samples.exists():
            run_tool(self.run_.generate_command(self, part, samples, seed_offset=1000 * (index + 1)),
                     self.path("logs", f"sample.{name}.log"))
        sampled = time.perf_counter()
        records = [r for r in (tasks.sample_record(s, self.run_.cfg.chat) for s in tasks.read_jsonl(samples))
                   if r is not None]
        if records:
            write_jsonl(documents, records)
            run_tool(self.run_.annotate_command(documents, annotations), self.path("logs", f"annotate.{name}.log"))
        else:  # nothing to judge (an empty part, or only empty answers)
            write_jsonl(annotations, [])
        write_atomic(str(done), json.dumps({"sample_s": round(sampled - started, 2),
                                            "annotate_s": round(time.perf_counter() - sampled, 2)}) + "\n")
        logger.info("round %d: shard %s sampled and annotated", self.number, name)

    def _merge_shards(self, expected: int) -> list[dict]:
        """Merge the array tasks' parts into samples.jsonl and annotations.jsonl, when all of
        one split are done; returns each part's wall times (none: no parts)."""
        done = sorted(self.path("shards").glob("*.done.json")) if self.path("shards").exists() else []
        if not done:
            return []
        counts = {int(p.name.split(".")[0].split("-of-")[1]) for p in done}
        if len(counts) != 1 or len(done) != next(iter(counts)):
            raise ValueError(f"{self.path('shards')}: {len(done)} finished parts of splits into {sorted(counts)}: "
                             "run every --shard I/N of one N (0 <= I < N) before the next stage")
        count = counts.pop()
        names = [f"{i}-of-{count}" for i in range(count)]
        samples = [line for n in names for line in tasks.read_jsonl(self.path("shards", f"{n}.samples.jsonl"))]
        if len(samples) != expected:
            raise ValueError(f"{self.path('shards')}: the parts hold {len(samples)} samples, the round asks {expected}")
        annotated = [line for n in names for line in tasks.read_jsonl(self.path("shards", f"{n}.annotations.jsonl"))]
        write_jsonl(self.path("samples.jsonl"), samples)
        write_jsonl(self.path("annotations.jsonl"), annotated)
        logger.info("round %d: merged the samples and annotations of %d parts", self.number, count)
        return [json.loads(self.path("shards", f"{n}.done.json").read_text()) for n in names]

    def dataset(self) -> dict:
        annotated = tasks.read_jsonl(self.path("annotations.jsonl"))
        train = tasks.training_records(annotated, self.run_.cfg.mode)
        write_jsonl(self.path("train.jsonl"), train)
        if train:
            run_tool(self.run_.preprocess_command(self, self.model), self.path("logs", "dataset.log"))
        return {"records": len(train)}

    def train(self) -> dict:
        if self.state["stages"]["dataset"]["records"] == 0:
            logger.warning("round %d: no training data (no accepted sample): the model is kept as it is",
                           self.number)
            return {"skipped": "no training data"}
        run_tool(self.run_.train_command(self), self.path("logs", "train.log"))
        return {}

    # -- the record ---------------------------------------------------------------------

    def summarize(self) -> dict:
        cfg, thresholds = self.run_.cfg, self.run_.thresholds()
        samples = tasks.read_jsonl(self.path("samples.jsonl"))
        annotated = tasks.read_jsonl(self.path("annotations.jsonl"))
        judged = [v for v in (tasks.earned(r, thresholds) for r in annotated) if v is not None]
        accepted_ids = {r["id"] for r in annotated if tasks.is_accepted(r)}
        accepted = len(accepted_ids)
        by_prompt: dict = {}
        for sample in samples:  # an empty chat answer was not judged: not accepted
            by_prompt.setdefault(sample["prompt_id"], []).append(sample["id"] in accepted_ids)
        scores = sorted(r["feedback"]["score"] for r in annotated if r.get("feedback"))
        trained = self.state["stages"]["train"].get("skipped") is None
        meta = self.path("dataset", f"train_{'messages' if cfg.chat else 'text'}_document.meta.json")
        log = [row for row in map(json.loads, self.path("train_log.jsonl").read_text().splitlines())
               if "consumed_samples" in row and "split" not in row] \
            if trained and self.path("train_log.jsonl").exists() else []
        low, high = wilson(accepted, len(samples))
        return {
            "round": self.number, "mode": cfg.mode, "start_checkpoint": self.start,
            "checkpoint": str(self.path("checkpoint")) if trained else self.start,
            "target_feedback": (None if cfg.mode != "ixt" else {"critique": cfg.target_critique} if cfg.target_critique
                                else {"level": cfg.target_level}),
            "prompts": len(by_prompt), "samples": len(samples),
            "accepted": accepted, "accepted_share": accepted / max(1, len(samples)),
            "accepted_share_wilson95": [low, high],
            "prompts_with_an_accepted_sample": sum(any(v) for v in by_prompt.values()),
            "judged": len(judged), "not_judged": len(annotated) - len(judged),
            "empty_answers": len(samples) - len(annotated),
            "levels": {str(level): sum(v[1] == level for v in judged) for level in range(1, NUM_LEVELS + 1)},
            "scores": score_distribution(scores),
            "thresholds": thresholds.to_dict(),
            "tokens": {"generated": sum(s.get("tokens", 0) for s in samples),
                       "dataset": json.loads(meta.read_text())["counts"]["tokens"] if meta.exists() else 0,
                       # the consumed samples x the sequence length (SFT padding included)
                       "trained_on": int(log[-1]["consumed_samples"]) * self.run_.seq_length(self) if log else 0},
            "training": {"records": self.state["stages"]["dataset"]["records"], "trained": trained,
                         "iterations": log[-1]["iteration"] if log else 0,
                         "lm_loss_first": log[0].get("lm loss") if log else None,
                         "lm_loss_last": log[-1].get("lm loss") if log else None},
            "finish_reasons": {k: sum(s.get("finish_reason") == k for s in samples) for k in ("eod", "stop", "length")},
            "wall_s": {stage: self.state["stages"][stage]["wall_s"] for stage in STAGES},
        }


def summary_table(summaries: list[dict]) -> str:
    """One line per round: what it sampled, what was accepted, what it trained on."""
    lines = ["| round | samples | accepted (share, Wilson 95%) | levels 1-5 | trained on | lm loss | wall s |",
             "|---|---|---|---|---|---|---|"]
    for s in summaries:
        low, high = s["accepted_share_wilson95"]
        t = s["training"]
        loss = (f"{t['lm_loss_first']:.3f} -> {t['lm_loss_last']:.3f}"
                if None not in (t["lm_loss_first"], t["lm_loss_last"]) else "-")
        lines.append(f"| {s['round']} | {s['samples']} | {s['accepted']} ({s['accepted_share']:.3f}, "
                     f"[{low:.3f}, {high:.3f}]) | {' '.join(str(n) for n in s['levels'].values())} | "
                     f"{t['records']} records, {t['iterations']} steps | {loss} | {sum(s['wall_s'].values()):.0f} |")
    return "\n".join(lines)


def score_distribution(scores: list) -> dict:
    if not scores:
        return {}
    def at(q: float) -> float:
        return scores[min(len(scores) - 1, int(q * len(scores)))]
    return {"min": scores[0], "p25": at(0.25), "median": at(0.5), "p75": at(0.75), "max": scores[-1],
            "mean": sum(scores) / len(scores)}
