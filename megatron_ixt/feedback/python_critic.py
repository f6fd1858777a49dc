"""Judges Python code: compiles it, runs its tests when it carries them, reads static signals.

What the critic checks, in order:

1. **Syntax**: ``compile`` (which also runs the symbol table pass, so ``return`` outside a
   function is caught too). Code that does not compile scores 0-1 and the critique quotes
   the error and the line.
2. **Tests** (documents with ``tests`` and ``entry_point``, HumanEval's format): runs
   ``check(entry_point)`` in a child process (``sandbox.py``) with time and memory limits.
   The critique says how many checks failed and, for the first failures, the call, the
   value returned and the value expected, or the exception and the line that raised it.
3. **Static signals**: names used but never defined (via ``symtable``; skipped for
   ``fragment`` documents and after ``from x import *``), docstrings on public functions
   and classes, bare ``except:``, lines over 100 characters, warnings the compiler gives
   (invalid escape sequences, ``is`` with a literal), TODO/FIXME markers.

Scores (axes on 0-10): ``factual_accuracy`` is correctness (tests, else "compiles and every
name is defined"); ``writing_style`` comes from the static signals; ``educational_value``
from documentation density. Code that fails its tests scores its correctness only (1-4):
good style does not rescue code that does not work.
"""

from __future__ import annotations

import ast
import builtins
import io
import re
import symtable
import threading
import tokenize
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

from megatron_ixt.feedback.base import COMPILER_LOCK, Critic, NotApplicable
from megatron_ixt.feedback.documents import DOMAIN_CODE
from megatron_ixt.feedback.record import Feedback, clamp
from megatron_ixt.feedback.sandbox import Limits, TestRun, run_tests

_MODULE_NAMES = frozenset({"__name__", "__file__", "__doc__", "__builtins__", "__spec__",
                           "__loader__", "__package__", "__path__", "__annotations__",
                           "__cached__", "__dict__", "__module__", "__qualname__", "__class__"})
_KNOWN_NAMES = frozenset(dir(builtins)) | _MODULE_NAMES
_TODO = re.compile(r"#.*\b(TODO|FIXME|XXX)\b")
_COMPILE_LOCK = threading.Lock()


@dataclass
class StaticReport:
    """What reading the code (without running it) found."""

    syntax_error: str | None = None
    compiler_warnings: list[str] = field(default_factory=list)
    undefined_names: list[str] = field(default_factory=list)
    public_defs: int = 0
    documented_defs: int = 0
    bare_excepts: int = 0
    long_lines: int = 0
    todo_markers: int = 0
    code_lines: int = 0
    doc_lines: int = 0  # comment lines + docstring lines


def _parse(source: str) -> tuple[ast.Module | None, str | None]:
    """(tree, None) or (None, syntax error as a sentence).

    Parsing and then compiling the tree catches both grammar errors and the errors of the
    symbol-table pass (``return`` outside a function, ``nonlocal`` at module level).
    """
    try:
        with COMPILER_LOCK:
            tree = ast.parse(source)
            compile(tree, "<document>", "exec", dont_inherit=True)
        return tree, None
    except SyntaxError as error:
        lines = source.splitlines()
        line = (error.text or (lines[error.lineno - 1] if error.lineno and error.lineno <= len(lines)
                               else "")).strip()
        where = f" at line {error.lineno}" + (f": `{line}`" if line else "") if error.lineno else ""
        return None, f"{type(error).__name__}: {error.msg}{where}"
    except ValueError as error:  # the source holds a NUL byte
        return None, f"ValueError: {error}"


