"""Conversations -> token ids and per-token roles, through a chat template.

The chat template is the tokenizer's own when it has one (a Hugging Face folder's
``chat_template`` in ``tokenizer_config.json`` or ``chat_template.jinja``: an imported
instruct model keeps its format), else :data:`DEFAULT_CHAT_TEMPLATE`::

    <|system|>
    You are a careful tutor.<|feedback|>Quality: 5/5 ...<|/feedback|>
    <|user|>
    What is 12 * 7?
    <|assistant|>
    12 * 7 = 84.

(its markers are ordinary text for SentencePiece and GPT-2 tokenizers, which have no role
tokens). Templates are Jinja, rendered as transformers' ``apply_chat_template`` renders them.

**Feedback** goes into the system message, as the IXT paper does for SFT: the prefix ids of
the pretraining template (``[<|feedback|>] text [<|/feedback|>]``, ``format.prefixes``) are
appended to an existing system message's content, or make up a new system message. The
delimiters are always the ids themselves, never matched from text.

**Which tokens train**: the assistant turns, from the first token after the template's
generation prompt (``<|im_start|>assistant\\n``) to the end of what the turn renders
(content and end-of-turn marker, e.g. ``...<|im_end|>\\n``). Found by rendering the
conversation up to each assistant turn with and without it, so any template whose rendering
grows turn by turn works; others are refused with a clear error. The system message (and
the feedback in it), user turns and the generation prompts are masked.

**Tokens** are the tokenizer's encoding of the rendered text run by run (the runs between
feedback blocks), special tokens such as ``<|im_start|>`` recognised as in transformers: the
ids of ``tokenizer.apply_chat_template`` (tests check it on SmolLM2-Instruct).

**Feedback dropout** needs the conversation without feedback as well. :func:`encode_conversation`
returns one sequence that holds both: tokens common to both variants, tokens only the
conditioned one has (``FEEDBACK``) and tokens only the unconditioned one has (``PLAIN``; a
template's default system prompt, say), so the dataset picks a variant per (conversation,
epoch) by dropping one kind.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from megatron_ixt.format.errors import TokenizerError

LOSS = 1
"""Role bit: the token is trained on (an assistant turn)."""
FEEDBACK = 2
"""Role bit: the token belongs to the conditioned variant only (the feedback; rarely, text the
tokenizer encodes differently after it)."""
PLAIN = 4
"""Role bit: the token belongs to the unconditioned variant only."""

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
"""The chat template of tokenizers without one of their own (module docstring)."""

_MARK = re.compile("\ue000\\[feedback (\\d+)\\]\ue000")
"""Stands for the feedback ids in the rendered text: ``\\ue000[feedback N]\\ue000``, with an N
larger than any ``[feedback N]`` the conversation's own text holds (:func:`_mark_for`), so the
mark with the largest N is ours, whatever the messages contain (private-use characters too)."""


def _mark_for(messages: Sequence[dict]) -> str:
    used = [int(n) for m in messages for n in re.findall(r"\[feedback (\d+)\]", str(m.get("content", "")))]
    return f"\ue000[feedback {max(used, default=-1) + 1}]\ue000"


def _find_mark(text: str) -> Optional[str]:
    numbers = [int(n) for n in _MARK.findall(text)]
    return f"\ue000[feedback {max(numbers)}]\ue000" if numbers else None


class ChatTemplateError(TokenizerError):
    """A chat template that cannot be rendered or whose assistant turns cannot be found."""


@dataclass(frozen=True)
class ChatTemplate:
    """A loaded chat template: its Jinja source and where it came from."""

    source: str
    """Jinja text."""
    origin: str
    """'tokenizer' (the tokenizer's own) or 'default'."""
    special_tokens: tuple = ()
    """(name, text) pairs the template may use, e.g. ('eos_token', '<|im_end|>')."""

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.source.encode("utf-8")).hexdigest()

    def identity(self) -> dict:
        """What a dataset's ``.meta.json`` and a checkpoint record about it."""
        return {"origin": self.origin, "sha256": self.sha256}

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
        try:
            return _compiled(self.source).render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                                 **dict(self.special_tokens))
        except Exception as error:  # jinja2's TemplateError, or the template's raise_exception
            raise ChatTemplateError(f"the {self.origin} chat template cannot render this conversation: {error}") from None


def _now() -> datetime.datetime:
    """The clock of ``strftime_now`` (a test pins it)."""
    return datetime.datetime.now()


@functools.lru_cache(maxsize=8)
def _compiled(source: str):
    """The template compiled as transformers compiles it (sandboxed, trim_blocks,
    lstrip_blocks, loop controls, ``raise_exception``, ``tojson``); ``{% generation %}``
    blocks render their content."""
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class _Generation(Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body).set_lineno(lineno)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_Generation, jinja2.ext.loopcontrols])
    def strftime_now(format):  # transformers' global (Llama 3.x templates date their system message)
        return _now().strftime(format)

    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateError as error:
        raise ChatTemplateError(f"the chat template is not valid Jinja: {error}") from None


