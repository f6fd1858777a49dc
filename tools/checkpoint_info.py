"""Print what a checkpoint folder holds: iterations, counters, layout, configuration, sizes.

    python tools/checkpoint_info.py CHECKPOINT_DIR [--iteration N] [--full-config]

Reads only the small common state (no process group, no model shards).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
warnings.filterwarnings("ignore")


def folder_size(path: str) -> tuple[int, int]:
    files = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
    return sum(os.path.getsize(f) for f in files), len(files)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint_dir")
    parser.add_argument("--iteration", type=int, help="inspect this iteration instead of the latest")
    parser.add_argument("--full-config", action="store_true", help="print every configuration field")
    args = parser.parse_args(argv)
    # Imported only now: torch and megatron-core take seconds to import, `--help` needs neither.
    import torch
    import yaml

    from megatron_ixt.training.checkpointing import PARTIAL_SUFFIX, checkpoint_name, read_tracker

    root = args.checkpoint_dir
    if not os.path.isdir(root):
        print(f"checkpoint_info.py: error: {root} is not a directory", file=sys.stderr)
        return 1
    latest = read_tracker(root)
    names = sorted(n for n in os.listdir(root) if n.startswith("iter_"))
    print(f"checkpoint folder: {root}")
    print(f"latest (latest_checkpointed_iteration.txt): {latest}")
    for name in names:
        size, count = folder_size(os.path.join(root, name))
        note = "  <- incomplete save, removed at the next start" if name.endswith(PARTIAL_SUFFIX) else ""
        print(f"  {name}: {size / 2**20:.2f} MiB in {count} files{note}")
    iteration = args.iteration if args.iteration is not None else latest
    if iteration is None:
        print("no complete checkpoint", file=sys.stderr)
        return 1
    path = checkpoint_name(root, iteration)
    common = torch.load(os.path.join(path, "common.pt"), map_location="cpu", weights_only=False)
    state = common.get("train_state", {})
    layout = common["layout"]
    print(f"\ncheckpoint: {path}")
    print(f"iteration: {common['iteration']}")
    print(f"consumed samples: {state.get('consumed_train_samples')} (validation: {state.get('consumed_valid_samples')})")
    print(f"skipped iterations: {state.get('skipped_iterations')}")
    print(f"saved with layout: TP {layout['tensor_model_parallel_size']} x PP {layout['pipeline_model_parallel_size']} "
          f"x DP {layout['data_parallel_size']} (loads into any layout)")
    print(f"padded vocabulary: {common.get('padded_vocab_size')}")
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
