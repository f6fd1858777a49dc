"""A stand-in for `vllm serve` in the SLURM tests: an OpenAI-compatible server on
127.0.0.1 that lists one model and answers every chat completion with the same verdict, or
with ``--mixed`` (the online stage's tests) a good or a poor one, by a hash of the document.

    python tests/slurm/fake_judge.py --port 8123 --name judge --startup-delay 3 --pid-file judge.pid

It starts listening only after --startup-delay seconds, like a server loading a model,
so that the job template's wait for /v1/models is exercised.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

# A complete verdict: the critic refuses one that does not score every axis of its rubric.
VERDICT = {"score": 7, "critique": "Clear and correct; could use an example.",
           "axes": {name: 7 for name in ("writing_style", "expertise", "educational_value", "factual_accuracy",
                                         "efficiency")}}


def mixed_verdict(document: str) -> dict:
    """``--mixed``: score 9 (level 5) or 2 (level 2), chosen by the document's hash."""
    score = 9 if hashlib.sha256(document.encode()).digest()[0] % 2 == 0 else 2
    return {"score": score, "critique": "Correct and clear." if score == 9 else "Wrong and muddled.",
            "axes": dict.fromkeys(VERDICT["axes"], score)}


def document_of(request: dict) -> str:
    """The document a rubric request shows the judge (between its <document> tags)."""
    user = request["messages"][-1]["content"]
    return user.split("<document>", 1)[-1].split("</document>", 1)[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--startup-delay", type=float, default=0.0)
    parser.add_argument("--pid-file")
    parser.add_argument("--mixed", action="store_true", help="a verdict by the document's hash (9 or 2)")
    args = parser.parse_args()
    if args.pid_file:
        with open(args.pid_file, "w") as f:
            f.write(f"{os.getpid()}\n")
    time.sleep(args.startup_delay)

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802 (http.server's naming)
            if self.path.rstrip("/") == "/v1/models":
                self._reply(200, {"object": "list", "data": [{"id": args.name, "object": "model"}]})
            else:
                self._reply(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._reply(404, {"error": {"message": f"no route {self.path}"}})
                return
            verdict = mixed_verdict(document_of(json.loads(body))) if args.mixed else VERDICT
            message = {"role": "assistant", "content": json.dumps(verdict)}
            self._reply(200, {"id": "fake", "object": "chat.completion", "model": args.name,
                              "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]})

    print(f"fake judge {args.name!r} listening on 127.0.0.1:{args.port}", flush=True)
    HTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