def chat_template_for(tokenizer) -> ChatTemplate:
    """The tokenizer's own chat template (Hugging Face folders), else the default."""
    folder = _tokenizer_folder(tokenizer)
    return _template_of_folder(folder) if folder is not None else ChatTemplate(DEFAULT_CHAT_TEMPLATE, "default")


@functools.lru_cache(maxsize=8)
def _template_of_folder(folder: Path) -> ChatTemplate:
    """Read once per folder: generation asks for it per prompt."""
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    source = config.get("chat_template")
    if isinstance(source, list):  # named templates: transformers uses "default"
        source = {t.get("name"): t.get("template") for t in source}.get("default")
    jinja_path = folder / "chat_template.jinja"
    if not source and jinja_path.is_file():
        source = jinja_path.read_text(encoding="utf-8")
    if isinstance(source, str) and source:
        specials = []
        for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
            value = config.get(name)
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str):
                specials.append((name, value))
        return ChatTemplate(source, "tokenizer", tuple(specials))
    return ChatTemplate(DEFAULT_CHAT_TEMPLATE, "default")


def _tokenizer_folder(tokenizer) -> Optional[Path]:
    """The folder of the tokenizer's files, where its ``tokenizer_config.json`` (and chat
    template) live: a tokenizer.json's, a SentencePiece model's, GPT-2's vocabulary's."""
    files = getattr(tokenizer, "_files", None) or {}
    path = files.get("tokenizer_model") or files.get("vocab_file")
    return Path(path).parent if path else None


def _special_ids(tokenizer, template: ChatTemplate) -> dict[str, int]:
    """The template's special tokens (``bos_token``, ``eos_token`` ...) a rendering spells out
    as text, with the ids they stand for. A tokenizer.json matches its special tokens in text
    itself; a SentencePiece model never produces a control piece such as ``<s>`` from text, so
    its rendering is split at them, as transformers splits on special tokens."""
    if getattr(tokenizer, "tokenizer_type", None) == "HuggingFaceTokenizer":
        return {}
    vocab = tokenizer.vocab
    return {text: vocab[text] for _, text in template.special_tokens if text in vocab}


def _encode_text(tokenizer, text: str, specials: dict[str, int]) -> tuple[list[int], list[int]]:
    """``tokenizer.encode_with_offsets``, with the ``specials`` strings as their ids."""
    if not specials:
        return tokenizer.encode_with_offsets(text)
    ids, starts, position = [], [], 0
    for part in re.split("(" + "|".join(re.escape(t) for t in sorted(specials, key=len, reverse=True)) + ")", text):
        if part in specials:
            ids.append(specials[part])
            starts.append(position)
        elif part:
            part_ids, part_starts = tokenizer.encode_with_offsets(part)
            ids.extend(part_ids)
            starts.extend(s + position for s in part_starts)
        position += len(part)
    return ids, starts


# -- encoding ------------------------------------------------------------------------------


def with_feedback(messages: Sequence[dict]) -> list[dict]:
    """The messages with the feedback mark at the end of the system message (a new one
    first when there is none)."""
    mark = _mark_for(messages)
    messages = [dict(m) for m in messages]
    if messages and messages[0]["role"] == "system":
        messages[0]["content"] = messages[0]["content"] + mark
    else:
        messages.insert(0, {"role": "system", "content": mark})
    return messages


def _trained_spans(template: ChatTemplate, messages: Sequence[dict], text: str) -> list[tuple[int, int]]:
    """Character spans of ``text`` (the whole rendering) that train: each assistant turn."""
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = template.render(messages[:i], add_generation_prompt=True)
        through = template.render(messages[:i + 1])
        if not (through.startswith(before) and text.startswith(through)):
            raise ChatTemplateError(
                f"the {template.origin} chat template does not render a conversation turn by turn (the rendering "
                f"up to assistant turn {i} is not a prefix of the whole), so its assistant tokens cannot be found")
        spans.append((len(before), len(through)))
    return spans


def _encode_runs(tokenizer, text: str, spans, feedback_ids: Sequence[int],
                 specials: Optional[dict] = None) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and LOSS/FEEDBACK roles of a rendered text, the feedback mark replaced by
    ``feedback_ids`` and the template's special tokens by theirs (:func:`_special_ids`)."""
    ids, roles, position = [], [], 0
    mark = _find_mark(text) if len(feedback_ids) else None
    for k, run in enumerate(text.split(mark) if mark else [text]):
        if k:
            ids.extend(feedback_ids)
            roles.extend([FEEDBACK] * len(feedback_ids))
            position += len(mark)
        if run:
            run_ids, starts = _encode_text(tokenizer, run, specials or {})
            ids.extend(run_ids)
            starts = np.asarray(starts, dtype=np.int64) + position
            trained = np.zeros(len(starts), dtype=bool)
            for a, b in spans:  # a token trains when its first character is in an assistant span
                trained |= (starts >= a) & (starts < b)
            roles.extend((trained * LOSS).astype(np.uint8).tolist())
            position += len(run)
    return np.asarray(ids, dtype=np.int64), np.asarray(roles, dtype=np.uint8)


