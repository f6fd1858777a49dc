"""The GPU acceptance run: ``python3 benchmarks/gpu_check.py`` (``make gpu-check`` calls it).

Made for short GPU windows (about 15 minutes, starts included; at most 10 per command): one
run gives the whole truth, and a kill at any moment keeps every figure measured so far.

On a bare GPU machine (Python 3.12, a CUDA build of torch, no megatron-core, no Transformer
Engine, offline) it first installs what is missing from the wheelhouse ``make wheelhouse``
prepared (into a private folder), then runs its phases in a fixed order, each under its
own deadline and all under one budget (``--budget-s``, default 540 s):

1. ``card``: the device, driver, torch/CUDA/Triton/megatron-core versions, the C compiler,
   the benchmarks' tokenizer;
2. ``tests``: the ``gpu``-marked tests (tests/test_gpu.py): FlexAttention with document
   masks against SDPA at s=2048 in bf16 and fp32 (GQA, head_dim 128, full, partial and
   skipped blocks), no recompilation across micro-batches, BF16 training, the exit
   duration, save and exact resume, CPU-vs-GPU parity;
3. ``bench-plain``: the 1b preset in BF16 on real text without document masks (SDPA/flash);
   it saves its last iteration into ``SCRATCH/checkpoint-1b`` (``--scratch``), which ``generate`` loads;
4. ``generate``: ``benchmarks/generate.py --engine ours`` on that checkpoint (bf16, CUDA):
   64 prompts of real text (16-256 tokens) x 128 new tokens, greedy, in one batch of 64:
   tokens/s and peak memory. Skipped, with the reason, when bench-plain saved no checkpoint;
5. ``bench-ixt``: the same text as IXT trains on it: critique prefixes, packed documents,
   document masks, FlexAttention;
6. ``bench-ixt-8k``: the IXT configuration at s=8192, if the budget still allows.

The benchmarks tokenize with SmolLM2's tokenizer.json (49,152 pieces; the feedback
delimiters appended as ids 49,152 and 49,153, as for a model imported from Hugging Face),
which ``make wheelhouse`` writes into ``wheelhouse/tokenizer/``; without it they fall back,
with a warning in the card, to a SentencePiece model of 4,000 pieces trained on the corpus.
The card and every benchmark row name the tokenizer.

Output streams as it comes (each line prefixed with its phase). Every finished figure (a
test's outcome, a benchmark row, a phase's status) is appended at once to
``RESULTS/results.jsonl`` (flushed and synced) and the table so far rewritten to
``RESULTS/results.md``; a figure is a ``RESULT {json}`` line whose object has an ``item``. A
phase past its own deadline is stopped with its whole process tree and reported ("timeout
after N s (deadline)"); one whose deadline the budget shortened and that ran into it, as
"cut short by --budget-s after N s"; a missing junit file too; the later phases still run.

Exit status (the last row of the results too):

* 0: every phase passed (an optional phase skipped for want of budget counts: it runs only
  if the budget allows);
* 1: a phase failed, timed out, was cut short by ``--budget-s``, or was skipped for want of
  budget although required, or ``generate`` found no checkpoint after bench-plain failed;
  also: no GPU, or no wheelhouse to install megatron-core from;
* 3: nothing failed, but a phase was skipped for want of a C compiler (Triton needs one) or
  of a Python package.

Without a GPU it says so in one line and exits 1, with or without torch installed.
``--dry-run`` runs the same plumbing (deadlines, streaming, results files, a phase that needs
an earlier phase's file) on CPU with stand-in phases, and exits 0 when each ends as designed;
the tests kill it mid-phase and find every earlier figure on disk.
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
    needs: tuple = ()
    """Modules the phase imports that a GPU image may lack (probed in the phases' environment)."""
    needs_file: Optional[Path] = None
    """A file an earlier phase (``made_by``) leaves: without it the phase is skipped."""
    made_by: Optional[str] = None
    junit: Optional[Path] = None


PASSED, NOT_RUN, UNAVAILABLE, FAILED = "passed", "not run", "unavailable", "failed"
"""A phase's verdict: ``NOT_RUN`` is an optional phase the budget left out (by design);
``UNAVAILABLE`` one skipped for want of a C compiler or a package."""
EXIT_STATUS = {0: "every phase passed", 1: "a phase failed, timed out or was cut short",
               3: "nothing failed, but a phase was skipped for want of a C compiler or a package"}


@dataclass(frozen=True)
class Outcome:
    phase: str
    status: str
    """As the results record it: ``ok``, ``failed (exit N)``, ``timeout ...``, ``skipped: ...``."""
    verdict: str


def exit_status(outcomes: list) -> int:
    """1 if any phase failed, else 3 if any was unavailable, else 0 (module docstring)."""
    verdicts = {o.verdict for o in outcomes}
    return 1 if FAILED in verdicts else 3 if UNAVAILABLE in verdicts else 0


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


SHOWN_CHARS = 2000
"""Longer output lines are shortened on the console (generate.py's row of every token id)."""


def run_phase(phase: Phase, deadline_s: float, env: dict, results: Results, budget_cut: bool = False) -> Outcome:
    """Run one phase, streaming its output and recording its figures. ``budget_cut``: the
    budget shortened ``deadline_s`` below the phase's own deadline."""
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
            status = (f"cut short by --budget-s after {deadline_s:.0f} s" if budget_cut
                      else f"timeout after {deadline_s:.0f} s (deadline)")
            break
        try:
            line = lines.get(timeout=min(left, 1.0))
        except queue.Empty:
            continue
        if line is None:
            proc.wait()
            status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
            break
        shown = line if len(line) <= SHOWN_CHARS else f"{line[:SHOWN_CHARS]}... ({len(line):,} characters)\n"
        print(f"[{phase.name}] {shown}", end="", flush=True)
        if line.startswith(RESULT_PREFIX):
            try:
                row = json.loads(line[len(RESULT_PREFIX):])
            except ValueError:
                continue
            if isinstance(row, dict) and "item" in row:  # a figure (not, e.g., a row for a parent process)
                results.add({"phase": phase.name, **row})
    if phase.junit is not None and not phase.junit.exists():
        results.add({"phase": phase.name, "item": "junit", "status": "missing: pytest wrote no junit file"})
    results.add({"phase": phase.name, "item": "phase", "status": status,
                 "seconds": round(time.monotonic() - started, 1)})
    return Outcome(phase.name, status, PASSED if status == "ok" else FAILED)


def missing_modules(modules: tuple, env: dict) -> list:
    """Which of ``modules`` the phases' Python cannot import (found, not imported)."""
    probe = ("import importlib.util, sys\n"
             "for name in sys.argv[1:]:\n"
             "    try:\n"
             "        found = importlib.util.find_spec(name) is not None\n"
             "    except (ImportError, ValueError):\n"
             "        found = False\n"
             "    if not found:\n"
             "        print(name)\n")
    out = subprocess.run([sys.executable, "-c", probe, *modules], cwd=REPO, env=env, capture_output=True, text=True)
    return out.stdout.split() if out.returncode == 0 else list(modules)


def _skip_reason(phase: Phase, left: float, compiler: Optional[str], env: dict, done: dict) -> Optional[tuple]:
    """(status, verdict) of a phase that cannot run now; None when it can."""
    if phase.needs_compiler and compiler is None:
        return "skipped: no C compiler (Triton needs one)", UNAVAILABLE
    missing = missing_modules(phase.needs, env) if phase.needs else []
    if missing:
        return f"skipped: no package {', '.join(missing)} for {sys.executable}", UNAVAILABLE
    if phase.needs_file is not None and not phase.needs_file.exists():
        producer = done.get(phase.made_by)
        why = f" ({producer.phase}: {producer.status})" if producer else ""
        # Whatever kept the file from being made decides: a failure is one here too.
        return (f"skipped: {phase.made_by} left no {phase.needs_file}{why}",
                producer.verdict if producer and producer.verdict != PASSED else FAILED)
    if left < (phase.deadline_s if phase.optional else 5.0):
        return f"skipped: {max(left, 0):.0f} s of the --budget-s left", NOT_RUN if phase.optional else FAILED
    return None


def run_phases(phases: list, budget_s: float, env: dict, results: Results, compiler: Optional[str]) -> list:
    """Each phase in turn, under its deadline and what is left of ``budget_s``: the outcomes."""
    done: dict = {}
    for phase in phases:
        left = budget_s - (time.monotonic() - START)
        skip = _skip_reason(phase, left, compiler, env, done)
        if skip is None:
            print(f"== {phase.name} (deadline {min(phase.deadline_s, left):.0f} s, {left:.0f} s of the budget left)",
                  flush=True)
            done[phase.name] = run_phase(phase, min(phase.deadline_s, left), env, results,
                                         budget_cut=left < phase.deadline_s)
            continue
        results.add({"phase": phase.name, "item": "phase", "status": skip[0]})
        done[phase.name] = Outcome(phase.name, *skip)
    return list(done.values())


def record_exit(outcomes: list, results: Results) -> int:
    code = exit_status(outcomes)
    results.add({"phase": "run", "item": "exit status", "status": f"{code}: {EXIT_STATUS[code]}"})
    return code


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


def card(torch, env: dict, compiler: Optional[str], tokenizer: str) -> dict:
    """The environment the figures were measured in (``tokenizer``: the benchmarks')."""
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
            "python": sys.version.split()[0], "cc": compiler or "none", "tokenizer": tokenizer}


