"""The LLM critic against a local OpenAI-compatible server (127.0.0.1, free port)."""

from __future__ import annotations

import pytest

from megatron_ixt.feedback import JudgeUnavailable, VerdictError, annotate_file
from megatron_ixt.feedback.http_client import chat_completions_url, parse_retry_after
from megatron_ixt.feedback.llm_critic import LLMCritic, RubricPrompt, parse_verdict, split_reasoning
from megatron_ixt.feedback.llm_critic import MalformedVerdict

DOC = {"id": "d1", "domain": "prose", "text": "Water boils at 100 degrees Celsius at sea level."}


def make_critic(server, **kwargs) -> LLMCritic:
    settings = dict(model="test-judge", api_key="sk-test", timeout_s=2.0, max_retries=3,
                    backoff_s=0.01, concurrency=4)
    settings.update(kwargs)
    return LLMCritic(server.url, **settings)


def test_normal_verdict(chat_server, judge):
    server = chat_server(lambda i, r: judge.Reply(judge.completion(judge.verdict(8, "Accurate and concise."))))
    feedback = make_critic(server).critique(DOC)
    assert feedback.score == 8
    assert feedback.axes["factual_accuracy"] == 9 and len(feedback.axes) == 5
    assert feedback.critique == "Accurate and concise."
    assert feedback.judge == "test-judge (prompt ixt-rubric/1)"
    assert feedback.to_record()["scale"] == [0, 10]
    request = server.requests[0]
    assert request["model"] == "test-judge" and request["temperature"] == 0.0
    assert judge.document_of(request) == DOC["text"]
    assert server.headers[0]["Authorization"] == "Bearer sk-test"


def test_connections_are_pooled_and_no_proxy_is_taken_from_the_environment(chat_server, judge, monkeypatch):
    # A proxy in the environment must not capture requests for a local judge: this one
    # does not exist, so a request sent through it would fail.
    for variable in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    server = chat_server(lambda i, r: judge.Reply(judge.completion(judge.verdict(8))))
    critic = make_critic(server)
    for _ in range(10):
        assert critic.critique(DOC).score == 8
    assert len(server.requests) == 10 and server.connections == 1  # one kept-alive connection


@pytest.mark.parametrize("style", ["reasoning_content", "reasoning", "think_tags", "lone_close_tag"])
def test_reasoning_models_keep_only_the_verdict(chat_server, judge, style):
    # The reasoning itself contains a decoy JSON verdict that must not be taken.
    thoughts = 'Let me think. A first guess: {"score": 1, "critique": "decoy"}. No, it is fine.'
    final = judge.verdict(9, "Correct fact.")
    if style in ("reasoning_content", "reasoning"):
        body = judge.completion(final, reasoning=thoughts, reasoning_key=style)
    elif style == "think_tags":
        body = judge.completion(f"<think>\n{thoughts}\n</think>\n\n{final}")
    else:  # the chat template opened <think> in the prompt; the reply only closes it
        body = judge.completion(f"{thoughts}\n</think>\n{final}")
    server = chat_server(lambda i, r: judge.Reply(body))
    feedback = make_critic(server).critique(DOC)
    assert feedback.score == 9 and feedback.critique == "Correct fact."
    assert "decoy" in feedback.reasoning
    assert len(server.requests) == 1


def test_malformed_verdict_then_good_one_on_reask(chat_server, judge):
    replies = [judge.completion("I think this deserves about a seven."),
               judge.completion(judge.verdict(7, "Fine after all."))]
    server = chat_server(lambda i, r: judge.Reply(replies[i]))
    feedback = make_critic(server).critique(DOC)
    assert feedback.score == 7
    assert len(server.requests) == 2
    reask = server.requests[1]["messages"]
    assert reask[-2] == {"role": "assistant", "content": "I think this deserves about a seven."}
    assert "no JSON object" in reask[-1]["content"]


def test_malformed_twice_fails_the_document_not_the_run(chat_server, judge, jsonl, tmp_path):
    bad = judge.completion('{"score": 42, "critique": "out of range"}')

    def behaviour(index, request):
        if "broken" in judge.document_of(request):
            return judge.Reply(bad)
        return judge.default_behaviour(index, request)

    server = chat_server(behaviour)
    docs = [{"id": 1, "text": "a fine text"}, {"id": 2, "text": "broken judge answer"}, {"id": 3, "text": "ok"}]
    critic = make_critic(server)
    with pytest.raises(VerdictError, match="outside 0-10"):
        critic.critique(docs[1])
    out = tmp_path / "out.jsonl"
    summary = annotate_file(jsonl.write(tmp_path / "in.jsonl", docs), out, critic, progress=False)
    written = jsonl.read(out)
    assert [d["id"] for d in written] == [1, 2, 3]
    assert "feedback" not in written[1] and "outside 0-10" in written[1]["feedback_error"]
    assert "feedback" in written[0] and "feedback" in written[2]
    assert summary.outcomes["error"] == 1 and summary.outcomes["annotated"] == 2


