"""``--critic auto``: the offline critic that fits each document, chosen by its ``domain``.

=================================  ================
document                           critic
=================================  ================
``domain: code`` (Python)          python
``domain: math``                   math
anything else, or no ``domain``    text
=================================  ================

Code in another ``language`` goes to the text critic too. Each sub-critic writes its own
``judge``, so a record always says which one judged it.
"""

from __future__ import annotations

from typing import Any, Mapping

from megatron_ixt.feedback.base import Critic
from megatron_ixt.feedback.documents import DOMAIN_CODE, DOMAIN_MATH
from megatron_ixt.feedback.math_critic import MathCritic
from megatron_ixt.feedback.python_critic import PythonCritic
from megatron_ixt.feedback.record import Feedback
from megatron_ixt.feedback.text_critic import TextCritic


class AutoCritic(Critic):
    """Dispatches on ``domain`` to the python, math or text critic."""

    name = "auto"
    default_workers = 2  # the python critic's test runs benefit from two workers

    def __init__(self, time_limit_s: float = 5.0, memory_limit_mb: int = 1024):
        self.python = PythonCritic(time_limit_s=time_limit_s, memory_limit_mb=memory_limit_mb)
        self.math = MathCritic()
        self.text = TextCritic()

    @property
    def judge(self) -> str:
        return f"auto({self.python.judge}, {self.math.judge}, {self.text.judge})"

    def describe(self) -> dict[str, Any]:
        return {"judge": self.judge, **{k: v for k, v in self.python.describe().items() if k != "judge"}}

    def choose(self, doc: Mapping[str, Any]) -> Critic:
        """The critic for this document."""
        domain = doc.get("domain")
        if domain == DOMAIN_CODE and doc.get("language", "python") == "python":
            return self.python
        if domain == DOMAIN_MATH:
            return self.math
        return self.text

    def critique(self, doc: Mapping[str, Any]) -> Feedback:
        return self.choose(doc).critique(doc)