def benchmark_tokenizer(path: Path) -> tuple:
    """(the tokenizer.json the benchmarks use or None, its name for the card)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_corpus", REPO / "benchmarks" / "_corpus.py")
    corpus = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(corpus)
    if path.is_file():
        return path.resolve(), corpus.tokenizer_name(path)
    return None, (f"SentencePiece BPE of 4,000 pieces trained on the corpus (NOT representative: no {path}; "
                  "run `make wheelhouse`)")


def gpu_phases(args, results_dir: Path, checkpoint: Path, tokenizer: Optional[Path]) -> list:
    """The real phases; bench-plain saves into ``checkpoint``, which generate loads."""
    python = sys.executable
    reads = ("tokenizers",) if tokenizer else ("sentencepiece",)
    bench = [python, REPO / "benchmarks" / "train_step.py", "--preset", "1b", "--layouts", "tp1", "--bf16",
             "--iters", args.iters, "--warmup", 5, *(["--tokenizer", tokenizer] if tokenizer else []), "--emit-results"]
    junit = results_dir / "gpu_tests.xml"
    return [
        Phase("tests", [python, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-p",
                        "benchmarks._pytest_results", f"--junitxml={junit}", REPO / "tests" / "test_gpu.py"],
              args.tests_deadline_s, needs_compiler=True, needs=("pytest",), junit=junit),
        # Its deadline has room for the save (bf16 weights and fp32 Adam state: ~18 GB at 1.3B).
        Phase("bench-plain", [*bench, "--data", "gpt", "--save", checkpoint, "--extra", "--attention-backend", "torch"],
              args.bench_deadline_s + args.save_deadline_s, needs=reads),
        Phase("generate", [python, REPO / "benchmarks" / "generate.py", "--engine", "ours", "--load", checkpoint,
                           "--prompts", 64, "--batch-size", 64, "--new-tokens", 128, "--emit-results"],
              args.generate_deadline_s, needs=reads, needs_file=checkpoint / "latest_checkpointed_iteration.txt",
              made_by="bench-plain"),
        Phase("bench-ixt", [*bench, "--data", "ixt", "--extra", "--attention-backend", "torch"],
              args.bench_deadline_s, needs_compiler=True, needs=reads),
        Phase("bench-ixt-8k", [*bench, "--data", "ixt", "--extra", "--attention-backend", "torch", "--seq-length",
                               8192, "--micro-batch-size", 1, "--global-batch-size", 4],
              args.bench_deadline_s, optional=True, needs_compiler=True, needs=reads),
    ]


# -- the dry run -----------------------------------------------------------------------------


def stand_in(rows: int, seconds: float, name: str, save: Optional[Path] = None, ids: int = 0) -> int:
    """A stand-in phase (--dry-run): ``rows`` figures spread over ``seconds``; then ``save``
    written, as bench-plain leaves its checkpoint; then, if ``ids``, a row that is no figure
    (no item), as generate.py's row of every generated id for its own parent process."""
    for i in range(rows):
        time.sleep(seconds / max(rows, 1))
        print(f"{name}: figure {i + 1} of {rows}", flush=True)
        print(RESULT_PREFIX + json.dumps({"item": f"{name} {i + 1}", "status": "ok", "value": i + 1}), flush=True)
    if save is not None:
        save.parent.mkdir(parents=True, exist_ok=True)
        save.write_text(f"{rows}\n")
    if ids:
        print(RESULT_PREFIX + json.dumps({"engine": name, "ids": list(range(ids))}), flush=True)
    return 0


