"""Print what a checkpoint folder holds: iterations, counters, layout, configuration, sizes.

    python tools/checkpoint_info.py CHECKPOINT_DIR [--iteration N] [--full-config]

Reads only the small common state (no process group, no model shards).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
warnings.filterwarnings("ignore")

from megatron_ixt.config.flags import add_dataclass_arguments  # noqa: E402
from megatron_ixt.config.schema import arg  # noqa: E402


@dataclass
class CheckpointInfoConfig:
    """The flags (the checkpoint folder is the one positional argument)."""
    iteration: Optional[int] = arg(None, "inspect this iteration instead of the latest")
    full_config: bool = arg(False, "print every configuration field")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # A positional, as before: the flag generator makes --flags only.
    parser.add_argument("checkpoint_dir")
    add_dataclass_arguments(parser, CheckpointInfoConfig)
    return parser


def folder_size(path: str) -> tuple[int, int]:
    files = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
    return sum(os.path.getsize(f) for f in files), len(files)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # Imported only now: torch and megatron-core take seconds to import, `--help` needs neither.
    import yaml

    from megatron_ixt.checkpoint.files import PARTIAL_SUFFIX, TRACKER_FILE, checkpoint_path, read_tracker
    from megatron_ixt.checkpoint.load import read_common_state
    from megatron_ixt.config.cli import ConfigError

    root = args.checkpoint_dir
    if not os.path.isdir(root):
        print(f"checkpoint_info.py: error: {root} is not a directory", file=sys.stderr)
        return 1
    latest = read_tracker(root)
    names = sorted(n for n in os.listdir(root) if n.startswith("iter_"))
    print(f"checkpoint folder: {root}")
    print(f"latest ({TRACKER_FILE}): {latest}")
    for name in names:
        size, count = folder_size(os.path.join(root, name))
        note = "  <- incomplete save, removed at the next start" if name.endswith(PARTIAL_SUFFIX) else ""
        print(f"  {name}: {size / 2**20:.2f} MiB in {count} files{note}")
    iteration = args.iteration if args.iteration is not None else latest
    if iteration is None:
        print("no complete checkpoint", file=sys.stderr)
        return 1
    path = checkpoint_path(root, iteration)
    try:
        common = read_common_state(path)
    except ConfigError as error:
        print(f"checkpoint_info.py: error: {error}", file=sys.stderr)
        return 1
    state = common.get("train_state", {})
    layout = common["layout"]
    print(f"\ncheckpoint: {path}")
    print(f"iteration: {common['iteration']}")
    print(f"consumed samples: {state.get('consumed_train_samples')} (validation: {state.get('consumed_valid_samples')})")
    print(f"skipped iterations: {state.get('skipped_iterations')}")
    print(f"saved with layout: TP {layout['tensor_model_parallel_size']} x PP {layout['pipeline_model_parallel_size']} "
          f"x DP {layout['data_parallel_size']} (loads into any layout)")
    print(f"padded vocabulary: {common.get('padded_vocab_size')}")
    from megatron_ixt.data.datasets import DOCUMENT_START_DATA, DOCUMENT_START_TEXT

    start = (common.get("config") or {}).get("model", {}).get("document_start") or "eod"
    print(f"document start: {start} (documents start with {DOCUMENT_START_TEXT[start]}; pretraining data is "
          f"preprocessed with {DOCUMENT_START_DATA[start][1]})")
    sched = common.get("opt_param_scheduler", {})
    print(f"scheduler: {sched.get('num_steps')} samples stepped, max lr {sched.get('max_lr')}, "
          f"decay {sched.get('lr_decay_style')}")
    config = common["config"]
    shown = config if args.full_config else {"model": config["model"], "parallel": config["parallel"]}
    print("\nconfiguration" + ("" if args.full_config else " (model and parallel; --full-config for all)") + ":")
    print(yaml.safe_dump(shown, sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
