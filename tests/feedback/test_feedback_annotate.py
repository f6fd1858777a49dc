"""The annotation pipeline: selection, resuming, bad input, the command line."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megatron_ixt.feedback import DocumentError, ResumeError, annotate_file, build_critic, is_selected
from megatron_ixt.feedback.documents import check_inputs

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "tools" / "annotate_feedback.py"


def test_ids_order_and_pass_through(tmp_path, jsonl, prose_docs):
    docs = [{"text": d["text"], "domain": "prose"} for d in prose_docs[:4]]  # no ids
    docs.append({"id": "has-feedback", "text": "kept as is", "feedback": {"score": 3}})
    out = tmp_path / "out.jsonl"
    summary = annotate_file(jsonl.write(tmp_path / "corpus.jsonl", docs), out, build_critic("text"), progress=False)
    written = jsonl.read(out)
    assert [d["id"] for d in written] == [f"corpus.jsonl:{i}" for i in range(1, 5)] + ["has-feedback"]
    assert list(written[0])[0] == "id"  # the assigned id comes first
    assert written[-1]["feedback"] == {"score": 3}  # existing feedback kept
    assert all(d["feedback"]["judge"] == "text-critic/2" for d in written[:4])
    assert summary.outcomes == {"annotated": 4, "kept": 1}
    assert summary.as_dict()["by_domain"]["prose"]["annotated"] == 4


def test_list_text_and_null_feedback(tmp_path, jsonl):
    docs = [{"id": 1, "text": ["First part of the document.", "Second part."], "feedback": None}]
    out = tmp_path / "out.jsonl"
    annotate_file(jsonl.write(tmp_path / "in.jsonl", docs), out, build_critic("text"), progress=False)
    written = jsonl.read(out)[0]
    assert written["text"] == docs[0]["text"] and written["feedback"]["judge"] == "text-critic/2"


def test_fraction_selects_by_id_hash(tmp_path, jsonl):
    ids = [f"doc-{i}" for i in range(3000)]
    chosen = {i for i in ids if is_selected(i, 0.15, seed=7)}
    assert 0.13 < len(chosen) / len(ids) < 0.17
    assert chosen == {i for i in random.Random(1).sample(ids, len(ids)) if is_selected(i, 0.15, seed=7)}
    assert chosen != {i for i in ids if is_selected(i, 0.15, seed=8)}  # the seed changes the share

    docs = [{"id": i, "text": "Some words here. " * 20} for i in ids[:200]]
    out = tmp_path / "out.jsonl"
    summary = annotate_file(jsonl.write(tmp_path / "in.jsonl", docs), out, build_critic("text"),
                            fraction=0.15, seed=7, progress=False)
    written = jsonl.read(out)
    assert [d["id"] for d in written] == ids[:200]
    assert {d["id"] for d in written if "feedback" in d} == {i for i in ids[:200] if i in chosen}
    assert summary.outcomes["unselected"] == 200 - summary.outcomes["annotated"]


def test_resume_drops_torn_line_and_skips_done_ids(tmp_path, jsonl, prose_docs):
    source = jsonl.write(tmp_path / "in.jsonl", prose_docs)
    out = tmp_path / "out.jsonl"
    annotate_file(source, out, build_critic("text"), progress=False)
    complete = out.read_bytes()
    lines = complete.splitlines(keepends=True)
    # A crash after 5 documents, in the middle of writing the 6th.
    out.write_bytes(b"".join(lines[:5]) + lines[5][:40])
    summary = annotate_file(source, out, build_critic("text"), progress=False)
    assert out.read_bytes() == complete  # same bytes as the uninterrupted run
    assert summary.outcomes == {"resumed": 5, "annotated": 7}


def test_resume_refuses_other_settings_and_corrupt_output(tmp_path, jsonl, prose_docs):
    source = jsonl.write(tmp_path / "in.jsonl", prose_docs)
    out = tmp_path / "out.jsonl"
    annotate_file(source, out, build_critic("text"), fraction=0.5, progress=False)
    with pytest.raises(ResumeError, match="fraction"):
        annotate_file(source, out, build_critic("text"), fraction=0.6, progress=False)
    with pytest.raises(ResumeError, match="critic"):
        annotate_file(source, out, build_critic("math"), fraction=0.5, progress=False)
    out.write_text('{"id": "doc-0", "text": "x"}\nnot json\n{"id": "doc-2", "text": "y"}\n')
    with pytest.raises(ResumeError, match=r"out.jsonl:2"):
        annotate_file(source, out, build_critic("text"), fraction=0.5, progress=False)


@pytest.mark.parametrize("line, field, message", [
    ('{"id": 1, "text": "ok"', None, "malformed JSON"),
    ('{"id": 1}', "text", "missing"),
    ('{"id": 1, "text": 5}', "text", "expected a string"),
    ('{"id": 1, "text": ["a", 2]}', "text[1]", "expected a string"),
    ('', None, "blank line"),
    ('{"id": 1, "text": "x", "fragment": "yes"}', "fragment", "true or false"),
    ('{"id": 1, "text": "x", "feedback": {"score": 11}}', "feedback.score", "within the scale"),
    ('{"id": [1], "text": "x"}', "id", "string or an integer"),
    ('{"id": 1, "text": "x", "tests": "def check(c): pass"}', "entry_point", "missing"),
    ('{"id": 1, "text": "x", "feedback": {"critique": "no score"}}', "feedback.score", "number"),
    ('["text"]', None, "JSON object"),
    ('{"id": "a", "text": "dup"}', "id", "duplicate id 'a'"),
])
def test_bad_input_names_file_line_and_field(tmp_path, line, field, message):
    source = tmp_path / "bad.jsonl"
    source.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "text": "fine too"}\n' + line + "\n")
    out = tmp_path / "out.jsonl"
    with pytest.raises(DocumentError) as error:
        annotate_file(source, out, build_critic("text"), progress=False)
    assert error.value.line == 3 and error.value.field == field
    assert str(error.value).startswith(f"{source}:3: ") and message in str(error.value)
    assert not out.exists()  # nothing written before the input was checked


def test_cli_reports_bad_input_and_summary(tmp_path, jsonl, prose_docs):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "typo"}\n')
    run = subprocess.run([sys.executable, str(TOOL), "--input", str(bad), "--output", str(tmp_path / "o.jsonl")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    # The data tools' wording: file:line, field, what was expected.
    assert f"{bad}:2: field 'text': expected a string (the key 'text' is missing)" in run.stderr

    source = jsonl.write(tmp_path / "in.jsonl", prose_docs)
    run = subprocess.run([sys.executable, str(TOOL), "--input", str(source), "--output", str(tmp_path / "o.jsonl"),
                          "--critic", "text", "--summary-json", str(tmp_path / "s.json")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "quality levels" in run.stdout and "docs/s" in run.stderr
    assert json.loads((tmp_path / "s.json").read_text())["documents"] == len(prose_docs)


def test_ctrl_c_then_resume_keeps_every_document_once(tmp_path, jsonl, chat_server, judge):
    docs = [{"id": i, "text": f"Text number {i}."} for i in range(30)]
    source = jsonl.write(tmp_path / "in.jsonl", docs)
    out = tmp_path / "out.jsonl"
    # The first answers come quickly, the rest slowly: the run is still going when the test
    # has seen 4 lines, however late a loaded machine schedules the test's polling.
    slow = chat_server(lambda i, r: judge.Reply(judge.completion(judge.verdict(6)), delay_s=0.05 if i < 6 else 1.0))
    command = [sys.executable, str(TOOL), "--input", str(source), "--output", str(out), "--critic", "llm",
               "--model", "test-judge", "--workers", "2", "--no-progress"]
    # Ctrl-C as in a terminal: a suite started in the background (`nohup make test &`) runs
    # with SIGINT ignored, children inherit that, and Python then leaves it ignored.
    process = subprocess.Popen(command + ["--endpoint", slow.url], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or len(out.read_bytes().splitlines()) < 4):
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "rerun the same command" in stderr
    partial = jsonl.read(out)
    assert 4 <= len(partial) < len(docs)

    fast = chat_server()
    run = subprocess.run(command + ["--endpoint", fast.url], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    final = jsonl.read(out)
    assert [d["id"] for d in final] == list(range(30))
    assert all(d["feedback"]["judge"] == "test-judge (prompt ixt-rubric/1)" for d in final)


def test_cli_exit_code_when_judge_is_gone(tmp_path, jsonl, chat_server):
    server = chat_server()
    url = server.url
    server.stop()  # nothing listens on that port any more
    source = jsonl.write(tmp_path / "in.jsonl", [{"id": 1, "text": "x"}])
    run = subprocess.run([sys.executable, str(TOOL), "--input", str(source), "--output", str(tmp_path / "o.jsonl"),
                          "--critic", "llm", "--endpoint", url, "--model", "m", "--max-retries", "1",
                          "--backoff", "0.01", "--no-progress"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "IXT_JUDGE_API_KEY": "sk-local"})
    assert run.returncode == 3
    assert "Connection refused" in run.stderr and "resume" in run.stderr


def test_compressed_input_reads_as_plain(tmp_path, jsonl, prose_docs):
    # The same reader as tools/preprocess_data.py: .gz input annotates to the same output.
    import gzip

    plain = jsonl.write(tmp_path / "a.jsonl", prose_docs[:4])
    packed = tmp_path / "b.jsonl.gz"
    packed.write_bytes(gzip.compress(Path(plain).read_bytes()))
    outs = []
    for source in (plain, packed):
        out = tmp_path / f"out_{Path(source).name}.jsonl"
        annotate_file(source, out, build_critic("text"), progress=False)
        outs.append(out.read_text())
    assert outs[0] == outs[1] and len(outs[0].splitlines()) == 4


def test_check_inputs_counts_documents(tmp_path, jsonl, prose_docs):
    a = jsonl.write(tmp_path / "a.jsonl", prose_docs[:3])
    b = jsonl.write(tmp_path / "b.jsonl", [{"text": "no id"}])
    assert check_inputs([a, b]) == 4


CONVERSATIONS = [
    {"id": "right", "domain": "math", "reference_answer": 84,
     "messages": [{"role": "user", "content": "What is 12 * 7?"}, {"role": "assistant", "content": "12 * 7 = 84.\n#### 84"}]},
    {"id": "wrong", "domain": "math", "reference_answer": 84,
     "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 12 * 7?"},
                  {"role": "assistant", "content": "12 * 7 = 74.\n#### 74"}]},
]


def test_conversations_get_feedback_on_their_assistant_turns(tmp_path, jsonl, chat_server, judge):
    """SFT data: the math verifier checks the assistant's answer; the LLM judge reads the
    whole conversation; the lines pass through unchanged otherwise."""
    source = jsonl.write(tmp_path / "chats.jsonl", CONVERSATIONS)
    annotate_file(source, tmp_path / "math.jsonl", build_critic("math"), progress=False)
    right, wrong = jsonl.read(tmp_path / "math.jsonl")
    assert right["messages"] == CONVERSATIONS[0]["messages"] and "text" not in right
    assert right["feedback"]["axes"]["factual_accuracy"] == 10
    assert wrong["feedback"]["axes"]["factual_accuracy"] == 1
    assert "differs from the reference 84" in wrong["feedback"]["critique"]

    server = chat_server(lambda i, r: judge.Reply(judge.completion(judge.verdict(7, "Fine."))))
    from tests.feedback.test_feedback_llm import make_critic

    annotate_file(source, tmp_path / "llm.jsonl", make_critic(server), progress=False, workers=1)
    seen = sorted(judge.document_of(r) for r in server.requests)
    assert seen[0] == "System: Be brief.\n\nUser: What is 12 * 7?\n\nAssistant: 12 * 7 = 74.\n#### 74"
    assert seen[1] == "User: What is 12 * 7?\n\nAssistant: 12 * 7 = 84.\n#### 84"
    assert all(row["feedback"]["score"] == 7 for row in jsonl.read(tmp_path / "llm.jsonl"))


def test_bad_conversation_names_its_field(tmp_path, jsonl):
    bad = {"id": "x", "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}
    source = jsonl.write(tmp_path / "chats.jsonl", [CONVERSATIONS[0], bad])
    with pytest.raises(DocumentError, match=r"chats\.jsonl:2: field 'messages\[1\]\.role': expected 'assistant'"):
        check_inputs([source])
