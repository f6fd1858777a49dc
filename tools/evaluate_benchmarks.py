"""Benchmark accuracy of a checkpoint under a chosen feedback, through lm-evaluation-harness,
at any TP x PP layout.

    python tools/evaluate_benchmarks.py --load CKPT --tasks gsm8k_offline --output_path results/
    torchrun --nproc-per-node 2 tools/evaluate_benchmarks.py --load CKPT --tensor-model-parallel-size 2 \
        --tasks gsm8k_offline,humaneval_offline --feedback-level 5 --confirm_run_unsafe_code \
        --batch_size 32 --log_samples --output_path results/
    python tools/evaluate_benchmarks.py --load SFT_CKPT --chat --feedback-level 5 --tasks gsm8k_offline

lm-eval's own flags keep lm-eval's names (``--tasks``, ``--include_path``, ``--num_fewshot``,
``--limit``, ``--batch_size``, ``--output_path``, ``--log_samples``, ``--apply_chat_template``,
``--gen_kwargs``, ``--seed``, ``--confirm_run_unsafe_code``); the results JSON and the samples
files are lm-eval's, where lm-eval's tooling reads them. The rest are this project's: the
checkpoint and layout (as every inference tool), and the feedback every request is scored or
generated under: none (the default), ``--feedback-level N``, ``--critique TEXT``; ``--chat``
(SFT models) renders each request with the tokenizer's chat template with the feedback in the
system message, as SFT trained it.

Offline tasks come with the package: ``gsm8k_offline`` and ``humaneval_offline`` (written on
first use under ``$MEGATRON_IXT_CACHE``, default ``~/.cache/megatron_ixt``). Datasets are read
offline (``HF_DATASETS_OFFLINE=1``): lm-eval's own task files that download their data need
the data in the Hugging Face cache, or a task YAML of your own over local files
(``--include_path``; README, "Benchmarks under chosen feedback").
"""

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Before lm-eval imports datasets: nothing may download.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from megatron_ixt.runtime.logs import setup_logging  # noqa: E402

setup_logging()

from megatron_ixt.config.cli import ConfigError  # noqa: E402
from megatron_ixt.config.flags import add_dataclass_arguments, dataclass_values  # noqa: E402
from megatron_ixt.config.schema import arg, required  # noqa: E402
from megatron_ixt.evaluation.control import Conditioner, FeedbackConfig, add_feedback_args  # noqa: E402
from megatron_ixt.evaluation.engine import add_inference_args, load_for_inference, on_output_rank  # noqa: E402
from megatron_ixt.format.errors import DataError  # noqa: E402
from megatron_ixt.runtime.distributed import destroy_distributed  # noqa: E402


@dataclass
class HarnessConfig:
    """lm-evaluation-harness's flags, under lm-eval's names."""

    tasks: str = required("Comma-separated lm-eval task names (gsm8k_offline, humaneval_offline, or tasks found "
                          "through --include_path)", flag="tasks")
    include_path: Optional[str] = arg(None, "A folder of task YAMLs of your own (besides the offline tasks).",
                                      flag="include_path")
    num_fewshot: Optional[int] = arg(None, "Few-shot examples per request (default: each task's).", flag="num_fewshot")
    limit: Optional[float] = arg(None, "Evaluate at most this many documents per task (a fraction if below 1).",
                                 flag="limit")
    batch_size: int = arg(16, "Requests per forward pass (and prompts decoded together).", flag="batch_size")
    output_path: Optional[str] = arg(None, "Write lm-eval's results JSON (and with --log_samples the samples) "
                                           "under this folder.", flag="output_path")
    log_samples: bool = arg(False, "Also write every request, response and score.", flag="log_samples")
    apply_chat_template: bool = arg(False, "Render requests with the tokenizer's chat template (--chat also puts "
                                           "the feedback in the system message).", flag="apply_chat_template")
    gen_kwargs: Optional[str] = arg(None, "Generation settings overriding the tasks', e.g. "
                                          "'do_sample=True,temperature=0.7'.", flag="gen_kwargs")
    seed: str = arg("0,1234,1234,1234", "Seeds of python's random, numpy, torch and the few-shot sampler (one "
                                        "value sets all four); torch's also seeds sampled generation.", flag="seed")
    confirm_run_unsafe_code: bool = arg(False, "Allow tasks that execute model-written code (humaneval_offline "
                                               "runs it in this project's sandbox).",
                                        flag="confirm_run_unsafe_code")


