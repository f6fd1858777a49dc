"""benchmarks/gpu_check.py on CPU: the plumbing of the GPU acceptance run (phases under
deadlines and the budget, streamed figures, the results files, a phase that needs an earlier
phase's checkpoint), its exit statuses, a kill mid-phase, the one-line refusals. The GPU
phases themselves run on a GPU machine only (tests/test_gpu.py, the benchmarks)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from argparse import Namespace

import psutil

from tests.launch import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _rows(folder) -> list[dict]:
    path = folder / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_dry_run_phases_deadlines_and_results(tmp_path):
    proc = subprocess.run([sys.executable, SCRIPT, "--dry-run", "--results", tmp_path], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr  # each stand-in ended as designed
    rows = _rows(tmp_path)
    phases = {r["phase"]: r["status"] for r in rows if r.get("item") == "phase"}
    # generate ran: it found the file bench-plain left, as the real one finds its checkpoint.
    assert phases == {"tests": "ok", "bench-plain": "ok", "generate": "ok",
                      "bench-ixt": "timeout after 3 s (deadline)", "bench-ixt-8k": "ok"}
    assert (tmp_path / "scratch" / "checkpoint" / "latest_checkpointed_iteration.txt").exists()
    items = [r["item"] for r in rows]
    # The phase past its deadline kept the figure it finished before it; the next phase ran.
    assert "bench-ixt 1" in items and "bench-ixt 4" not in items and "bench-ixt-8k 1" in items
    assert "[bench-plain] bench-plain: figure 2 of 2" in proc.stdout  # streamed, prefixed
    # A RESULT row without an item (generate.py's ids for its parent) is no figure, and shortened on screen.
    assert not any("ids" in r for r in rows) and "characters)" in proc.stdout
    assert rows[-1] == {"at_s": rows[-1]["at_s"], "phase": "run", "item": "exit status",
                        "status": "1: a phase failed, timed out or was cut short"}
    assert "a real run would exit 1" in proc.stdout
    table = (tmp_path / "results.md").read_text()
    assert table.count("\n| ") == len(rows) + 1 and "| bench-ixt | phase | timeout after 3 s (deadline) |" in table


def test_a_kill_mid_phase_keeps_every_earlier_figure(tmp_path):
    process = subprocess.Popen([sys.executable, SCRIPT, "--dry-run", "--dry-run-seconds", "6", "--results", tmp_path],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "bench-plain 1" not in [r["item"] for r in _rows(tmp_path)]:
        time.sleep(0.1)
    children = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(signal.SIGKILL)  # as the machine's 10-minute limit kills a command
    process.wait(timeout=10)
    items = [r["item"] for r in _rows(tmp_path)]
    assert items[:6] == ["device", "tests 1", "tests 2", "tests 3", "phase", "bench-plain 1"]
    assert "bench-plain 1" in (tmp_path / "results.md").read_text()
    _, alive = psutil.wait_procs(children, timeout=10)  # the running phase dies with the run
    assert not alive


def test_missing_junit_is_reported_and_later_phases_run(tmp_path):
    gpu_check = _module()
    results = gpu_check.Results(tmp_path, "test")
    phases = [gpu_check.Phase("tests", [sys.executable, "-c", "import sys; sys.exit(3)"], 10,
                              junit=tmp_path / "none.xml"),
              gpu_check.Phase("bench", [sys.executable, "-c",
                                        _print('{"item": "row", "status": "ok"}', '{"ids": [1]}')], 10)]
    outcomes = gpu_check.run_phases(phases, 60, dict(os.environ), results, "cc")
    assert [(o.status, o.verdict) for o in outcomes] == [("failed (exit 3)", "failed"), ("ok", "passed")]
    assert gpu_check.exit_status(outcomes) == 1
    assert [(r["phase"], r["item"], r["status"]) for r in _rows(tmp_path)] == [
        ("tests", "junit", "missing: pytest wrote no junit file"), ("tests", "phase", "failed (exit 3)"),
        ("bench", "row", "ok"), ("bench", "phase", "ok")]


def _print(*rows: str) -> str:
    return "; ".join(f"print('RESULT ' + {row!r})" for row in rows)


OK = [sys.executable, "-c", "pass"]


def test_exit_status_of_verdicts():
    gpu_check = _module()
    outcome = lambda verdict: gpu_check.Outcome("p", "s", verdict)  # noqa: E731
    for verdicts, code in ((["passed"], 0), (["passed", "not run"], 0), (["passed", "unavailable"], 3),
                           (["unavailable", "failed", "passed"], 1), (["not run", "failed"], 1), ([], 0)):
        assert gpu_check.exit_status([outcome(v) for v in verdicts]) == code, verdicts
    assert set(gpu_check.EXIT_STATUS) == {0, 1, 3}


def test_budget_cut_is_not_a_deadline_and_not_a_pass(tmp_path):
    gpu_check = _module()
    results = gpu_check.Results(tmp_path, "test")
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    phases = [gpu_check.Phase("long", sleep, 30), gpu_check.Phase("required", OK, 10),
              gpu_check.Phase("optional", OK, 10, optional=True)]
    # 6 s of the budget left (a required phase starts with 5 or more): its own 30 s shortened to 6.
    budget = time.monotonic() - gpu_check.START + 6
    outcomes = gpu_check.run_phases(phases, budget, dict(os.environ), results, "cc")
    assert [(o.status, o.verdict) for o in outcomes] == [
        ("cut short by --budget-s after 6 s", "failed"), ("skipped: 0 s of the --budget-s left", "failed"),
        ("skipped: 0 s of the --budget-s left", "not run")]
    assert gpu_check.exit_status(outcomes) == 1
    assert gpu_check.exit_status(outcomes[2:]) == 0  # an optional phase the budget left out: by design


def test_unavailable_compiler_package_and_checkpoint(tmp_path):
    gpu_check = _module()
    results = gpu_check.Results(tmp_path, "test")
    env = dict(os.environ)
    marker = tmp_path / "ckpt" / "latest_checkpointed_iteration.txt"
    consumer = gpu_check.Phase("generate", OK, 10, needs_file=marker, made_by="bench-plain")
    phases = [gpu_check.Phase("tests", OK, 10, needs_compiler=True),
              gpu_check.Phase("bench-plain", OK, 10, needs=("json", "no_such_module_for_gpu_check")), consumer]
    outcomes = gpu_check.run_phases(phases, 60, env, results, None)
    assert [o.status for o in outcomes] == [
        "skipped: no C compiler (Triton needs one)",
        f"skipped: no package no_such_module_for_gpu_check for {sys.executable}",
        f"skipped: bench-plain left no {marker} (bench-plain: skipped: no package no_such_module_for_gpu_check "
        f"for {sys.executable})"]
    # Nothing failed; what was missing was the machine's: exit 3, also for the phase downstream.
    assert [o.verdict for o in outcomes] == ["unavailable"] * 3 and gpu_check.exit_status(outcomes) == 3
    # A producer that failed: the missing checkpoint is a failure; one that passed and left none, too.
    failing = gpu_check.Phase("bench-plain", [sys.executable, "-c", "import sys; sys.exit(1)"], 10)
    for producer, status in ((failing, "failed (exit 1)"), (gpu_check.Phase("bench-plain", OK, 10), "ok")):
        outcomes = gpu_check.run_phases([producer, consumer], 60, env, results, "cc")
        assert outcomes[1] == gpu_check.Outcome("generate", f"skipped: bench-plain left no {marker} (bench-plain: "
                                                            f"{status})", "failed")
    marker.parent.mkdir()
    marker.write_text("20\n")
    outcomes = gpu_check.run_phases([gpu_check.Phase("bench-plain", OK, 10), consumer], 60, env, results, "cc")
    assert [o.status for o in outcomes] == ["ok", "ok"] and gpu_check.exit_status(outcomes) == 0


def test_real_phases_pass_the_checkpoint_and_the_tokenizer(tmp_path):
    gpu_check = _module()
    args = Namespace(iters=20, tests_deadline_s=210.0, bench_deadline_s=100.0, save_deadline_s=60.0,
                     generate_deadline_s=90.0)
    tokenizer = tmp_path / "tokenizer" / "tokenizer.json"
    checkpoint = tmp_path / "checkpoint-1b"
    phases = {p.name: p for p in gpu_check.gpu_phases(args, tmp_path, checkpoint, tokenizer)}
    assert list(phases) == ["tests", "bench-plain", "generate", "bench-ixt", "bench-ixt-8k"]
    cmd = lambda name: [str(c) for c in phases[name].cmd]  # noqa: E731
    plain = cmd("bench-plain")
    assert plain[plain.index("--save") + 1] == str(checkpoint) and plain.index("--save") < plain.index("--extra")
    assert phases["bench-plain"].deadline_s == 160
    generate = cmd("generate")
    assert generate[1].endswith("benchmarks/generate.py")
    assert " ".join(generate[2:]).endswith(f"--engine ours --load {checkpoint} --prompts 64 --batch-size 64 "
                                           "--new-tokens 128 --emit-results")
    assert phases["generate"].needs_file == checkpoint / "latest_checkpointed_iteration.txt"
    assert phases["generate"].made_by == "bench-plain" and not phases["generate"].optional
    for name in ("bench-plain", "bench-ixt", "bench-ixt-8k"):
        assert cmd(name)[cmd(name).index("--tokenizer") + 1] == str(tokenizer)
        assert phases[name].needs == ("tokenizers",)
    # Without the wheelhouse tokenizer: the corpus's own SentencePiece model, said in the card.
    for phase in gpu_check.gpu_phases(args, tmp_path, checkpoint, None):
        assert "--tokenizer" not in [str(c) for c in phase.cmd]


def test_the_benchmark_tokenizer_is_named(tmp_path):
    gpu_check = _module()
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    spec = {"model": {"vocab": {"a": 0, "b": 1, "c": 2}}, "added_tokens": [{"id": 3, "content": "<|endoftext|>"}]}
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    assert gpu_check.benchmark_tokenizer(folder / "tokenizer.json") == (
        (folder / "tokenizer.json").resolve(), f"{folder / 'tokenizer.json'} tokenizer.json, 4 pieces")
    (folder / "source.json").write_text(json.dumps({"name": "SmolLM2-135M-Instruct"}))
    named = gpu_check.benchmark_tokenizer(folder / "tokenizer.json")[1]
    assert named == "SmolLM2-135M-Instruct tokenizer.json, 4 pieces"
    path, name = gpu_check.benchmark_tokenizer(tmp_path / "none" / "tokenizer.json")
    assert path is None and name.startswith("SentencePiece BPE of 4,000 pieces") and "make wheelhouse" in name


def test_no_gpu_is_one_line_with_or_without_torch(tmp_path):
    no_torch = tmp_path / "no_torch"
    (no_torch / "torch").mkdir(parents=True)
    (no_torch / "torch" / "__init__.py").write_text("raise ImportError('No module named torch')\n")
    for env in ({"CUDA_VISIBLE_DEVICES": ""}, {"PYTHONPATH": str(no_torch)}):
        proc = subprocess.run([sys.executable, SCRIPT, "--results", tmp_path / "out"], capture_output=True,
                              text=True, timeout=120, env={**os.environ, **env})
        assert proc.returncode == 1
        assert len(proc.stdout.splitlines()) == 1 and "no CUDA GPU visible" in proc.stdout, proc.stdout
        assert "Traceback" not in proc.stderr, proc.stderr