def undefined_names(source: str) -> list[str]:
    """Global names the code reads but never binds (and that are not builtins), sorted."""
    with COMPILER_LOCK:
        top = symtable.symtable(source, "<document>", "exec")
    bound: set[str] = set()
    used: set[str] = set()
    # `from x import *` and `globals().update(...)` can bind any name: then nothing can be
    # called undefined.
    dynamic = "import *" in source or "globals()" in source

    def walk(table: symtable.SymbolTable) -> None:
        for symbol in table.get_symbols():
            name = symbol.get_name()
            if table is top and (symbol.is_assigned() or symbol.is_imported() or symbol.is_namespace()):
                bound.add(name)
            elif symbol.is_declared_global() and symbol.is_assigned():
                bound.add(name)  # `global x; x = ...` inside a function binds a module name
            # "Neither local nor free" rather than is_global(): Python 3.11's symtable takes
            # any function named "top" for the module and calls all its names global.
            if symbol.is_referenced() and (table is top or not (
                    symbol.is_local() or symbol.is_free() or symbol.is_parameter())):
                used.add(name)
        for child in table.get_children():
            walk(child)

    walk(top)
    if dynamic:
        return []
    return sorted(used - bound - _KNOWN_NAMES)


def analyse(source: str, fragment: bool = False) -> StaticReport:
    """Static signals of ``source``; stops after a syntax error."""
    report = StaticReport()
    # Parsing emits warnings (invalid escapes, `is` with a literal): record them rather than
    # print them, under a lock because catch_warnings swaps process-wide state.
    with _COMPILE_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tree, report.syntax_error = _parse(source)
        if tree is not None and not fragment:
            report.undefined_names = undefined_names(source)
    report.compiler_warnings = sorted({f"line {w.lineno}: {w.message}" for w in caught})
    if tree is None:
        return report
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if not node.name.startswith("_"):
                report.public_defs += 1
                report.documented_defs += ast.get_docstring(node) is not None
            doc = ast.get_docstring(node, clean=False)
            report.doc_lines += doc.count("\n") + 1 if doc else 0
        elif isinstance(node, ast.ExceptHandler) and node.type is None:
            report.bare_excepts += 1
    module_doc = ast.get_docstring(tree, clean=False)
    report.doc_lines += module_doc.count("\n") + 1 if module_doc else 0
    lines = source.splitlines()
    report.long_lines = sum(len(line) > 100 for line in lines)
    report.code_lines = sum(bool(line.strip()) for line in lines)
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.COMMENT:
                report.doc_lines += 1
                report.todo_markers += bool(_TODO.match(token.string))
    except (tokenize.TokenError, SyntaxError):
        pass  # compiled fine, so this is a tokenizer corner case; comments are a detail
    return report


def describe_failure(failure: Mapping[str, Any]) -> str:
    """One failed check as a sentence."""
    text = f"`{failure['source']}`" if failure.get("source") else f"test line {failure['line']}"
    if "error" in failure:
        return f"{text} raised {failure['error']}"
    if "got" in failure:
        op = failure.get("op", "Eq")
        if op in ("Eq", "Is"):
            hint = " (nothing returned: is a return statement missing?)" if failure["got"] == "None" else ""
            return f"{text}: got {failure['got']}, expected {failure['expected']}{hint}"
        return f"{text} is false: left side {failure['got']}, right side {failure['expected']}"
    return f"{text} is false"


