"""The conversation format of supervised fine-tuning: Megatron-LM's ``messages`` JSONL, plus
IXT's optional ``feedback`` object.

One JSON object per line::

    {"messages": [{"role": "system", "content": "You are a careful tutor."},
                  {"role": "user", "content": "What is 12 * 7?"},
                  {"role": "assistant", "content": "12 * 7 = 84."}],
     "feedback": {"score": 9, "critique": "Correct and shows the product."}}

- ``messages`` (required): a list of ``{"role", "content"}`` objects; ``content`` is a
  string. A conversation is an optional ``system`` message, then ``user`` and ``assistant``
  turns alternating, starting with ``user`` and ending with a non-empty ``assistant`` turn.
  As in Megatron-LM's SFT dataset, one line may hold several conversations one after the
  other, each starting with its ``system`` message; each becomes its own sequence.
- ``feedback`` (optional): the pretraining documents' feedback object (``document.py``).
  Training renders it into the system message (``tokenizers/chat.py``); a line without it
  trains without feedback. ``id``, ``domain`` and the critics' keys are as for documents.

Errors name the file, the line and the field (``messages[2].role``), as for documents.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from megatron_ixt.format.document import Feedback, _parse_json, validate_line_keys
from megatron_ixt.format.errors import DocumentError, FieldError

ROLES = ("system", "user", "assistant")
MESSAGES_KEY = "messages"
"""The key of the message list (Megatron-LM's)."""


@dataclass(frozen=True)
class Conversation:
    """One validated line: its conversations (each a tuple of ``{"role", "content"}`` dicts)."""

    conversations: tuple[tuple[dict, ...], ...]
    feedback: Optional[Feedback] = None
    id: Optional[Union[str, int]] = None
    domain: Optional[str] = None
    obj: Optional[dict] = field(default=None, compare=False, repr=False)


def split_conversations(messages: list) -> list[list]:
    """Megatron-LM's ``SFTDataset._split_conversations``: a new conversation starts at
    every ``system`` message."""
    out, current = [], []
    for message in messages:
        if message.get("role") == "system" and current:
            out.append(current)
            current = []
        current.append(message)
    if current:
        out.append(current)
    return out


def validate_messages(messages: Any, key: str = MESSAGES_KEY) -> list[list[dict]]:
    """The conversations of a ``messages`` value; ``FieldError`` naming the first bad field."""
    if not isinstance(messages, list) or not messages:
        raise FieldError(key, "a non-empty list of {\"role\", \"content\"} messages", messages)
    for i, message in enumerate(messages):
        name = f"{key}[{i}]"
        if not isinstance(message, dict):
            raise FieldError(name, "an object with 'role' and 'content'", message)
        role = message.get("role")
        if role not in ROLES:
            raise FieldError(f"{name}.role", f"one of {', '.join(ROLES)}", role)
        content = message.get("content")
        if not isinstance(content, str):
            raise FieldError(f"{name}.content", "a string", content)
    conversations, start = [], 0
    for conversation in split_conversations(messages):
        _check_order(conversation, key, start)
        conversations.append([{"role": m["role"], "content": m["content"]} for m in conversation])
        start += len(conversation)
    return conversations


def _check_order(conversation: list[dict], key: str, start: int) -> None:
    """[system] user assistant (user assistant)*, the assistant turns non-empty."""
    turns = conversation[1:] if conversation[0]["role"] == "system" else conversation
    offset = start + len(conversation) - len(turns)
    if not turns:
        raise FieldError(f"{key}[{start}]", "a system message followed by user and assistant turns",
                         detail="the conversation has no turns")
    for j, message in enumerate(turns):
        expected = "user" if j % 2 == 0 else "assistant"
        if message["role"] != expected:
            previous = turns[j - 1]["role"] if j else "the start of the conversation"
            raise FieldError(f"{key}[{offset + j}].role", f"'{expected}' after {previous}", message["role"],
                             detail="turns alternate user, assistant; a system message only starts a conversation")
        if expected == "assistant" and not message["content"].strip():
            raise FieldError(f"{key}[{offset + j}].content", "a non-empty assistant turn", message["content"])
    if turns[-1]["role"] != "assistant":
        raise FieldError(f"{key}[{offset + len(turns) - 1}].role", "the conversation to end with an assistant turn",
                         turns[-1]["role"], detail="a trailing user turn has nothing to train on")


def validate_conversation(obj: Any, feedback_key: str = "feedback",
                          default_scale: tuple[float, float] = (0.0, 10.0)) -> Conversation:
    """Validate a parsed JSON line; raise ``FieldError``."""
    if not isinstance(obj, dict):
        raise FieldError(None, "a JSON object with a 'messages' list", obj)
    if MESSAGES_KEY not in obj:
        raise FieldError(MESSAGES_KEY, "a list of {\"role\", \"content\"} messages (the key is missing)")
    conversations = validate_messages(obj[MESSAGES_KEY])
    doc_id, domain = validate_line_keys(obj)
    raw = obj.get(feedback_key)
    feedback = None if raw is None else Feedback.from_dict(raw, default_scale, prefix=feedback_key)
    return Conversation(tuple(tuple(c) for c in conversations), feedback, doc_id, domain, obj)


def parse_conversation_line(raw: bytes, path: str = "<input>", line: Optional[int] = None,
                            feedback_key: str = "feedback",
                            default_scale: tuple[float, float] = (0.0, 10.0)) -> Conversation:
    """Decode, parse and validate one raw input line; ``DocumentError`` with its location."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DocumentError(path, line, None, "UTF-8 text",
                            detail=f"invalid byte at offset {error.start} of the line") from None
    if not text or text.isspace():
        raise DocumentError(path, line, None, "a JSON object, got a blank line")
    try:
        obj = _parse_json(text)
    except json.JSONDecodeError as error:
        raise DocumentError(path, line, None, "a JSON object",
                            detail=f"malformed JSON: {error.msg} at column {error.colno}") from None
    try:
        conversation = validate_conversation(obj, feedback_key, default_scale)
        if "\\u" in text:
            _check_encodable(conversation)
        return conversation
    except FieldError as error:
        raise DocumentError.from_field_error(error, path, line) from None


def _check_encodable(conversation: Conversation) -> None:
    i = 0
    for turns in conversation.conversations:
        for message in turns:
            try:
                message["content"].encode("utf-8")
            except UnicodeEncodeError:
                raise FieldError(f"{MESSAGES_KEY}[{i}].content", "text encodable as UTF-8",
                                 detail="it contains an unpaired surrogate escape") from None
            i += 1


def assistant_text(conversation: Conversation) -> str:
    """The assistant turns of a line, joined by blank lines: what the offline critics
    (python, math, text) judge."""
    return "\n\n".join(m["content"] for turns in conversation.conversations for m in turns
                       if m["role"] == "assistant")


def transcript(conversation: Conversation) -> str:
    """The whole line as plain text (``User: ...`` / ``Assistant: ...``), for the LLM judge."""
    parts = []
    for turns in conversation.conversations:
        for m in turns:
            parts.append(f"{m['role'].capitalize()}: {m['content']}")
    return "\n\n".join(parts)
