"""Checks worked math solutions: the final answer against the reference, and each step's
arithmetic.

A math document holds a problem and a worked solution whose final answer is marked the
GSM8K way (``#### 42``) or as ``\\boxed{42}`` or "The answer is 42". The reference comes
from the document's ``reference_answer`` key. Besides comparing the final answers, the
critic re-computes every calculator annotation (GSM8K's ``<<48/2=24>>``) and every plain
equation such as ``17*2 = 34``, so it can say *where* a wrong solution went wrong, and
catch a right answer reached through a wrong step.
"""

from __future__ import annotations

import ast
import operator
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Mapping

from megatron_ixt.feedback.base import COMPILER_LOCK, Critic, NotApplicable
from megatron_ixt.feedback.documents import DOMAIN_MATH
from megatron_ixt.feedback.record import Feedback

_NUMBER = r"-?\d[\d,]*(?:\.\d+)?"
_FINAL_PATTERNS = (
    re.compile(r"####\s*\$?\s*(" + _NUMBER + r"(?:\s*/\s*\d+)?)"),
    re.compile(r"\\boxed\{\s*\$?\s*(" + _NUMBER + r"(?:\s*/\s*\d+)?)\s*\}"),
    re.compile(r"answer is\s*:?\s*\$?\s*(" + _NUMBER + r"(?:\s*/\s*\d+)?)", re.IGNORECASE),
)
_ANNOTATION = re.compile(r"<<([^=<>]+)=([^<>]+)>>")
# "17*2 = 34", "51 + 102 = 153": at least one operator between numbers, then "= number".
# The result must not be followed by another operator ("2/40 = 1/20" states a fraction,
# not a result), and a match preceded by an operator is the tail of a longer expression
# with units in it ("5 pounds * 2 - 3 = 7"); _plain_equations skips those.
_EQUATION = re.compile(
    r"(?<![\w.])(" + _NUMBER + r"(?:\s*[-+*/\u00d7]\s*\(?" + _NUMBER + r"\)?)+)\s*=\s*\$?("
    + _NUMBER + r"%?)(?!\s*[-+*/^\u00d7]\s*\d)")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
        ast.Pow: operator.pow}


