"""Helpers shared by the demo driver (``run_demo.py``) and ``examples/ixt_vs_baseline``:
running each stage's real tool as a subprocess with a progress line and a log file, the
held-out split, and the command lines of the tools.

A stage is one command. Its output (stdout and stderr) goes to ``<out>/logs/<stage>.log``;
selected lines (training progress) are echoed to the console. A failing stage stops the
run with the last lines of its output and the log's path: nothing fails quietly.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parents[2]

# The corpus of the demo and of examples/ixt_vs_baseline: mostly prose (Python docs), 70 % of
# it with a planted flaw; HumanEval with two broken variants per problem; GSM8K-style math,
# each problem with one wrong worked answer; standard-library code gets the rest (15 %).
CORPUS_MIX = "humaneval=0.12,math=0.13,prose=0.6"


class StageError(RuntimeError):
    """A stage failed; the message holds the tail of its output."""


def child_env() -> dict:
    """The environment of every stage: the repository importable, output unbuffered, one
    thread per process (two ranks on two cores: more threads only oversubscribe), and no
    leftover torchrun variables from a calling launcher."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


def python_cmd(script: str, *args) -> list[str]:
    """``python tools/<script> args`` with this interpreter (the venv's under ``make``)."""
    return [sys.executable, str(REPO / script), *map(str, args)]


def torchrun_cmd(nproc: int, script: str, *args) -> list[str]:
    """``torchrun --standalone --nproc-per-node N script args`` (same interpreter)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            str(REPO / script), *map(str, args)]


class Stages:
    """Runs stages in order, prints ``[i/n] name ... done in X s`` for each, records the
    wall times (``timings``) and keeps every stage's output in ``logs/``."""

    def __init__(self, out_dir: Path, total: int, console=print) -> None:
        self.out_dir = Path(out_dir)
        self.logs = self.out_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.total = total
        self.index = 0
        self.timings: list[dict] = []
        self.console = console

    def _start(self, name: str, what: str) -> float:
        self.index += 1
        self.console(f"[{self.index}/{self.total}] {name:<12} {what}", flush=True)
        return time.monotonic()

    def _done(self, name: str, started: float, note: str = "") -> None:
        seconds = time.monotonic() - started
        self.timings.append({"stage": name, "seconds": round(seconds, 1), "note": note})
        suffix = f" ({note})" if note else ""
        self.console(f"[{self.index}/{self.total}] {name:<12} done in {seconds:.1f} s{suffix}", flush=True)

    def run(self, name: str, cmd: list[str], what: str, echo: Optional[Callable[[str], Optional[str]]] = None,
            note: Optional[Callable[[str], str]] = None, log_name: Optional[str] = None) -> str:
        """Run ``cmd`` from the repository root; return its output (stdout + stderr).
        ``echo(line)`` returns what to print for a line while it runs (None: nothing),
        ``note(output)`` the summary
        printed with the wall time."""
        started = self._start(name, what)
        log_path = self.logs / f"{log_name or name}.log"
        output = run_logged(cmd, log_path, echo=echo, indent=" " * 6)
        self._done(name, started, note(output) if note else "")
        return output

    def step(self, name: str, fn: Callable[[], str], what: str) -> None:
        """An in-process stage (a few lines of Python, not a tool); ``fn`` returns the note."""
        started = self._start(name, what)
        self._done(name, started, fn())

    def save_timings(self, path: Path) -> None:
        path.write_text(json.dumps(self.timings, indent=1) + "\n")


def run_logged(cmd: list[str], log_path: Path, echo: Optional[Callable[[str], Optional[str]]] = None,
               indent: str = "") -> str:
    """Run ``cmd``, writing its merged output to ``log_path`` line by line; raise
    :class:`StageError` with the output's tail on a non-zero exit.

    The child gets a session of its own so that Ctrl-C here can stop the whole tree
    (torchrun and its ranks) instead of leaving ranks behind."""
    lines: list[str] = []
    with open(log_path, "w", encoding="utf-8") as log:
        cmd = [str(part) for part in cmd]
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        child = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)
        try:
            for line in child.stdout:
                log.write(line)
                lines.append(line)
                shown = echo(line) if echo else None
                if shown:
                    print(indent + shown, flush=True)
            child.wait()
        except BaseException:  # Ctrl-C or an error here: stop the stage's processes too
            _terminate(child)
            raise
    if child.returncode != 0:
        # torchrun ends a failed run with its own traceback, which hides the rank's error
        # message: show the error lines first, then the tail.
        errors = [line for line in lines if "error:" in line.lower() and "torch.distributed" not in line][:5]
        first = "--- error lines ---\n" + "".join(errors) if errors else ""
        raise StageError(f"command failed with exit status {child.returncode}:\n  {' '.join(cmd)}\n{first}"
                         f"--- last lines of its output (full log: {log_path}) ---\n{''.join(lines[-30:])}")
    return "".join(lines)


def run_stage(name: str, cmd: list, logs: Path) -> float:
    """One stage of an example's script: ``cmd`` with its output in ``logs/NAME.log``, a line
    when it starts and when it ends; exits the script naming the log on failure. Returns the
    stage's wall time."""
    started = time.time()
    print(f"[{time.strftime('%H:%M:%S')}] {name}: {' '.join(map(str, cmd))[:160]}", flush=True)
    try:
        run_logged(cmd, logs / f"{name}.log")
    except StageError:
        sys.exit(f"stage {name} failed; see {logs / f'{name}.log'}")
    elapsed = time.time() - started
    print(f"    done in {elapsed:.0f} s", flush=True)
    return elapsed


