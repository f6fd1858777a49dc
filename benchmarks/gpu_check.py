"""The GPU acceptance run: ``make gpu-check``.

On a bare GPU machine (Python 3.12, a CUDA build of torch, no megatron-core, no Transformer
Engine, offline) it installs what is missing from the wheelhouse that ``make wheelhouse``
prepared on a CPU machine, then runs, in under 8 minutes:

1. the ``gpu``-marked tests (tests/test_gpu.py): BF16 with the torch attention at both
   normalizations, ``--exit-duration-in-mins``, save and exact resume on CUDA, CPU-vs-GPU
   fp32 loss parity with document masks;
2. ``benchmarks/train_step.py --preset 1b`` in BF16 with the torch attention: ms/iter,
   tokens/s, TFLOP/s, MFU and peak memory;

and prints one table. Without a GPU it says so in one line and exits 1.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def install_wheelhouse(wheelhouse: Path) -> dict:
    """Install the wheelhouse into a private folder and return the environment that uses it
    (nothing is written to the system's site-packages)."""
    env = dict(os.environ)
    try:
        import megatron.core  # noqa: F401

        return env
    except ImportError:
        pass
    wheels = sorted(glob.glob(str(wheelhouse / "*.whl")))
    if not wheels:
        raise SystemExit(f"gpu-check: megatron-core is not installed and {wheelhouse} has no wheels; "
                         "run `make wheelhouse` on a machine with network access and copy the folder here")
    target = Path(tempfile.gettempdir()) / "megatron_ixt_site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--upgrade", "--target", str(target), *wheels], check=True)
    env["PYTHONPATH"] = os.pathsep.join([str(target), str(REPO), env.get("PYTHONPATH", "")])
    return env


def run_tests(env: dict) -> list[tuple[str, str, float]]:
    """(test, outcome, seconds) for each gpu-marked test."""
    junit = Path(tempfile.mkdtemp()) / "gpu.xml"
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                    f"--junitxml={junit}", str(REPO / "tests" / "test_gpu.py")], cwd=REPO, env=env)
    import xml.etree.ElementTree as ET

    rows = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "FAILED"
            elif child.tag == "skipped":
                outcome = "skipped"
        rows.append((case.get("name"), outcome, float(case.get("time", 0))))
    return rows


def run_benchmark(env: dict, iters: int) -> tuple[str, int]:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "train_step.py"), "--preset", "1b", "--layouts",
                           "tp1", "--bf16", "--iters", str(iters), "--warmup", "5", "--extra", "--attention-backend",
                           "torch"], cwd=REPO, env=env, capture_output=True, text=True)
    return proc.stdout + (proc.stderr[-3000:] if proc.returncode else ""), proc.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheelhouse", type=Path, default=REPO / "wheelhouse")
    parser.add_argument("--iters", type=int, default=25, help="benchmark iterations (5 of them warm-up)")
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU visible (torch.cuda.is_available() is False): run it on a GPU machine")
        return 1
    start = time.time()
    env = install_wheelhouse(args.wheelhouse)
    device = f"{torch.cuda.get_device_name()} (compute capability {'.'.join(map(str, torch.cuda.get_device_capability()))})"
    tests = [] if args.skip_tests else run_tests(env)
    bench, bench_rc = run_benchmark(env, args.iters)

    print(f"\n== GPU acceptance: {device}, torch {torch.__version__}, CUDA {torch.version.cuda} ==")
    print(f"{'check':68} {'result':>8} {'s':>7}")
    for name, outcome, seconds in tests:
        print(f"{name:68} {outcome:>8} {seconds:>7.1f}")
    print("\nbenchmarks/train_step.py --preset 1b --bf16 --attention-backend torch:")
    print(bench.rstrip())
    failed = [n for n, o, _ in tests if o == "FAILED"]
    print(f"\n{len(tests) - len(failed)}/{len(tests)} GPU tests passed; benchmark "
          f"{'ok' if bench_rc == 0 else 'FAILED'}; {time.time() - start:.0f} s in all")
    mfu = re.search(r"(\d+\.\d)%", bench)
    if mfu:
        print(f"MFU {mfu.group(1)}% (target: at least 40% BF16 MFU at the 1b preset without Transformer Engine)")
    return 1 if failed or bench_rc else 0


if __name__ == "__main__":
    sys.exit(main())
