"""Critics that write feedback on training documents, and the annotation pipeline.

Critics (all return a :class:`Feedback` record on the 0-10 scale, see ``record.py``; the
document format, ``Feedback``, ``quality_level`` and the input errors belong to
``megatron_ixt.data``):

- ``llm``: a (thinking) judge model behind an OpenAI-compatible endpoint, rubric over the
  five axes (``llm_critic.py``, prompts in ``prompts/``);
- ``python``: compiles code, runs its HumanEval-style tests in a sandbox, static signals
  (``python_critic.py``, ``sandbox.py``);
- ``math``: final answer against the reference, step arithmetic (``math_critic.py``);
- ``text``: Gopher/C4/FineWeb-style rules (``text_critic.py``);
- ``auto``: python/math/text by the document's ``domain`` (``auto.py``).

Usage::

    from megatron_ixt.feedback import build_critic, annotate_file
    critic = build_critic("auto")
    summary = annotate_file(["corpus.jsonl"], "corpus.annotated.jsonl", critic, fraction=0.15)
    print(summary.format())

The demo corpus builder lives in ``examples/demo/corpus`` (demo code, outside the package); docs/feedback.md has
the document keys, the critics' rules and the data sources.
"""

from megatron_ixt.feedback.annotate import ResumeError, annotate_file, is_selected
from megatron_ixt.feedback.base import (CRITIC_NAMES, Critic, JudgeUnavailable, NotApplicable,
                                        VerdictError, build_critic, critic_class)
from megatron_ixt.format.errors import DataError, DocumentError
from megatron_ixt.feedback.documents import iter_documents
from megatron_ixt.feedback.summary import Summary
from megatron_ixt.feedback.record import AXES, SCALE, Feedback, quality_level

__all__ = [
    "AXES", "SCALE", "CRITIC_NAMES", "Critic", "DataError", "DocumentError", "Feedback", "JudgeUnavailable",
    "NotApplicable", "ResumeError", "Summary", "VerdictError", "annotate_file", "build_critic",
    "critic_class", "is_selected", "iter_documents", "quality_level",
]
