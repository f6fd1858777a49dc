"""What a critic is, and how to build one by name.

A critic reads one document (a dict with at least ``text``; see ``documents.py`` for the
keys that tell a critic what the document is) and returns a :class:`Feedback`. Critics are
called from several threads at once by the annotation pipeline, so ``critique`` must be
thread-safe; the ones here keep no per-call state on ``self``.
"""

from __future__ import annotations

import importlib
import threading
from abc import ABC, abstractmethod
from typing import Any, Mapping

from megatron_ixt.feedback.record import Feedback

# CPython 3.11's parser and symbol-table passes are not thread-safe (cpython#106905:
# "SystemError: AST constructor recursion depth mismatch" when two annotation workers parse
# at once). Every critic holds this one lock around ast.parse, compile and symtable.
COMPILER_LOCK = threading.Lock()


class NotApplicable(Exception):
    """The critic cannot judge this kind of document (e.g. the math critic on prose).

    The annotation pipeline passes such documents through without feedback and counts
    them; it is not an error.
    """


class VerdictError(Exception):
    """The judge answered, but its answer could not be turned into feedback.

    The pipeline writes the document without feedback, with the reason under
    ``feedback_error``, and goes on with the next one.
    """


class JudgeUnavailable(Exception):
    """The judge could not be reached even after retries (server down, network gone).

    The pipeline stops: the documents already written stay, and a rerun of the same
    command resumes where it stopped.
    """


class Critic(ABC):
    """Base class of all critics.

    Subclasses set ``name`` (the registry name), ``version`` (bumped whenever the same
    document could get a different verdict) and ``default_workers`` (how many documents
    the pipeline should judge at once: 1 for pure-Python critics, which gain nothing from
    threads, more for critics that wait on subprocesses or the network).
    """

    name: str = "critic"
    version: str = "1"
    default_workers: int = 1

    @property
    def judge(self) -> str:
        """The ``judge`` string written into every record, e.g. ``text-critic/1``."""
        return f"{self.name}-critic/{self.version}"

    def describe(self) -> dict[str, Any]:
        """Settings that change verdicts; a resumed run must use the same ones."""
        return {"judge": self.judge}

    @abstractmethod
    def critique(self, doc: Mapping[str, Any]) -> Feedback:
        """Judge one document. Raises NotApplicable, VerdictError or JudgeUnavailable."""

    def close(self) -> None:
        """Release resources (connections, scratch directories). Default: nothing."""


# name -> "module:Class"; imported on demand so that `--critic text` does not import the
# HTTP client and the corpus builder does not import anything it does not use.
_REGISTRY: dict[str, str] = {
    "llm": "megatron_ixt.feedback.llm_critic:LLMCritic",
    "python": "megatron_ixt.feedback.python_critic:PythonCritic",
    "math": "megatron_ixt.feedback.math_critic:MathCritic",
    "text": "megatron_ixt.feedback.text_critic:TextCritic",
    "auto": "megatron_ixt.feedback.auto:AutoCritic",
}

CRITIC_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def critic_class(name: str) -> type[Critic]:
    """The class registered under ``name``."""
    try:
        module_name, class_name = _REGISTRY[name].split(":")
    except KeyError:
        raise ValueError(f"unknown critic {name!r}; choose one of {', '.join(CRITIC_NAMES)}") from None
    return getattr(importlib.import_module(module_name), class_name)


def build_critic(name: str, **kwargs: Any) -> Critic:
    """Build the critic registered under ``name`` with keyword settings.

    >>> build_critic("text").judge
    'text-critic/1'
    """
    return critic_class(name)(**kwargs)