def test_429_with_retry_after_then_success(chat_server, judge):
    ok = judge.completion(judge.verdict(6))
    replies = [judge.Reply({"error": "rate limited"}, status=429, headers={"Retry-After": "0.4"}),
               judge.Reply(ok)]
    server = chat_server(lambda i, r: replies[i])
    critic = make_critic(server, backoff_s=0.01)
    feedback = critic.critique(DOC)
    assert feedback.score == 6
    assert len(server.requests) == 2
    # Waited as the server asked, not the 10 ms backoff: the recorded wait, not a wall clock
    # that a loaded machine stretches.
    [(reason, waited)] = critic.client.retries
    assert reason.startswith("HTTP 429") and waited == 0.4


def test_missing_axes_are_reasked_then_an_error(chat_server, judge, jsonl, tmp_path):
    # A real judge (llama.cpp, a small instruct model) scored 2 of the rubric's 5 axes.
    partial = judge.completion(judge.verdict(6, "Partly judged.", expertise=6, efficiency=5))
    complete = judge.completion(judge.verdict(6, "All axes."))
    replies = [partial, complete]
    server = chat_server(lambda i, r: judge.Reply(replies[i]))
    feedback = make_critic(server).critique(DOC)
    assert feedback.critique == "All axes." and len(feedback.axes) == 5
    assert "lacks writing_style" in server.requests[1]["messages"][-1]["content"]

    always_partial = chat_server(lambda i, r: judge.Reply(partial))
    out = tmp_path / "out.jsonl"
    summary = annotate_file(jsonl.write(tmp_path / "in.jsonl", [DOC]), out, make_critic(always_partial),
                            progress=False)
    [written] = jsonl.read(out)
    assert "feedback" not in written and "lacks writing_style" in written["feedback_error"]
    assert summary.outcomes["error"] == 1 and len(always_partial.requests) == 2


def test_500_and_503_then_success(chat_server, judge):
    replies = [judge.Reply({"error": "boom"}, status=500), judge.Reply({"error": "busy"}, status=503),
               judge.Reply(judge.completion(judge.verdict(5)))]
    server = chat_server(lambda i, r: replies[i])
    assert make_critic(server).critique(DOC).score == 5
    assert len(server.requests) == 3


def test_timeout_then_success(chat_server, judge):
    ok = judge.completion(judge.verdict(4))
    # A read timeout far above a loaded machine's scheduling delays (the retry's instant answer
    # once missed a 0.3 s timeout at load 9), and a first answer far slower than it.
    server = chat_server(lambda i, r: judge.Reply(ok, delay_s=6.0 if i == 0 else 0.0))
    critic = make_critic(server, timeout_s=2.0)
    assert critic.critique(DOC).score == 4
    assert len(server.requests) == 2
    # Gave up on the slow answer at the read timeout and retried (not a wall-clock bound).
    [(reason, _)] = critic.client.retries
    assert reason.startswith("ReadTimeout")


def test_retries_are_bounded(chat_server, judge):
    server = chat_server(lambda i, r: judge.Reply({"error": "down"}, status=502))
    with pytest.raises(JudgeUnavailable, match="HTTP 502.*after 3 attempts"):
        make_critic(server, max_retries=2).critique(DOC)
    assert len(server.requests) == 3


def test_bad_credentials_stop_at_once(chat_server, judge):
    server = chat_server(lambda i, r: judge.Reply({"error": "invalid key"}, status=401))
    with pytest.raises(JudgeUnavailable, match="HTTP 401"):
        make_critic(server).critique(DOC)
    assert len(server.requests) == 1


def test_concurrency_is_bounded(chat_server, judge, jsonl, tmp_path, prose_docs):
    server = chat_server(lambda i, r: judge.Reply(judge.completion(judge.verdict(7)), delay_s=0.05))
    critic = make_critic(server, concurrency=3)
    annotate_file(jsonl.write(tmp_path / "in.jsonl", prose_docs), tmp_path / "out.jsonl", critic,
                  workers=6, progress=False)  # more workers than request slots
    assert len(server.requests) == len(prose_docs)
    assert 1 < server.max_in_flight <= 3


