"""benchmarks/gpu_check.py on CPU: the plumbing of the GPU acceptance run (phases under
deadlines, streamed figures, the results files), a kill mid-phase, the one-line refusals.
The GPU phases themselves run on a GPU machine only (tests/test_gpu.py, the benchmarks)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

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
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = _rows(tmp_path)
    phases = {r["phase"]: r["status"] for r in rows if r.get("item") == "phase"}
    assert phases == {"tests": "ok", "bench-plain": "ok", "bench-ixt": "timeout after 3 s (deadline)",
                      "bench-ixt-8k": "ok"}
    items = [r["item"] for r in rows]
    # The phase past its deadline kept the figure it finished before it; the next phase ran.
    assert "bench-ixt 1" in items and "bench-ixt 4" not in items and "bench-ixt-8k 1" in items
    assert "[bench-plain] bench-plain: figure 2 of 2" in proc.stdout  # streamed, prefixed
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
              gpu_check.Phase("bench", [sys.executable, "-c", "print('RESULT {\"item\": \"row\", \"status\": \"ok\"}')"],
                              10)]
    statuses = gpu_check.run_phases(phases, 60, dict(os.environ), results, "cc")
    assert statuses == ["failed (exit 3)", "ok"]
    assert [(r["phase"], r["item"], r["status"]) for r in _rows(tmp_path)] == [
        ("tests", "junit", "missing: pytest wrote no junit file"), ("tests", "phase", "failed (exit 3)"),
        ("bench", "row", "ok"), ("bench", "phase", "ok")]


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
