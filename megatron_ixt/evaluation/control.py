"""Test-time control: the feedback a model generates or is scored under, and the context it sees.

A pretrained model continues ``[start] <|feedback|> prefix <|/feedback|> prompt``, as documents
appear in training; ``[start]`` is the model's document start (``--document-start``, recorded
in its checkpoint): the EOD for models pretrained here, the BOS or nothing for an imported
model, as its own tokenizer encodes a text (so greedy output equals transformers'
``generate``). An SFT model (``--chat``) answers a user message rendered by its chat template,
with the feedback in the system message, as SFT trained it (``tokenizers/chat.py``).

The feedback comes from the flags every generating tool takes (:class:`FeedbackConfig`): a
quality level, a written critique, or none; or from a prompt's own ``feedback`` object. The
prefix template is the checkpoint's (or ``--prefix-template``), read only when some feedback
is asked for: an imported model, which records none, generates without feedback as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from megatron_ixt.config.flags import add_dataclass_arguments
from megatron_ixt.config.schema import arg


@dataclass
class FeedbackConfig:
    """Under which feedback to generate (at most one of the last three), and how."""

    chat: bool = arg(False, "Prompts are user messages, rendered by the tokenizer's chat template with the "
                            "feedback in the system message (models fine-tuned with --sft).")
    system: Optional[str] = arg(None, "With --chat: a system message (the feedback is appended to it).")
    feedback_level: Optional[int] = arg(None, "condition on a quality level", choices=(1, 2, 3, 4, 5))
    critique: Optional[str] = arg(None, "condition on a written critique (critique template)")
    no_feedback: bool = arg(False, "unconditional (no prefix)")


CONDITION_FLAGS = ("feedback_level", "critique", "no_feedback")


def add_feedback_args(parser) -> None:
    """``--chat``, ``--system`` and the mutually exclusive feedback flags."""
    add_dataclass_arguments(parser, FeedbackConfig, fields=("chat", "system"))
    add_dataclass_arguments(parser.add_mutually_exclusive_group(), FeedbackConfig, fields=CONDITION_FLAGS)


def control_prefix(tokenizer, template: str, level: Optional[int] = None, critique: Optional[str] = None,
                   thresholds=None) -> list[int]:
    """Token ids of the prefix to generate under: a quality ``level`` (1..5, default 5) and,
    for a critique template, a written ``critique`` (default: none written)."""
    from megatron_ixt.format.prefixes import feedback_for_level, load_template, prefix_token_ids

    level = level or 5
    kind = load_template(template).kind
    if kind == "critique":
        return prefix_token_ids(tokenizer, template, feedback_for_level(level, critique=critique), thresholds)
    if critique is not None:
        raise ValueError(f"--critique needs a critique template; the prefix template is {template!r} ({kind})")
    return prefix_token_ids(tokenizer, template, level, thresholds)


def chat_context(tokenizer, user: str, feedback_ids: Sequence[int], system: Optional[str] = None) -> list[int]:
    """The ids an SFT model continues to answer ``user``: the conversation rendered by the
    tokenizer's chat template with ``feedback_ids`` in the system message and the template's
    generation prompt."""
    return chat_messages_context(tokenizer, [{"role": "user", "content": user}], feedback_ids, system)


def chat_messages_context(tokenizer, messages: Sequence[dict], feedback_ids: Sequence[int],
                          system: Optional[str] = None) -> list[int]:
    """As :func:`chat_context`, for a whole conversation (``system`` goes first unless the
    messages have their own system message)."""
    from megatron_ixt.tokenizers.chat import chat_template_for, render_ids

    messages = list(messages)
    if system is not None and not (messages and messages[0]["role"] == "system"):
        messages.insert(0, {"role": "system", "content": system})
    ids, _ = render_ids(tokenizer, chat_template_for(tokenizer), messages, list(feedback_ids) or None,
                        add_generation_prompt=True)
    return ids.tolist()


class Conditioner:
    """The contexts of one tool run: its feedback flags (``config``) resolved once against
    the model (its prefix template and quality thresholds, its document start).

    ``default_level``: the quality level when no feedback flag is given (``tools/generate.py``:
    5, the best; None: no feedback, as ``tools/evaluate_benchmarks.py`` defaults to)."""

    def __init__(self, model, tokenizer, config: FeedbackConfig, prefix_template: Optional[str] = None,
                 default_level: Optional[int] = None, per_prompt_feedback: bool = False) -> None:
        from megatron_ixt.evaluation.engine import prefix_template_for

        if config.system is not None and not config.chat:
            raise ValueError("--system needs --chat")
        self.model, self.tokenizer, self.config = model, tokenizer, config
        level = config.feedback_level or (None if config.critique is not None else default_level)
        self.feedback_wanted = not config.no_feedback and (level is not None or config.critique is not None)
        self.template = None
        if self.feedback_wanted or per_prompt_feedback:
            self.template = prefix_template_for(model, prefix_template)
        self.thresholds = model.quality_thresholds()
        self.prefix = (control_prefix(tokenizer, self.template, level, config.critique, self.thresholds)
                       if self.feedback_wanted else [])

    def feedback_ids(self, feedback: Optional[dict] = None) -> list[int]:
        """The prefix ids of a prompt's own ``feedback`` object, else the flags' prefix."""
        if feedback is None:
            return self.prefix
        from megatron_ixt.format.prefixes import prefix_token_ids

        return prefix_token_ids(self.tokenizer, self.template, feedback, self.thresholds)

    def context(self, prompt: str, feedback: Optional[dict] = None, system: Optional[str] = None) -> list[int]:
        """The ids the model continues ``prompt`` from."""
        prefix = self.feedback_ids(feedback)
        if self.config.chat:
            return chat_context(self.tokenizer, prompt, prefix, system if system is not None else self.config.system)
        return [*self.model.text_start(prefix), *self.tokenizer.tokenize(prompt)]
