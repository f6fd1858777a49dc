"""The GPU acceptance run: ``python3 benchmarks/gpu_check.py`` (``make gpu-check`` calls it).

Made for short GPU windows (about 15 minutes, starts included; at most 10 per command): one
run gives the whole truth, and a kill at any moment keeps every figure measured so far.

On a bare GPU machine (Python 3.12, a CUDA build of torch, no megatron-core, no Transformer
Engine, offline) it first installs what is missing from the wheelhouse ``make wheelhouse``
prepared (into a private folder), then runs its phases in a fixed order, each under its
own deadline and all under one budget (``--budget-s``, default 480 s):

1. ``card``: the device, driver, torch/CUDA/Triton/megatron-core versions, the C compiler;
2. ``tests``: the ``gpu``-marked tests (tests/test_gpu.py): FlexAttention with document
   masks against SDPA at s=2048 in bf16 and fp32 (GQA, head_dim 128, full, partial and
   skipped blocks), no recompilation across micro-batches, BF16 training, the exit
   duration, save and exact resume, CPU-vs-GPU parity;
3. ``bench-plain``: the 1b preset in BF16 on real text without document masks (SDPA/flash);
4. ``bench-ixt``: the same text as IXT trains on it: critique prefixes, packed documents,
   document masks, FlexAttention;
5. ``bench-ixt-8k``: the IXT configuration at s=8192, if the budget still allows.

Output streams as it comes (each line prefixed with its phase). Every finished figure (a
test's outcome, a benchmark row, a phase's status) is appended at once to
``RESULTS/results.jsonl`` (flushed and synced) and the table so far rewritten to
``RESULTS/results.md``. A phase past its deadline is stopped with its whole process tree and
reported, a missing junit file too, and the later phases still run.

Without a GPU it says so in one line and exits 1, with or without torch installed.
``--dry-run`` runs the same plumbing (deadlines, streaming, results files) on CPU with
stand-in phases; the tests kill it mid-phase and find every earlier figure on disk.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
RESULT_PREFIX = "RESULT "
"""A phase's output line that carries a figure: ``RESULT {json}``."""
GRACE_S = 5.0
"""How long a phase past its deadline has between SIGTERM and SIGKILL."""
START = time.monotonic()
"""The run's clock: the budget and each figure's ``at_s`` count from here."""


# -- results ---------------------------------------------------------------------------------


class Results:
    """``results.jsonl`` (one JSON object per figure, appended, flushed and synced as it comes)
    and ``results.md`` (the table of all figures so far, replaced atomically after each)."""

    def __init__(self, folder: Path, title: str):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.jsonl, self.markdown = folder / "results.jsonl", folder / "results.md"
        self.jsonl.write_text("")
        self.title, self.rows = title, []
        self._write_markdown()

    def add(self, row: dict) -> None:
        row = {"at_s": round(time.monotonic() - START, 1), **row}
        with open(self.jsonl, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.rows.append(row)
        self._write_markdown()

    def _write_markdown(self) -> None:
        lines = [f"# {self.title}", "", "| phase | item | status | figures | s |", "|---|---|---|---|---|"]
        for r in self.rows:
            figures = ", ".join(f"{k} {_fmt(v)}" for k, v in r.items()
                                if k not in ("phase", "item", "status", "seconds", "at_s"))
            lines.append(f"| {r.get('phase', '')} | {r.get('item', '')} | {r.get('status', '')} | {figures} | "
                         f"{_fmt(r.get('seconds', ''))} |")
        tmp = self.markdown.with_suffix(".md.tmp")
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        os.replace(tmp, self.markdown)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)


# -- phases ----------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    cmd: list
    deadline_s: float
    optional: bool = False
    """Run only when the budget has at least ``deadline_s`` left (else: skipped, reported)."""
    needs_compiler: bool = False
    junit: Optional[Path] = None