def seeds(text: str) -> list[int]:
    """lm-eval's ``--seed``: one integer for all four seeds, or four."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--seed {text}: expected an integer or four comma-separated integers") from None
    if len(values) not in (1, 4):
        raise ValueError(f"--seed {text}: expected an integer or four comma-separated integers")
    return values * 4 if len(values) == 1 else values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_inference_args(parser)
    add_feedback_args(parser)
    add_dataclass_arguments(parser, HarnessConfig)
    args = parser.parse_args()
    harness = dataclass_values(args, HarnessConfig)
    try:
        seed = seeds(harness.seed)
        if harness.batch_size < 1:
            raise ValueError(f"--batch_size {harness.batch_size}: expected at least 1")
        if harness.limit is not None and harness.limit <= 0:
            raise ValueError(f"--limit {harness.limit:g}: expected a positive number")
        try:
            from megatron_ixt.evaluation.harness import IXTLM
        except ImportError as error:
            raise ImportError(f"{error}: lm-evaluation-harness is this tool's engine; pip install '.[eval]'") from None
        from megatron_ixt.evaluation.tasks import task_folder

        from lm_eval.tasks import TaskManager

        include = [str(task_folder())] + ([harness.include_path] if harness.include_path else [])
        manager = TaskManager(include_path=include)
        tasks = harness.tasks.split(",")
        unknown = [t for t in tasks if not manager.match_tasks([t])]
        if unknown:
            raise ValueError(f"--tasks: no lm-eval task {', '.join(unknown)} (the offline ones: gsm8k_offline, "
                             "humaneval_offline; yours: --include_path FOLDER; `lm-eval ls tasks` lists lm-eval's)")
        cfg, model, tokenizer = load_for_inference(args)
        control = Conditioner(model, tokenizer, dataclass_values(args, FeedbackConfig), args.prefix_template)
    except (ConfigError, ValueError, OSError, DataError, ImportError) as e:
        print(f"evaluate_benchmarks.py: error: {e}", file=sys.stderr)
        return 2
    import lm_eval

    if not on_output_rank():  # the other ranks run the same requests (collectives) and stay quiet
        import logging

        logging.getLogger("lm_eval").setLevel(logging.WARNING)
    lm = IXTLM(model, tokenizer, control, batch_size=harness.batch_size, seed=seed[2],
               show_progress=on_output_rank())
    tracker = None
    if harness.output_path:
        from lm_eval.loggers import EvaluationTracker

        tracker = EvaluationTracker(output_path=harness.output_path)
    limit = harness.limit
    if limit is not None and limit >= 1:
        limit = int(limit)
    chat = args.chat or harness.apply_chat_template
    results = lm_eval.simple_evaluate(
        model=lm, model_args=f"pretrained={args.load}", tasks=tasks,
        num_fewshot=harness.num_fewshot, batch_size=harness.batch_size, limit=limit,
        log_samples=harness.log_samples, evaluation_tracker=tracker, apply_chat_template=chat,
        fewshot_as_multiturn=chat, gen_kwargs=harness.gen_kwargs, task_manager=manager,
        random_seed=seed[0], numpy_random_seed=seed[1], torch_random_seed=seed[2], fewshot_random_seed=seed[3],
        confirm_run_unsafe_code=harness.confirm_run_unsafe_code)
    if on_output_rank() and results is not None:
        from lm_eval.utils import make_table

        print(make_table(results))
        if tracker is not None:
            samples = results.pop("samples", None) if harness.log_samples else None
            tracker.save_results_aggregated(results=results, samples=samples)
            for task_name in (results["configs"] if samples else ()):
                tracker.save_results_samples(task_name=task_name, samples=samples[task_name])
    destroy_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