DRY_RUN_STATUSES = {"tests": "ok", "bench-plain": "ok", "generate": "ok", "bench-ixt": "timeout after 3 s (deadline)",
                    "bench-ixt-8k": "ok"}
"""How each stand-in phase ends when the plumbing works."""


def dry_phases(args, checkpoint: Path) -> list:
    me = [sys.executable, Path(__file__).resolve(), "--stand-in"]
    marker = checkpoint / "latest_checkpointed_iteration.txt"
    return [
        Phase("tests", [*me, "tests", "--rows", 3, "--seconds", 1], 30, needs=("json",)),
        Phase("bench-plain", [*me, "bench-plain", "--rows", 2, "--seconds", args.dry_run_seconds, "--save", marker],
              60),
        # Needs the file bench-plain leaves, as generate needs its checkpoint.
        Phase("generate", [*me, "generate", "--rows", 1, "--seconds", 0.2, "--ids", 600], 30, needs_file=marker,
              made_by="bench-plain"),
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
    parser.add_argument("--scratch", type=Path, default=None,
                        help="bench-plain saves the checkpoint generate loads into SCRATCH/checkpoint-1b (~18 GB, "
                             "removed before and after; default: TMPDIR/megatron_ixt_gpu_check, RESULTS/scratch in "
                             "a dry run)")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="the benchmarks' tokenizer.json (default: WHEELHOUSE/tokenizer/tokenizer.json, SmolLM2's)")
    parser.add_argument("--budget-s", type=float, default=540.0, help="the whole run's deadline")
    parser.add_argument("--tests-deadline-s", type=float, default=210.0)
    parser.add_argument("--bench-deadline-s", type=float, default=100.0)
    parser.add_argument("--save-deadline-s", type=float, default=60.0,
                        help="added to bench-plain's deadline for saving its checkpoint")
    parser.add_argument("--generate-deadline-s", type=float, default=90.0)
    parser.add_argument("--iters", type=int, default=20, help="benchmark iterations (5 of them warm-up)")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="the plumbing on CPU, with stand-in phases")
    parser.add_argument("--dry-run-seconds", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--stand-in", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--save", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ids", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stand_in:
        return stand_in(args.rows, args.seconds, args.stand_in, args.save, args.ids)

    env = dict(os.environ)
    if args.dry_run:
        checkpoint = (args.scratch or args.results / "scratch") / "checkpoint"
        shutil.rmtree(checkpoint, ignore_errors=True)
        results = Results(args.results, "GPU acceptance (dry run on CPU: stand-in phases)")
        results.add({"phase": "card", "item": "device", "status": "dry run", "device": "none (CPU)",
                     "python": sys.version.split()[0]})
        outcomes = run_phases(dry_phases(args, checkpoint), args.budget_s, env, results, c_compiler() or "none")
        code = record_exit(outcomes, results)
        print(f"dry run: {len(results.rows)} figures in {results.jsonl}; a real run would exit {code} "
              f"({EXIT_STATUS[code]})")
        return 0 if {o.phase: o.status for o in outcomes} == DRY_RUN_STATUSES else 1

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
    tokenizer, tokenizer_label = benchmark_tokenizer(args.tokenizer or args.wheelhouse / "tokenizer" / "tokenizer.json")
    if tokenizer is None:
        print(f"gpu-check: the benchmarks' tokenizer: {tokenizer_label}")
    env = install_wheelhouse(args.wheelhouse, env)
    # The phases import this checkout's packages (tests, benchmarks) as well as megatron_ixt.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    results = Results(args.results, "GPU acceptance")
    info = card(torch, env, compiler, tokenizer_label)
    results.add({"phase": "card", "item": "environment", "status": "ok", **info})
    print("card: " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    # A checkpoint of an earlier run must not stand in for this one's; none outlives the run.
    checkpoint = (args.scratch or Path(tempfile.gettempdir()) / "megatron_ixt_gpu_check").resolve() / "checkpoint-1b"
    shutil.rmtree(checkpoint, ignore_errors=True)
    phases = [p for p in gpu_phases(args, args.results, checkpoint, tokenizer)
              if not (args.skip_tests and p.name == "tests")]
    try:
        outcomes = run_phases(phases, args.budget_s, env, results, compiler)
    finally:
        shutil.rmtree(checkpoint, ignore_errors=True)
    code = record_exit(outcomes, results)
    print(f"\n{args.results / 'results.md'}:\n" + (args.results / "results.md").read_text())
    return code


if __name__ == "__main__":
    sys.exit(main())
