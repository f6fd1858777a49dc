#!/usr/bin/env python
"""Start-up time of the data tools: `--help` wall time (median of --repeats fresh processes).

    python benchmarks/startup.py [--repeats 5] [--tree DIR]

`--tree` times the tools of another checkout of this repository (its megatron_ixt is put
first on PYTHONPATH), e.g. an older commit extracted with `git archive`. Each run is a new
interpreter, as a user or a SLURM array shard starts it; the figure is wall time to exit.
Also lists which heavy libraries (torch, megatron-core) each tool's `--help` imported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOOLS = ("preprocess_data", "train_tokenizer", "annotate_feedback", "merge_datasets", "checkpoint_info")
HEAVY = ("torch", "megatron.core")

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tree", type=Path, default=REPO, help="checkout whose tools are timed")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(args.tree), os.environ.get("PYTHONPATH", "")])}
    print(f"--help start-up of {args.tree}/tools (median of {args.repeats}; load {os.getloadavg()[0]:.2f})")
    for tool in TOOLS:
        script = str(args.tree / "tools" / f"{tool}.py")
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            subprocess.run([sys.executable, script, "--help"], env=env, check=True, stdout=subprocess.DEVNULL)
            times.append(time.perf_counter() - start)
        # -X importtime lists every module imported, one per line ending in "| <name>".
        probe = subprocess.run([sys.executable, "-X", "importtime", script, "--help"], env=env,
                               capture_output=True, text=True)
        modules = {line.rsplit("|", 1)[-1].strip() for line in probe.stderr.splitlines() if line.startswith("import time:")}
        imported = ", ".join(m for m in HEAVY if m in modules)
        print(f"  {tool + '.py':<22} {statistics.median(times):6.3f} s  "
              f"(min {min(times):.3f}, max {max(times):.3f})  imports: {imported or 'neither torch nor megatron-core'}")


if __name__ == "__main__":
    main()
