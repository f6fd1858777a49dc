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
from typing import Any, Sequence

from megatron_ixt.feedback.annotate import ResumeError, annotate_file
from megatron_ixt.feedback.base import CRITIC_NAMES, JudgeUnavailable, build_critic
from megatron_ixt.format.errors import DataError

logger = logging.getLogger("annotate_feedback")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Write critique feedback onto JSONL documents (resumable; rerun the same "
                    "command after a crash or Ctrl-C).")
    parser.add_argument("--input", nargs="+", required=True, help="input JSONL file(s)")
    parser.add_argument("--output", required=True, help="output JSONL (appended to when resuming)")
    parser.add_argument("--critic", choices=CRITIC_NAMES, default="auto",
                        help="which critic judges (auto: python/math/text by domain)")
    parser.add_argument("--fraction", type=float, default=1.0,
                        help="share of documents to annotate, chosen by a hash of (seed, id)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the --fraction selection")
    parser.add_argument("--workers", type=int, default=None,
                        help="documents judged at once (default: the critic's own default)")
    parser.add_argument("--overwrite", action="store_true",
                        help="re-judge documents that already carry feedback (default: keep it)")
    parser.add_argument("--audit-file", default=None,
                        help="also write the judge's reasoning to this JSONL (llm critic)")
    parser.add_argument("--summary-json", default=None, help="write the summary as JSON here too")
    parser.add_argument("--no-progress", action="store_true", help="no progress line")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])

    llm = parser.add_argument_group("llm critic")
    llm.add_argument("--endpoint", help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1")
    llm.add_argument("--model", help="judge model name as the endpoint knows it")
    llm.add_argument("--api-key-env", default=None,
                     help="environment variable holding the API key "
                          "(default: IXT_JUDGE_API_KEY, then OPENAI_API_KEY)")
    llm.add_argument("--prompt", default="rubric_v1",
                     help="rubric prompt: a name under megatron_ixt/feedback/prompts or a YAML path")
    llm.add_argument("--temperature", type=float, default=0.0)
    llm.add_argument("--max-tokens", type=int, default=None)
    llm.add_argument("--timeout", type=float, default=120.0, help="seconds per socket operation")
    llm.add_argument("--max-retries", type=int, default=5)
    llm.add_argument("--backoff", type=float, default=1.0, help="first retry wait in seconds (doubles)")
    llm.add_argument("--concurrency", type=int, default=8, help="requests in flight at most")
    llm.add_argument("--extra-params", default=None,
                     help='JSON object merged into each request, e.g. \'{"top_p": 0.95}\'')

    code = parser.add_argument_group("python critic (also used by auto)")
    code.add_argument("--time-limit", type=float, default=5.0, help="seconds per test run")
    code.add_argument("--memory-limit", type=int, default=1024, help="MiB per test run")
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
