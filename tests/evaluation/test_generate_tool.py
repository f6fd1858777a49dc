"""tools/generate.py with many prompts: --prompts-file (JSON lines with optional feedback, or
plain text), --output in input order, and its refusals: a bad line names the file, the line and
the field, exits 2 and writes nothing; a prompt that leaves no room for the new tokens is
refused in one line before anything is generated."""

from __future__ import annotations

import json

import pytest

from tests.launch import run_python

TOOL = "tools/generate.py"


def _refused(proc, *fragments: str) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "Warning" not in line
             and not line.startswith(" ")]
    assert proc.returncode == 2, proc.stdout + proc.stderr
    message = lines[-1]
    assert message.startswith("generate.py: error: ") and all(f in message for f in fragments), proc.stderr
    return message


@pytest.mark.parametrize("content, fragments", [
    ('{"prompt": "a"}\n{"prompt": "b"\n', (":2: expected a JSON object", "malformed JSON")),
    ('{"prompt": "a"}\n\n{"text": "b"}\n', (":3: field 'prompt': expected a string", "missing")),
    ('{"prompt": 7}\n', (":1: field 'prompt': expected a string, got 7 (int)",)),
    ('{"prompt": "a", "feedback": {"score": 12}}\n', (":1: field 'feedback.score'", "[0, 10]")),
    ("\n\n", ("no prompts",)),
])
def test_bad_prompts_files_are_refused_with_file_and_line(tmp_path, content, fragments):
    prompts, out = tmp_path / "prompts.jsonl", tmp_path / "out.jsonl"
    prompts.write_text(content)
    proc = run_python(TOOL, ["--load", tmp_path / "no-checkpoint", "--prompts-file", prompts, "--output", out])
    message = _refused(proc, str(prompts), *fragments)
    print(message)
    assert not out.exists() and not list(tmp_path.glob("out.jsonl*"))


@pytest.mark.slow
def test_prompts_file_in_order_with_feedback_and_the_room_refusal(ixt_checkpoint, tmp_path):
    load = ["--load", ixt_checkpoint.path, "--prefix-template", "quality"]
    text = tmp_path / "prompts.txt"
    text.write_text("def fibonacci(n):\n\nimport os\nclass Parser:\n")  # plain text: one prompt per line
    out = tmp_path / "out.jsonl"
    proc = run_python(TOOL, [*load, "--prompts-file", text, "--output", out, "--greedy", "--max-new-tokens", 8,
                             "--batch-size", 2])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["def fibonacci(n):", "import os", "class Parser:"]
    assert all(set(r) == {"prompt", "output", "tokens", "finish_reason"} for r in rows)
    assert all(0 < r["tokens"] <= 8 and r["finish_reason"] in ("eod", "length") for r in rows)
    assert "Generated 3/3 prompts" in proc.stderr and "tokens/s" in proc.stderr  # the closing progress line

    # JSON lines: a prompt's own feedback overrides the flags' (here the default, level 5).
    lines = tmp_path / "prompts.jsonl"
    lines.write_text(json.dumps({"prompt": "import os", "id": "a"}) + "\n"
                     + json.dumps({"prompt": "import os", "id": "b", "feedback": {"score": 0.5}}) + "\n")
    proc = run_python(TOOL, [*load, "--prompts-file", lines, "--output", out, "--greedy", "--max-new-tokens", 8])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    best, worst = [json.loads(line) for line in out.read_text().splitlines()]
    assert (best["id"], worst["id"]) == ("a", "b") and worst["feedback"] == {"score": 0.5}
    assert best["output"] == rows[1]["output"]  # level 5 is the default; batching does not change it

    # tiny.yaml's --seq-length is 64: 60 new tokens leave no room for this prompt.
    proc = run_python(TOOL, [*load, "--prompts-file", text, "--output", tmp_path / "none.jsonl",
                             "--max-new-tokens", 60])
    _refused(proc, f"{text}:1: the prompt takes", "of the 60 new tokens asked for", "--seq-length 64")
    assert not (tmp_path / "none.jsonl").exists()
