"""The flags of ``tools/online_ixt.py``: one typed dataclass (the driver's own), the
generator's sampling flags (``SamplingConfig``), the LLM judge's (``LLMCriticConfig``) and,
passed through untouched, ``pretrain_ixt.py``'s training flags."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional, Sequence

from megatron_ixt.config.flags import add_dataclass_arguments, dataclass_values
from megatron_ixt.config.schema import arg, required
from megatron_ixt.evaluation.generation import SamplingConfig
from megatron_ixt.feedback.base import CRITIC_NAMES
from megatron_ixt.feedback.cli import LLMCriticConfig
from megatron_ixt.online.tasks import MODES

DRIVER_TRAINING_FLAGS = ("--config", "--load", "--save", "--finetune", "--sft", "--no-sft", "--data-path", "--split",
                         "--train-data-path", "--valid-data-path", "--test-data-path", "--data-cache-path",
                         "--log-file", "--mock-data", "--tokenizer-type", "--tokenizer-model", "--vocab-file",
                         "--merge-file", "--vocab-size")
"""Training flags the driver sets itself each round, or that would train on other data or
another tokenizer than the round's dataset (refused when passed through)."""

SAMPLING_FIELDS = ("max_new_tokens", "temperature", "top_k", "top_p", "greedy")
"""The generator's sampling flags; its seed is --sample-seed (--seed goes to training, as in
Megatron-LM)."""

JUDGE_FIELDS = ("endpoint", "model", "api_key_env", "prompt", "max_tokens", "timeout", "max_retries", "concurrency",
                "extra_params")
"""The LLM judge's flags the driver passes on (its sampling temperature stays the judge's 0:
``--temperature`` is the generator's)."""


@dataclass
class OnlineConfig:
    """What the online stage starts from, how many rounds, and what each round does."""

    load: str = required("Checkpoint to start from (round 1 loads its weights with --finetune).")
    prompts: str = required("Prompts JSONL: {\"prompt\": ..., \"id\": ..., and what the critic needs: "
                            "reference_answer (math), tests and entry_point (python)}.")
    output_dir: str = required("Run folder: DIR/round_N/ per round (rerun the same command to resume).")
    rounds: int = arg(1, "Rounds of sample -> annotate -> train, each from the previous round's checkpoint.")
    samples_per_prompt: int = arg(4, "Samples per prompt and round.")
    mode: str = arg("ixt", "ixt: train on every sample with the feedback it earned; filter: on the accepted "
                           "samples only, without feedback (rejection-sampling fine-tuning); plain: on every "
                           "sample, without feedback (self-training).", choices=MODES)
    critic: str = arg("auto", "Which critic judges the samples (tools/annotate_feedback.py --critic).",
                      choices=CRITIC_NAMES)
    chat: bool = arg(False, "Prompts are user messages (an SFT model): the feedback goes in the system message "
                            "and training runs with --sft. Default: a prompt starts a document.")
    target_level: int = arg(5, "ixt: sample under this quality level (5: the best).", choices=(1, 2, 3, 4, 5))
    target_critique: Optional[str] = arg(None, "ixt with a critique template: sample under this written critique.")
    prefix_template: str = arg("quality", "ixt: the template of the earned feedback (tools/preprocess_data.py "
                                          "--prefix-template) and of the target.")
    quality_thresholds: str = arg("fixed", "How scores become levels: fixed fifths, or quantile: round 1's "
                                           "quintiles, kept for every later round.", choices=("fixed", "quantile"))
    sample_seed: int = arg(0, "Seed of the sampling (tools/generate.py --seed, plus the round's number - 1); "
                              "--seed is the training's.")
    batch_size: int = arg(64, "Prompts decoded together (tools/generate.py --batch-size).")
    stop: list = arg([], "Strings that end a sample (tools/generate.py --stop).", nargs="+")
    nproc_per_node: int = arg(1, "Training processes (torchrun --nproc-per-node; 1: plain python).")
    annotate_workers: Optional[int] = arg(None, "Samples judged at once (default: the critic's).")
    shard: Optional[str] = arg(None, "I/N: a cluster's array task: sample and annotate the I-th of N parts of the "
                                     "current round, then stop; the next start without --shard merges the parts "
                                     "and trains (README, \"Online stage\").")


def parse_shard(text: str) -> tuple[int, int]:
    """``I/N`` -> (I, N), 0 <= I < N."""
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        index, count = -1, 0
    if not 0 <= index < count:
        raise ValueError(f"--shard {text}: expected I/N with 0 <= I < N, e.g. 3/8")
    return index, count


@dataclass
class OnlineArgs:
    """The parsed command line: the driver's config, the sampling, the judge, and the
    training flags passed through to ``pretrain_ixt.py``."""

    config: OnlineConfig
    sampling: SamplingConfig
    judge: LLMCriticConfig
    training: list


def build_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tools/online_ixt.py", description=description, allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Every other flag goes to pretrain_ixt.py (each round's training), e.g. --train-iters 20 "
               "--micro-batch-size 8 --global-batch-size 8 --lr 1e-4.")
    add_dataclass_arguments(parser, OnlineConfig)
    add_dataclass_arguments(parser.add_argument_group("sampling (tools/generate.py)"), SamplingConfig,
                            fields=SAMPLING_FIELDS)
    add_dataclass_arguments(parser.add_argument_group("llm critic (tools/annotate_feedback.py)"), LLMCriticConfig,
                            fields=JUDGE_FIELDS)
    return parser


def parse_args(argv: Optional[Sequence[str]], description: str) -> OnlineArgs:
    """Parse the command line; a usage error exits 2 (argparse)."""
    parser = build_parser(description)
    args, training = parser.parse_known_args(argv)
    if training[:1] == ["--"]:
        training = training[1:]
    config = dataclass_values(args, OnlineConfig)
    for flag in training:
        if flag.split("=")[0] in DRIVER_TRAINING_FLAGS:
            parser.error(f"{flag.split('=')[0]}: the driver sets it for each round's training (the round's data, "
                         "the previous round's checkpoint and the model's own config)")
    for name in ("rounds", "samples_per_prompt", "batch_size", "nproc_per_node"):
        if getattr(config, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected a positive integer, got {getattr(config, name)}")
    if config.critic == "llm" and not (args.endpoint and args.model):
        parser.error("--critic llm needs --endpoint and --model")
    if config.shard is not None:
        try:
            parse_shard(config.shard)
        except ValueError as error:
            parser.error(str(error))
    if config.target_critique is not None and config.mode != "ixt":
        parser.error(f"--target-critique: --mode {config.mode} samples without feedback")
    judge = LLMCriticConfig(**{name: getattr(args, name) for name in JUDGE_FIELDS})
    return OnlineArgs(config, dataclass_values(args, SamplingConfig, seed=config.sample_seed), judge,
                      [str(t) for t in training])
