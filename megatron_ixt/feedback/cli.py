"""Command line of ``tools/annotate_feedback.py``: parse, build the critic, run, report.

Exit codes: 0 done; 2 bad arguments, bad input (the message names file, line and field)
or an output that cannot be resumed; 3 the judge could not be reached (rerun the same
command to resume); 130 interrupted with Ctrl-C (rerun to resume).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from megatron_ixt.config.flags import add_dataclass_arguments
from megatron_ixt.config.schema import arg, required
from megatron_ixt.feedback.annotate import ResumeError, annotate_file
from megatron_ixt.feedback.base import CRITIC_NAMES, JudgeUnavailable, build_critic
from megatron_ixt.format.errors import DataError

logger = logging.getLogger("annotate_feedback")


@dataclass
class AnnotateConfig:
    """What to annotate, where to write it and how much of it."""

    input: list = required("input JSONL file(s)", nargs="+")
    output: str = required("output JSONL (appended to when resuming)")
    critic: str = arg("auto", "which critic judges (auto: python/math/text by domain)", choices=CRITIC_NAMES)
    fraction: float = arg(1.0, "share of documents to annotate, chosen by a hash of (seed, id)")
    seed: int = arg(0, "seed of the --fraction selection")
    workers: Optional[int] = arg(None, "documents judged at once (default: the critic's own default)")
    overwrite: bool = arg(False, "re-judge documents that already carry feedback (default: keep it)")
    audit_file: Optional[str] = arg(None, "also write the judge's reasoning to this JSONL (llm critic)")
    summary_json: Optional[str] = arg(None, "write the summary as JSON here too")
    no_progress: bool = arg(False, "no progress line")
    log_level: str = arg("INFO", "logging threshold", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


@dataclass
class LLMCriticConfig:
    """The LLM judge: an OpenAI-compatible endpoint and the rubric it is asked."""

    endpoint: Optional[str] = arg(None, "OpenAI-compatible base URL, e.g. http://localhost:8000/v1")
    model: Optional[str] = arg(None, "judge model name as the endpoint knows it")
    api_key_env: Optional[str] = arg(None, "environment variable holding the API key "
                                           "(default: IXT_JUDGE_API_KEY, then OPENAI_API_KEY)")
    prompt: str = arg("rubric_v1", "rubric prompt: a name under megatron_ixt/feedback/prompts or a YAML path")
    temperature: float = arg(0.0, "sampling temperature of the judge")
    max_tokens: Optional[int] = arg(None, "tokens of one verdict at most (default: the endpoint's)")
    timeout: float = arg(120.0, "seconds per socket operation")
    max_retries: int = arg(5, "retries of a failed request")
    backoff: float = arg(1.0, "first retry wait in seconds (doubles)")
    concurrency: int = arg(8, "requests in flight at most")
    extra_params: Optional[str] = arg(None, 'JSON object merged into each request, e.g. \'{"top_p": 0.95}\'')


@dataclass
class PythonCriticConfig:
    """The python critic's sandbox limits (also used by auto)."""

    time_limit: float = arg(5.0, "seconds per test run")
    memory_limit: int = arg(1024, "MiB per test run")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Write critique feedback onto JSONL documents (resumable; rerun the same "
                    "command after a crash or Ctrl-C).")
    add_dataclass_arguments(parser, AnnotateConfig)
    add_dataclass_arguments(parser.add_argument_group("llm critic"), LLMCriticConfig)
    add_dataclass_arguments(parser.add_argument_group("python critic (also used by auto)"), PythonCriticConfig)
    return parser


def critic_kwargs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> dict[str, Any]:
    """Keyword settings for build_critic from the parsed flags."""
    if args.critic == "llm":
        if not args.endpoint or not args.model:
            parser.error("--critic llm needs --endpoint and --model")
        api_key = None
        if args.api_key_env:
            api_key = os.environ.get(args.api_key_env)
            if not api_key:
                parser.error(f"--api-key-env {args.api_key_env}: that variable is not set")
        try:
            extra = json.loads(args.extra_params) if args.extra_params else None
        except ValueError as error:
            parser.error(f"--extra-params is not JSON: {error}")
        return dict(endpoint=args.endpoint, model=args.model, api_key=api_key, prompt=args.prompt,
                    temperature=args.temperature, max_tokens=args.max_tokens, timeout_s=args.timeout,
                    max_retries=args.max_retries, backoff_s=args.backoff,
                    concurrency=args.concurrency, extra_params=extra)
    if args.critic in ("python", "auto"):
        return dict(time_limit_s=args.time_limit, memory_limit_mb=args.memory_limit)
    return {}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    if not 0.0 <= args.fraction <= 1.0:
        parser.error(f"--fraction must be within [0, 1], got {args.fraction}")
    try:
        critic = build_critic(args.critic, **critic_kwargs(args, parser))
    except (ValueError, OSError) as error:
        parser.error(str(error))
    try:
        summary = annotate_file(args.input, args.output, critic, fraction=args.fraction,
                                seed=args.seed, workers=args.workers, overwrite=args.overwrite,
                                audit_path=args.audit_file, progress=not args.no_progress)
    except (DataError, ResumeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except JudgeUnavailable as error:
        print(f"error: {error}\nThe finished documents are in {args.output}; rerun the same "
              "command to resume.", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print(f"\ninterrupted; the finished documents are in {args.output}; rerun the same "
              "command to resume.", file=sys.stderr)
        return 130
    finally:
        critic.close()
    print(summary.format())
    if args.summary_json:
        with open(args.summary_json, "w", encoding="utf-8") as handle:
            json.dump(summary.as_dict(), handle, indent=2)
    return 0