def render_ids(tokenizer, template: ChatTemplate, messages: Sequence[dict],
               feedback_ids: Optional[Sequence[int]] = None,
               add_generation_prompt: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One variant: the ids of ``messages`` (with ``feedback_ids`` in the system message
    when given) and their roles (``LOSS`` on trained tokens, ``FEEDBACK`` on the feedback)."""
    if feedback_ids is not None and len(feedback_ids):
        messages = with_feedback(messages)
    text = template.render(messages, add_generation_prompt=add_generation_prompt)
    spans = [] if add_generation_prompt else _trained_spans(template, messages, text)
    return _encode_runs(tokenizer, text, spans, [] if feedback_ids is None else list(feedback_ids),
                        _special_ids(tokenizer, template))


def encode_rendered(tokenizer, text: str, feedback_ids: Sequence[int]) -> np.ndarray:
    """The ids of a conversation already rendered from :func:`with_feedback`'s messages (the
    feedback's place marked in the text), with ``feedback_ids`` at the mark (the lm-eval
    backend renders through lm-eval and encodes here)."""
    return _encode_runs(tokenizer, text, [], list(feedback_ids), _special_ids(tokenizer, chat_template_for(tokenizer)))[0]


def encode_conversation(tokenizer, template: ChatTemplate, messages: Sequence[dict],
                        feedback_ids: Optional[Sequence[int]] = None,
                        eod: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """The stored sequence of one conversation and its roles (uint8 bit set per token).

    Without feedback: the conversation's ids. With feedback: ``common prefix + PLAIN tokens +
    FEEDBACK tokens + common suffix`` of the conditioned and unconditioned renderings, so that
    dropping the ``PLAIN`` tokens gives the conditioned ids and dropping the ``FEEDBACK``
    tokens the unconditioned ids. ``eod`` is appended (trained), as Megatron-LM's SFT dataset
    does, unless the template already ends assistant turns with it (ChatML's ``<|im_end|>``
    is SmolLM2-Instruct's eos): the model learns to stop where the template stops."""
    plain, plain_roles = render_ids(tokenizer, template, messages)
    if feedback_ids is not None and len(feedback_ids):
        conditioned, roles = render_ids(tokenizer, template, messages, feedback_ids)
        ids, roles = _merge_variants(conditioned, roles, plain, plain_roles)
    else:
        ids, roles = plain, plain_roles
    if eod is not None and not (ids[(roles & LOSS) != 0] == eod).any():
        ids = np.append(ids, np.int64(eod))
        roles = np.append(roles, np.uint8(LOSS))
    return ids, roles


def _merge_variants(conditioned, conditioned_roles, plain, plain_roles):
    n = min(len(conditioned), len(plain))

    def common(a, a_roles, b, b_roles) -> int:  # length of the common run at the start
        differ = np.flatnonzero((a[:n] != b[:n]) | (a_roles[:n] != b_roles[:n]))
        return int(differ[0]) if len(differ) else n

    head = common(conditioned, conditioned_roles, plain, plain_roles)
    tail = min(common(conditioned[::-1], conditioned_roles[::-1], plain[::-1], plain_roles[::-1]), n - head)
    only_conditioned = slice(head, len(conditioned) - tail)
    only_plain = slice(head, len(plain) - tail)
    # Usually the two differ by the feedback alone. A tokenizer may also encode text after it
    # differently (a SentencePiece model's segmentation reaches across the split at the
    # feedback): then each variant keeps its own tokens there, assistant tokens trained in
    # both (their LOSS bit kept beside PLAIN / FEEDBACK).
    ids = np.concatenate([conditioned[:head], plain[only_plain], conditioned[only_conditioned],
                          conditioned[len(conditioned) - tail:]])
    roles = np.concatenate([conditioned_roles[:head], PLAIN | (plain_roles[only_plain] & LOSS),
                            FEEDBACK | (conditioned_roles[only_conditioned] & LOSS),
                            conditioned_roles[len(conditioned) - tail:]]).astype(np.uint8)
    return ids, roles


def variant(ids: np.ndarray, roles: np.ndarray, conditioned: bool) -> tuple[np.ndarray, np.ndarray]:
    """One variant of a stored sequence: with its feedback (``conditioned``) or without."""
    keep = (roles & (PLAIN if conditioned else FEEDBACK)) == 0
    return ids[keep], roles[keep]


def check_template(tokenizer, template: ChatTemplate) -> None:
    """Refuse, before any work, a template this module cannot use: render a small
    two-turn conversation with and without a system message."""
    probe = [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."},
             {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    for messages in (probe, [{"role": "system", "content": "Be brief."}, *probe]):
        ids, roles = render_ids(tokenizer, template, messages)
        if not (roles & LOSS).any():
            raise ChatTemplateError(f"the {template.origin} chat template renders no assistant tokens")