def parse_number(text: str | int | float) -> Fraction | None:
    """``"1,234"``, ``"$5"``, ``"-3.5"``, ``"3/4"``, ``"12%"`` -> exact Fraction; None if not a number."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return Fraction(text)
    cleaned = str(text).strip().replace(",", "").replace("$", "").rstrip("%.").strip()
    # A reference written as a GSM8K answer line ("#### 18") is accepted too.
    cleaned = cleaned.lstrip("#").strip()
    try:
        if "/" in cleaned:
            num, den = cleaned.split("/", 1)
            return Fraction(Fraction(num.strip()), Fraction(den.strip()))
        return Fraction(cleaned)
    except (ValueError, ZeroDivisionError):
        return None


def evaluate_arithmetic(expression: str) -> Fraction | None:
    """Exact value of a plain arithmetic expression, or None if it is anything else."""
    expression = expression.replace(",", "").replace("\u00d7", "*").replace("$", "")
    try:
        with COMPILER_LOCK:  # not thread-safe beside the python critic's parses (base.py)
            tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        return None

    def value(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            # Via repr: 0.1 is the decimal 1/10 as written, not the binary float near it.
            return Fraction(repr(node.value)) if isinstance(node.value, float) else Fraction(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            inner = value(node.operand)
            return -inner if isinstance(node.op, ast.USub) else inner
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Pow) and (right.denominator != 1 or abs(right) > 64):
                raise ValueError("exponent too large to check")
            return Fraction(_OPS[type(node.op)](left, right))
        raise ValueError("not arithmetic")

    try:
        return value(tree.body)
    except (ValueError, ZeroDivisionError, OverflowError, TypeError):
        return None


def agrees(computed: Fraction, stated_text: str) -> bool:
    """Whether a stated result matches the computed one, up to the precision it is written in.

    ``33.33`` for 100/3 agrees (two decimals written); ``104`` for 51*2 does not.
    """
    stated = parse_number(stated_text)
    if stated is None:
        return True  # not a number we can read: nothing to hold against the text
    decimals = len(stated_text.split(".", 1)[1].rstrip("%$ ")) if "." in stated_text else 0
    tolerance = Fraction(1, 2 * 10 ** decimals)
    if stated_text.rstrip().endswith("%"):  # "3/6 = 50%": the result written as a percentage
        return abs(computed * 100 - stated) <= tolerance or abs(computed - stated) <= tolerance
    return abs(computed - stated) <= tolerance


def fmt(value: Fraction) -> str:
    """A Fraction written the way a solution would write it."""
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.6g}"


def final_answer(text: str) -> tuple[str, Fraction] | None:
    """The last marked final answer in ``text`` as (as written, value)."""
    for pattern in _FINAL_PATTERNS:
        matches = pattern.findall(text)
        if matches:
            value = parse_number(matches[-1])
            if value is not None:
                return matches[-1].strip(), value
    return None


@dataclass
class StepCheck:
    """One re-computed step: where it is, what it says, what it should say."""

    line: int
    shown: str
    stated: str
    computed: Fraction


def check_steps(text: str) -> tuple[list[StepCheck], list[StepCheck]]:
    """All checkable steps and the wrong ones among them, in text order."""
    steps: list[StepCheck] = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        annotated = set()
        for expression, stated in _ANNOTATION.findall(line):
            computed = evaluate_arithmetic(expression)
            if computed is not None:
                annotated.add("".join(expression.split()))
                steps.append(StepCheck(line_number, f"{expression}={stated}", stated.strip(), computed))
        # Plain equations outside the annotations (which would otherwise be read twice).
        plain = _ANNOTATION.sub(" ", line)
        for match in _EQUATION.finditer(plain):
            before = plain[:match.start()].rstrip()
            if before.endswith(("*", "/", "+", "-", "\u00d7", "(", "^")):
                continue  # the tail of a longer expression: its head is not a plain number
            expression, stated = match.groups()
            if "".join(expression.split()) in annotated:
                continue  # "48/2 = <<48/2=24>>24": the annotation already checked this step
            computed = evaluate_arithmetic(expression)
            if computed is not None:
                steps.append(StepCheck(line_number, f"{expression.strip()} = {stated}", stated, computed))
    wrong = [step for step in steps if not agrees(step.computed, step.stated)]
    return steps, wrong


def _difference_hint(answer: Fraction, reference: Fraction, steps: list[StepCheck]) -> str:
    """A guess at the kind of error, from how the two answers relate."""
    step = next((step for step in steps if step.computed == answer), None)
    if step is not None:
        return (f" (it equals the intermediate result on line {step.line}: the solution may stop "
                "a step early or answer another question)")
    if abs(answer - reference) == 1:
        return " (off by one)"
    if answer == -reference:
        return " (wrong sign)"
    if reference and answer / reference in (10, Fraction(1, 10), 100, Fraction(1, 100)):
        return " (off by a power of ten)"
    return ""


class MathCritic(Critic):
    """Checks the final answer of worked solutions against ``reference_answer``."""

    name = "math"
    version = "1"
    default_workers = 1

    def critique(self, doc: Mapping[str, Any]) -> Feedback:
        if doc.get("domain") not in (None, DOMAIN_MATH) and "reference_answer" not in doc:
            raise NotApplicable(f"math critic does not judge domain {doc.get('domain')!r}")
        text = doc["text"]
        steps, wrong_steps = check_steps(text)
        found = final_answer(text)
        reference = doc.get("reference_answer")
        reference_value = parse_number(reference) if reference is not None else None

        notes: list[str] = []
        if wrong_steps:
            first = wrong_steps[0]
            notes.append(f"Arithmetic error on line {first.line}: {first.shown}, but it is "
                         f"{fmt(first.computed)}" + (f" ({len(wrong_steps) - 1} more wrong step"
                                                     f"{'s' if len(wrong_steps) > 2 else ''})"
                                                     if len(wrong_steps) > 1 else "") + ".")
        if found is None:
            verdict, accuracy = "No final answer is marked (expected a '#### N' line).", 2.0
        elif reference_value is None:
            if reference is not None:
                notes.append(f"The reference answer {reference!r} is not a number; only the "
                             "arithmetic was checked.")
            else:
                notes.append("No reference answer; only the arithmetic was checked.")
            verdict, accuracy = f"Final answer {found[0]}.", 3.0 if wrong_steps else 7.0
        elif found[1] == reference_value:
            if wrong_steps:
                verdict = (f"Final answer {found[0]} matches the reference, but the working "
                           "contains a wrong step.")
                accuracy = 5.0
            else:
                verdict, accuracy = f"Final answer {found[0]} matches the reference.", 10.0
        else:
            hint = _difference_hint(found[1], reference_value, steps)
            verdict = f"Final answer {found[0]} differs from the reference {fmt(reference_value)}{hint}."
            if not wrong_steps:
                notes.append("Every checkable step is arithmetically right, so the mistake is in "
                             "the reasoning or setup, not the calculation.")
            accuracy = 1.0

        shown_steps = len(steps)
        if shown_steps >= 2:
            teaching, work = 9.0, f"Shows {shown_steps} checkable steps."
        elif shown_steps == 1:
            teaching, work = 6.0, "Shows one checkable step."
        else:
            teaching, work = 3.0, "Shows no checkable working."
        # Correctness dominates: a well-explained wrong answer is still a wrong answer.
        score = 0.8 * accuracy + 0.2 * teaching
        critique = " ".join([verdict, *notes, work])
        return Feedback(score=score, critique=critique, judge=self.judge,
                        axes={"factual_accuracy": accuracy, "educational_value": teaching})