def test_server_dies_mid_run_then_resume(chat_server, judge, jsonl, tmp_path):
    docs = [{"id": f"n{i}", "text": f"Document {i} " + "word " * i} for i in range(40)]
    source = jsonl.write(tmp_path / "in.jsonl", docs)
    out = tmp_path / "out.jsonl"

    def dying(index, request):
        return judge.Reply(die=True) if index == 15 else judge.default_behaviour(index, request)

    first = chat_server(dying)
    with pytest.raises(JudgeUnavailable):
        annotate_file(source, out, make_critic(first, max_retries=2), workers=3, progress=False)
    partial = jsonl.read(out)
    assert 0 < len(partial) < len(docs)
    assert [d["id"] for d in partial] == [d["id"] for d in docs[:len(partial)]]  # a prefix, in order

    second = chat_server()  # a new server on another port; same judge model and prompt
    summary = annotate_file(source, out, make_critic(second), workers=3, progress=False)
    final = jsonl.read(out)
    assert [d["id"] for d in final] == [d["id"] for d in docs]  # every document exactly once
    assert all("feedback" in d for d in final)
    assert summary.outcomes["resumed"] == len(partial)
    assert summary.outcomes["annotated"] == len(docs) - len(partial)
    assert len(second.requests) == len(docs) - len(partial)  # nothing judged twice


def test_verdict_parsing_and_reasoning_split():
    score, axes, critique = parse_verdict('Here you go:\n```json\n{"axes": {"expertise": 6, '
                                          '"efficiency": 3}, "score": 4.5, "critique": "  Too\\n wordy. "}\n```',
                                          axes_required=("expertise", "efficiency"))
    assert (score, axes, critique) == (4.5, {"expertise": 6.0, "efficiency": 3.0}, "Too wordy.")
    all_axes = '"writing_style": 7, "expertise": 6, "educational_value": 8, "factual_accuracy": 9, "efficiency": 7'
    for bad, message in [("", "no answer"), ('{"score": "7", "critique": "x"}', "must be a number"),
                         ('{"score": 7, "axes": {%s}, "critique": ""}' % all_axes, "critique"),
                         ('{"score": 7, "axes": {"clarity": 5}, "critique": "x"}', "unknown axes"),
                         ('{"score": 7, "critique": "no axes"}', "lacks writing_style"),
                         ('{"score": 7, "axes": {"expertise": 6, "efficiency": null}, "critique": "x"}',
                          "lacks writing_style, educational_value, factual_accuracy, efficiency")]:
        with pytest.raises(MalformedVerdict, match=message):
            parse_verdict(bad)
    assert split_reasoning("<think>still thinking", None) == ("", "still thinking")
    assert split_reasoning("answer", "field") == ("answer", "field")


def test_prompt_is_versioned_data_and_urls_are_normalised():
    prompt = RubricPrompt.load("rubric_v1")
    assert (prompt.name, prompt.version, prompt.scale) == ("ixt-rubric", 1, (0.0, 10.0))
    messages = prompt.messages({"text": "x" * 20000, "domain": "math", "reference_answer": 12})
    assert "characters omitted" in messages[1]["content"] and "reference final answer is: 12" in messages[1]["content"]
    assert chat_completions_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_completions_url("http://h:1/v1/chat/completions") == "http://h:1/v1/chat/completions"
    assert parse_retry_after("2") == 2.0 and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past


def test_reasoning_goes_to_the_audit_file_not_the_record(chat_server, judge, jsonl, tmp_path):
    body = judge.completion(judge.verdict(8, "Good."), reasoning="The claim is standard physics.")
    server = chat_server(lambda i, r: judge.Reply(body))
    out, audit = tmp_path / "out.jsonl", tmp_path / "audit.jsonl"
    annotate_file(jsonl.write(tmp_path / "in.jsonl", [DOC]), out, make_critic(server), audit_path=audit,
                  progress=False)
    assert jsonl.read(audit) == [{"id": "d1", "judge": "test-judge (prompt ixt-rubric/1)",
                                  "reasoning": "The claim is standard physics."}]
    record = jsonl.read(out)[0]["feedback"]
    assert set(record) == {"score", "scale", "axes", "critique", "judge"}
