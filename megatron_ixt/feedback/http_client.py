"""The client for OpenAI-compatible chat-completions endpoints (vLLM, SGLang, llama.cpp,
OpenAI, OpenRouter, ...), on ``httpx``.

``httpx`` does the HTTP: a pool of keep-alive connections (one TCP and TLS handshake per
connection, not per document), connect/read/write timeouts, and ``trust_env=False`` so that
an ``HTTP_PROXY`` or ``.netrc`` in the environment cannot send requests for a local judge
elsewhere. What this module adds:

* **retries** with exponential backoff and jitter on 408/409/425/429/5xx answers,
  connection errors, timeouts and truncated bodies; a ``Retry-After`` header (seconds or
  an HTTP date) is honoured, capped so that a wrong header cannot stall a run. Every wait
  is recorded in ``ChatClient.retries`` (reason, seconds), which the tests read instead of
  timing a loaded machine;
* **bounded concurrency**: at most ``max_concurrency`` requests in flight from this client,
  however many threads call it (a slot is not held while waiting to retry); the pool holds
  as many connections;
* **reasoning models**: the reasoning that servers return beside the answer
  (``reasoning_content`` in vLLM/DeepSeek, ``reasoning`` in OpenRouter/Ollama) is returned
  separately from ``content``.

``httpx`` is imported when the first client is made, so that ``annotate_feedback.py --help``
and the other critics do not pay for it.
"""

from __future__ import annotations

import email.utils
import json
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from megatron_ixt.feedback.base import JudgeUnavailable, VerdictError

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
# Statuses that say "this request is wrong" (too long, bad parameter): the next document
# may well work, so they fail the document, not the run.
DOCUMENT_STATUSES = frozenset({400, 413, 422})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry."""

    max_retries: int = 5
    """Retries after the first attempt; 0 disables retrying."""
    backoff_s: float = 1.0
    """Wait before the first retry; doubles with each further retry."""
    backoff_max_s: float = 60.0
    """Largest wait computed by backoff."""
    retry_after_max_s: float = 300.0
    """Largest wait a server's Retry-After may ask for."""


@dataclass
class ChatResponse:
    """The parts of a chat-completions answer the critics use."""

    content: str
    reasoning: str | None = None
    finish_reason: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)


class _Retryable(Exception):
    """A failed attempt that may succeed when repeated; ``retry_after`` in seconds or None."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (``"5"``, ``"0.5"`` or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def chat_completions_url(endpoint: str) -> str:
    """``http://host:8000/v1`` -> ``http://host:8000/v1/chat/completions`` (full URLs kept)."""
    endpoint = endpoint.rstrip("/")
    if not endpoint.endswith("/chat/completions"):
        endpoint += "/chat/completions"
    if urlsplit(endpoint).scheme not in ("http", "https"):
        raise ValueError(f"--endpoint must be an http(s) URL, got {endpoint!r}")
    return endpoint


def _text(value: Any) -> str:
    """Message content as text: a string, or a list of ``{"type": "text", "text": ...}`` parts."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(part.get("text", "") for part in value if isinstance(part, dict))
    return str(value)


class ChatClient:
    """Sends chat-completions requests with retries; safe to share between threads."""

    def __init__(self, endpoint: str, model: str, api_key: str | None = None,
                 timeout_s: float = 120.0, retry: RetryPolicy = RetryPolicy(),
                 max_concurrency: int = 8, seed: int | None = None):
        import httpx

        self.url = chat_completions_url(endpoint)
        self.model = model
        self.timeout_s = timeout_s
        self.retry = retry
        self.retries: list[tuple[str, float]] = []
        """Every failed attempt that was retried: (reason, seconds waited before the next)."""
        headers = {"Content-Type": "application/json", "Accept": "application/json",
                   "User-Agent": "megatron-ixt-feedback/1"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(
            headers=headers, timeout=httpx.Timeout(timeout_s), trust_env=False,
            limits=httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency))
        self._transient = (httpx.TransportError, httpx.DecodingError)
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._closed = threading.Event()
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Stop: threads waiting to retry give up at once (used on Ctrl-C); drop the pool."""
        self._closed.set()
        self._http.close()

    def chat(self, messages: list[dict[str, str]], **params: Any) -> ChatResponse:
        """POST one request; retry per the policy; raise JudgeUnavailable when retries run out."""
        body = json.dumps({"model": self.model, "messages": messages, **params}).encode("utf-8")
        last_error = "no attempt made"
        for attempt in range(self.retry.max_retries + 1):
            if self._closed.is_set():
                raise JudgeUnavailable("client closed")
            try:
                with self._slots:
                    return self._post(body)
            except _Retryable as error:
                last_error = str(error)
                if attempt == self.retry.max_retries:
                    break
                delay = self._delay(attempt, error.retry_after)
                with self._lock:
                    self.retries.append((last_error, delay))
                logger.warning("judge request failed (%s); retry %d/%d in %.2f s",
                               error, attempt + 1, self.retry.max_retries, delay)
                if self._closed.wait(delay):
                    raise JudgeUnavailable("client closed")
        raise JudgeUnavailable(f"{self.url}: {last_error} (after {self.retry.max_retries + 1} attempts)")

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        backoff = min(self.retry.backoff_max_s, self.retry.backoff_s * 2 ** attempt)
        with self._lock:
            # Jitter so that many workers rejected together do not return together.
            backoff *= self._random.uniform(0.5, 1.0)
        if retry_after is not None:
            return min(self.retry.retry_after_max_s, max(backoff, retry_after))
        return backoff

    def _post(self, body: bytes) -> ChatResponse:
        try:
            response = self._http.post(self.url, content=body)
            status, payload = response.status_code, response.content
        except self._transient as error:
            # Refused/reset connections, timeouts, truncated bodies, a server that closes
            # without answering, a stale keep-alive connection.
            raise _Retryable(f"{type(error).__name__}: {error}") from None
        except RuntimeError as error:  # the pool was closed under us (close() on Ctrl-C)
            raise JudgeUnavailable(f"client closed ({error})") from None
        if status in RETRY_STATUSES:
            raise _Retryable(f"HTTP {status}: {_snippet(payload)}",
                             parse_retry_after(response.headers.get("Retry-After")))
        if status in DOCUMENT_STATUSES:
            raise VerdictError(f"judge rejected the request: HTTP {status}: {_snippet(payload)}")
        if status != 200:
            # 401/403/404 and the like: wrong key, model or URL. Every document would fail.
            raise JudgeUnavailable(f"{self.url}: HTTP {status}: {_snippet(payload)}")
        try:
            answer = json.loads(payload)
        except ValueError:
            raise _Retryable(f"response is not JSON: {_snippet(payload)}") from None
        return _parse_response(answer)


def _parse_response(answer: Any) -> ChatResponse:
    try:
        choice = answer["choices"][0]
        message = choice["message"]
    except (KeyError, IndexError, TypeError):
        raise VerdictError(f"response has no choices[0].message: {_snippet(json.dumps(answer).encode())}") from None
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    return ChatResponse(content=_text(message.get("content")),
                        reasoning=_text(reasoning) or None,
                        finish_reason=choice.get("finish_reason"),
                        usage=answer.get("usage") or {})


def _snippet(payload: bytes, limit: int = 300) -> str:
    text = payload.decode("utf-8", errors="replace").strip()
    return text if len(text) <= limit else text[:limit] + "..."