def _terminate(child: subprocess.Popen) -> None:
    try:
        os.killpg(child.pid, signal.SIGTERM)  # torchrun forwards SIGTERM to its ranks
        child.wait(timeout=20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


MARKER = ".ixt-example-output"


def prepare_output_dir(out: Path, entries: tuple[str, ...]) -> None:
    """An example owns its output folder. The previous run's ``entries`` are removed
    (training would otherwise resume from the old checkpoints and append to the old
    metrics). A folder holding anything else is refused rather than cleared, unless this
    script made it (the marker file): it might be anything (``--output-dir ~``)."""
    if out.exists():
        unknown = sorted(p.name for p in out.iterdir() if p.name not in entries and p.name != MARKER)
        if unknown and not (out / MARKER).exists():
            raise StageError(f"--output-dir {out} holds files this script did not write ({', '.join(unknown[:5])}); "
                             "choose a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    removed = [name for name in entries if (out / name).exists()]
    for name in removed:
        path = out / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    if removed:
        print(f"removed the previous run's outputs in {out}: {', '.join(removed)}")
    (out / MARKER).write_text("made by an examples/ script; rerunning it clears this folder\n")


# --- held-out split ---------------------------------------------------------------------

def document_group(doc: dict) -> str:
    """The unit that must not straddle train and held-out: a broken or degraded variant
    belongs with its reference (``humaneval/12/off_by_one`` with ``humaneval/12``), and
    chunks of one source file or page belong together (``stdlib/os.py:10-80`` ->
    ``stdlib/os.py``, ``prose/pydocs/library/os#3`` -> ``prose/pydocs/library/os``).
    Otherwise a held-out broken program would have its fixed twin in the training data."""
    doc_id = str(doc.get("id", ""))
    variant = doc.get("variant")
    if variant and variant != "reference" and doc_id.endswith("/" + variant):
        doc_id = doc_id[: -len(variant) - 1]
    for mark in (":", "#"):
        doc_id = doc_id.split(mark, 1)[0]
    return doc_id


def is_held_out(group: str, share: float, seed: int = 0) -> bool:
    """A stable choice by hash (same for any corpus size, machine or Python run)."""
    digest = hashlib.sha256(f"{seed}/{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def split_held_out(source: Path, train_path: Path, held_out_path: Path, share: float, seed: int = 0) -> dict:
    """Write the documents of ``source`` to ``train_path`` or ``held_out_path`` by
    :func:`document_group`; return the counts."""
    counts = {"train": 0, "held_out": 0}
    with open(source, encoding="utf-8") as src, open(train_path, "w", encoding="utf-8") as train, \
            open(held_out_path, "w", encoding="utf-8") as held:
        for line in src:
            if not line.strip():
                continue
            doc = json.loads(line)
            if is_held_out(document_group(doc), share, seed):
                held.write(line)
                counts["held_out"] += 1
            else:
                train.write(line)
                counts["train"] += 1
    if counts["held_out"] == 0 or counts["train"] == 0:
        raise StageError(f"held-out split of {source}: {counts} -- too few documents for a share of {share}")
    return counts


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: Path, docs: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")


def run_concurrently(jobs: dict[str, list[str]], logs: Path, progress: Optional[Callable[[], str]] = None,
                     every_s: float = 30.0) -> None:
    """Run several commands at once (one log each), printing ``progress()`` every
    ``every_s`` seconds; if one fails, stop the others and raise :class:`StageError`."""
    children = {}
    files = {}
    try:
        for name, cmd in jobs.items():
            cmd = [str(part) for part in cmd]
            files[name] = open(logs / f"{name}.log", "w", encoding="utf-8")
            files[name].write("$ " + " ".join(cmd) + "\n")
            files[name].flush()
            children[name] = subprocess.Popen(cmd, cwd=REPO, env=child_env(), stdout=files[name],
                                              stderr=subprocess.STDOUT, start_new_session=True)
        last = time.monotonic()
        while any(c.poll() is None for c in children.values()):
            failed = [n for n, c in children.items() if c.returncode not in (None, 0)]
            if failed:
                break
            time.sleep(1)
            if progress and time.monotonic() - last >= every_s:
                last = time.monotonic()
                print("      " + progress(), flush=True)
    except BaseException:
        for child in children.values():
            _terminate(child)
        raise
    finally:
        for f in files.values():
            f.close()
    failed = [n for n, c in children.items() if c.returncode not in (None, 0)]
    for child in children.values():
        if child.poll() is None:
            _terminate(child)
    if failed:
        name = failed[0]
        lines = (logs / f"{name}.log").read_text(errors="replace").splitlines(keepends=True)
        errors = [line for line in lines if "error:" in line.lower() and "torch.distributed" not in line][:5]
        raise StageError(f"{name} failed with exit status {children[name].returncode}\n"
                         + ("--- error lines ---\n" + "".join(errors) if errors else "")
                         + f"--- last lines (full log: {logs / (name + '.log')}) ---\n" + "".join(lines[-30:]))