def _die_with_parent() -> None:
    """In the child, before exec: a new process group (so a deadline can stop the whole tree),
    and SIGKILL when this script dies, even by SIGKILL (Linux), so no phase outlives the run."""
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, GRACE_S), (signal.SIGKILL, GRACE_S)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_phase(phase: Phase, deadline_s: float, env: dict, results: Results) -> str:
    """Run one phase, streaming its output and recording its figures; its status."""
    started = time.monotonic()
    proc = subprocess.Popen([str(c) for c in phase.cmd], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1,
                            preexec_fn=_die_with_parent)
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    status = None
    while status is None:
        left = deadline_s - (time.monotonic() - started)
        if left <= 0:
            _stop(proc)
            status = f"timeout after {deadline_s:.0f} s (deadline)"
            break
        try:
            line = lines.get(timeout=min(left, 1.0))
        except queue.Empty:
            continue
        if line is None:
            proc.wait()
            status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
            break
        print(f"[{phase.name}] {line}", end="", flush=True)
        if line.startswith(RESULT_PREFIX):
            try:
                row = json.loads(line[len(RESULT_PREFIX):])
            except ValueError:
                continue
            results.add({"phase": phase.name, **row})
    if phase.junit is not None and not phase.junit.exists():
        results.add({"phase": phase.name, "item": "junit", "status": "missing: pytest wrote no junit file"})
    results.add({"phase": phase.name, "item": "phase", "status": status,
                 "seconds": round(time.monotonic() - started, 1)})
    return status


def run_phases(phases: list, budget_s: float, env: dict, results: Results, compiler: Optional[str]) -> list:
    statuses = []
    for phase in phases:
        left = budget_s - (time.monotonic() - START)
        if phase.needs_compiler and compiler is None:
            status = "skipped: no C compiler (Triton needs one)"
        elif left < (phase.deadline_s if phase.optional else 5.0):
            status = f"skipped: {max(left, 0):.0f} s of the --budget-s left"
        else:
            print(f"== {phase.name} (deadline {min(phase.deadline_s, left):.0f} s, {left:.0f} s of the budget left)",
                  flush=True)
            statuses.append(run_phase(phase, min(phase.deadline_s, left), env, results))
            continue
        results.add({"phase": phase.name, "item": "phase", "status": status})
        statuses.append(status)
    return statuses


# -- the real run ----------------------------------------------------------------------------


def install_wheelhouse(wheelhouse: Path, env: dict) -> dict:
    """Install the wheelhouse into a private folder; the environment that uses it (nothing is
    written to the system's site-packages). Unchanged when megatron-core is importable."""
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
    return {**env, "PYTHONPATH": os.pathsep.join([str(target), str(REPO), env.get("PYTHONPATH", "")])}


def c_compiler() -> Optional[str]:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def card(torch, env: dict, compiler: Optional[str]) -> dict:
    """The environment the figures were measured in."""
    driver = ""
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True)
        driver = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
    probe = subprocess.run([sys.executable, "-c", "import megatron.core as m, triton as t; print(m.__version__, t.__version__)"],
                           capture_output=True, text=True, env=env)
    versions = probe.stdout.split() if probe.returncode == 0 else ["?", "?"]
    try:
        import transformer_engine  # noqa: F401

        te = getattr(transformer_engine, "__version__", "yes")
    except Exception:
        te = "none"
    return {"device": torch.cuda.get_device_name(),
            "capability": ".".join(map(str, torch.cuda.get_device_capability())),
            "driver, memory": driver, "torch": torch.__version__, "cuda": torch.version.cuda,
            "megatron_core": versions[0], "triton": versions[-1], "transformer_engine": te,
            "python": sys.version.split()[0], "cc": compiler or "none"}


def gpu_phases(args, results_dir: Path) -> list:
    python = sys.executable
    bench = [python, REPO / "benchmarks" / "train_step.py", "--preset", "1b", "--layouts", "tp1", "--bf16",
             "--iters", args.iters, "--warmup", 5, "--emit-results"]
    junit = results_dir / "gpu_tests.xml"
    return [
        Phase("tests", [python, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-p",
                        "benchmarks._pytest_results", f"--junitxml={junit}", REPO / "tests" / "test_gpu.py"],
              args.tests_deadline_s, needs_compiler=True, junit=junit),
        Phase("bench-plain", [*bench, "--data", "gpt", "--extra", "--attention-backend", "torch"],
              args.bench_deadline_s),
        Phase("bench-ixt", [*bench, "--data", "ixt", "--extra", "--attention-backend", "torch"],
              args.bench_deadline_s, needs_compiler=True),
        Phase("bench-ixt-8k", [*bench, "--data", "ixt", "--extra", "--attention-backend", "torch", "--seq-length",
                               8192, "--micro-batch-size", 1, "--global-batch-size", 4],
              args.bench_deadline_s, optional=True, needs_compiler=True),
    ]