class PythonCritic(Critic):
    """Compiles Python documents, runs their tests in a sandbox, reads static signals."""

    name = "python"
    version = "1"
    default_workers = 2  # test runs wait on child processes; two keep two cores busy

    def __init__(self, time_limit_s: float = 5.0, memory_limit_mb: int = 1024):
        self.limits = Limits(time_s=time_limit_s, memory_mb=memory_limit_mb)

    def describe(self) -> dict[str, Any]:
        return {"judge": self.judge, "time_limit_s": self.limits.time_s,
                "memory_limit_mb": self.limits.memory_mb}

    def critique(self, doc: Mapping[str, Any]) -> Feedback:
        if doc.get("domain") not in (None, DOMAIN_CODE) or doc.get("language", "python") != "python":
            raise NotApplicable("python critic judges Python code documents only")
        source = doc["text"]
        static = analyse(source, fragment=bool(doc.get("fragment")))
        if static.syntax_error:
            return Feedback(score=0.5, judge=self.judge,
                            axes={"factual_accuracy": 0.0, "writing_style": 1.0},
                            critique=f"Does not compile: {static.syntax_error}.")
        style, style_notes = self._style(static)
        teaching = self._teaching(static)
        notes: list[str] = []
        if doc.get("tests"):
            run = run_tests(source, doc["tests"], doc["entry_point"], self.limits)
            accuracy, test_note = self._test_verdict(run, doc["entry_point"])
            notes.append(test_note)
            if run.status == "passed":
                score = 0.7 * accuracy + 0.2 * style + 0.1 * teaching
            else:
                score = accuracy  # failing code: correctness alone
        else:
            accuracy = 7.0
            if static.undefined_names:
                accuracy = 3.0
                notes.append("Uses names that are never defined: "
                             f"{', '.join(static.undefined_names[:8])}"
                             + (" and more" if len(static.undefined_names) > 8 else "") + ".")
            else:
                notes.append("Compiles" + ("" if doc.get("fragment") else "; every name it uses "
                                           "is defined") + "; no tests to run.")
            score = 0.5 * accuracy + 0.3 * style + 0.2 * teaching
        critique = " ".join(notes + style_notes)
        return Feedback(score=clamp(score), critique=critique, judge=self.judge,
                        axes={"factual_accuracy": accuracy, "writing_style": style,
                              "educational_value": teaching})

    def _test_verdict(self, run: TestRun, entry_point: str) -> tuple[float, str]:
        """(correctness 1-10, sentence) for a test run."""
        if run.status == "passed":
            return 10.0, f"Passes all {run.checks} test checks of {entry_point}."
        if run.status == "timeout":
            return 1.0, (f"Did not finish the tests of {entry_point} within {self.limits.time_s:g} s "
                         "(an endless loop?).")
        if run.status == "crashed":
            why = "ran out of memory" if "MemoryError" in run.stderr_tail else \
                f"exited with code {run.returncode}"
            return 1.0, f"The test process {why} before reporting."
        parts = []
        if run.checks:
            passed_share = (run.checks - run.failed) / run.checks
            parts.append(f"Fails {run.failed} of {run.checks} test checks of {entry_point}")
            if run.failures:
                shown = "; ".join(describe_failure(f) for f in run.failures[:2])
                parts[-1] += f": {shown}"
            parts[-1] += "."
        else:
            passed_share = 0.0
        if run.error:
            where = {"load": "while loading the code", "tests": "during the tests"}.get(run.phase or "", "")
            parts.append(f"Raised {run.error} {where}".rstrip() + ".")
        # Partial credit below the passing range: 1 (nothing passes) .. 4 (almost all).
        return 1.0 + 3.0 * passed_share, " ".join(parts)

    @staticmethod
    def _style(static: StaticReport) -> tuple[float, list[str]]:
        style, notes = 10.0, []
        if static.public_defs:
            missing = static.public_defs - static.documented_defs
            if missing:
                style -= 3.0 * missing / static.public_defs
                notes.append(f"{missing} of {static.public_defs} public functions/classes lack a docstring.")
            else:
                notes.append(f"All {static.public_defs} public functions/classes have docstrings.")
        if static.bare_excepts:
            style -= min(2.0, float(static.bare_excepts))
            notes.append(f"{static.bare_excepts} bare `except:` clause(s) swallow every error.")
        if static.code_lines and static.long_lines / static.code_lines > 0.1:
            style -= 1.0
            notes.append(f"{static.long_lines} lines are longer than 100 characters.")
        if static.compiler_warnings:
            style -= min(2.0, float(len(static.compiler_warnings)))
            notes.append(f"Compiler warning: {static.compiler_warnings[0]}.")
        if static.todo_markers:
            style -= 0.5
            notes.append(f"{static.todo_markers} TODO/FIXME marker(s) left in.")
        return clamp(style), notes

    @staticmethod
    def _teaching(static: StaticReport) -> float:
        """Documentation density: documented code teaches more than bare code."""
        if not static.code_lines:
            return 0.0
        density = static.doc_lines / static.code_lines
        return 9.0 if density >= 0.25 else 7.0 if density >= 0.1 else 5.0 if density >= 0.03 else 3.0