# -- the dry run -----------------------------------------------------------------------------


def stand_in(rows: int, seconds: float, name: str) -> int:
    """A stand-in phase (--dry-run): ``rows`` figures spread over ``seconds``."""
    for i in range(rows):
        time.sleep(seconds / max(rows, 1))
        print(f"{name}: figure {i + 1} of {rows}", flush=True)
        print(RESULT_PREFIX + json.dumps({"item": f"{name} {i + 1}", "status": "ok", "value": i + 1}), flush=True)
    return 0


def dry_phases(args) -> list:
    me = [sys.executable, Path(__file__).resolve(), "--stand-in"]
    return [
        Phase("tests", [*me, "tests", "--rows", 3, "--seconds", 1], 30),
        Phase("bench-plain", [*me, "bench-plain", "--rows", 2, "--seconds", args.dry_run_seconds], 60),
        # Longer than its deadline: stopped, reported, and the run goes on.
        Phase("bench-ixt", [*me, "bench-ixt", "--rows", 4, "--seconds", 8], 3),
        Phase("bench-ixt-8k", [*me, "bench-ixt-8k", "--rows", 1, "--seconds", 0.2], 1, optional=True),
    ]


# -- main ------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheelhouse", type=Path, default=REPO / "wheelhouse")
    parser.add_argument("--results", type=Path, default=REPO / "outputs" / "gpu_check",
                        help="folder of results.jsonl, results.md and the Triton/Inductor caches")
    parser.add_argument("--budget-s", type=float, default=480.0, help="the whole run's deadline")
    parser.add_argument("--tests-deadline-s", type=float, default=210.0)
    parser.add_argument("--bench-deadline-s", type=float, default=100.0)
    parser.add_argument("--iters", type=int, default=20, help="benchmark iterations (5 of them warm-up)")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="the plumbing on CPU, with stand-in phases")
    parser.add_argument("--dry-run-seconds", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--stand-in", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stand_in:
        return stand_in(args.rows, args.seconds, args.stand_in)

    env = dict(os.environ)
    if args.dry_run:
        results = Results(args.results, "GPU acceptance (dry run on CPU: stand-in phases)")
        results.add({"phase": "card", "item": "device", "status": "dry run", "device": "none (CPU)",
                     "python": sys.version.split()[0]})
        statuses = run_phases(dry_phases(args), args.budget_s, env, results, c_compiler() or "none")
        print(f"dry run: {len(results.rows)} figures in {results.jsonl}")
        return 0 if statuses else 1

    try:
        import torch
    except ImportError:
        print("gpu-check: no CUDA GPU visible (torch is not installed): run it on a GPU machine with a CUDA build "
              "of torch")
        return 1
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU visible (torch.cuda.is_available() is False): run it on a GPU machine")
        return 1
    # Triton's and Inductor's caches in a folder this run owns (the default may be read-only).
    cache = args.results / "cache"
    for var, sub in (("TRITON_CACHE_DIR", "triton"), ("TORCHINDUCTOR_CACHE_DIR", "inductor")):
        (cache / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(cache / sub)
    compiler = c_compiler()
    if compiler is None:
        print("gpu-check: no C compiler (cc, gcc or clang) on PATH: Triton needs one to build FlexAttention's "
              "kernels; those phases are skipped (install gcc)")
    env = install_wheelhouse(args.wheelhouse, env)
    # The phases import this checkout's packages (tests, benchmarks) as well as megatron_ixt.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    results = Results(args.results, "GPU acceptance")
    info = card(torch, env, compiler)
    results.add({"phase": "card", "item": "environment", "status": "ok", **info})
    print("card: " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    phases = [p for p in gpu_phases(args, args.results) if not (args.skip_tests and p.name == "tests")]
    statuses = run_phases(phases, args.budget_s, env, results, compiler)
    print(f"\n{args.results / 'results.md'}:\n" + (args.results / "results.md").read_text())
    return 0 if all(s == "ok" or s.startswith("skipped") for s in statuses) else 1


if __name__ == "__main__":
    sys.exit(main())
