"""Realistic bugs planted in correct Python code, for the demo corpus.

Each mutator finds the places in a function where a programmer could make one kind of
mistake, and the builder picks one at random:

- ``off_by_one``: ``<`` <-> ``<=`` (and ``>`` <-> ``>=``), a ``range`` stop one too far or
  too short, an index or slice bound shifted by one;
- ``wrong_operator``: ``+`` <-> ``-``, ``*`` -> ``+``, ``//`` <-> ``/``, ``%`` -> ``//``,
  ``and`` <-> ``or``, ``==`` <-> ``!=``, ``<`` <-> ``>``, ``in`` -> ``not in``,
  ``min`` <-> ``max``;
- ``missing_return``: the function's last ``return`` loses its keyword (the value is
  computed, then dropped);
- ``wrong_edge_case``: a guard clause (``if ...: return ...``) deleted, or the value an early
  return gives for the edge case changed (``True`` <-> ``False``, ``0`` <-> ``1``, ``[]``
  -> ``None``).

Edits are made on the source text at the positions the AST gives, not by unparsing the
tree, so formatting and comments stay as they were: a broken variant must not be
recognisable by its layout. Whether a mutant is actually wrong is for the critics to
decide (a few are equivalent to the original).
"""

from __future__ import annotations

import ast
import random
import re
from dataclasses import dataclass
from typing import Callable

KINDS = ("off_by_one", "wrong_operator", "missing_return", "wrong_edge_case")


@dataclass(frozen=True)
class Edit:
    """Replace ``source[start:end]`` with ``text``; ``note`` says what was done, for the record."""

    start: int
    end: int
    text: str
    note: str


class _Positions:
    """AST (line, UTF-8 byte column) positions -> character offsets in the source."""

    def __init__(self, source: str):
        self.source = source
        self.line_starts = [0]
        for line in source.splitlines(keepends=True):
            self.line_starts.append(self.line_starts[-1] + len(line))
        self.lines = source.splitlines(keepends=True)

    def offset(self, line: int, byte_col: int) -> int:
        text = self.lines[line - 1].encode("utf-8")[:byte_col].decode("utf-8", errors="ignore")
        return self.line_starts[line - 1] + len(text)

    def span(self, node: ast.AST) -> tuple[int, int]:
        return (self.offset(node.lineno, node.col_offset),
                self.offset(node.end_lineno, node.end_col_offset))

    def text(self, node: ast.AST) -> str:
        start, end = self.span(node)
        return self.source[start:end]


def _operator_edit(pos: _Positions, left: ast.AST, right: ast.AST, old: str, new: str,
                   line: int) -> Edit | None:
    """Swap the operator token ``old`` written between two operands for ``new``."""
    start, end = pos.span(left)[1], pos.span(right)[0]
    gap = pos.source[start:end]
    # Word operators need word boundaries ("in" inside "not in" must not match "in").
    pattern = rf"(?<![\w]){re.escape(old)}(?![\w])" if old[0].isalpha() else re.escape(old)
    if old in ("<", ">"):  # "<" must not match inside "<=" or "<<"
        pattern = rf"(?<![<>=!]){re.escape(old)}(?![<>=])"
    match = re.search(pattern, gap)
    if match is None:
        return None
    return Edit(start + match.start(), start + match.end(), new, f"line {line}: `{old}` -> `{new}`")


_STRICTNESS = {ast.Lt: ("<", "<="), ast.LtE: ("<=", "<"), ast.Gt: (">", ">="), ast.GtE: (">=", ">")}
_BINOPS = {ast.Add: ("+", "-"), ast.Sub: ("-", "+"), ast.Mult: ("*", "+"),
           ast.FloorDiv: ("//", "/"), ast.Div: ("/", "//"), ast.Mod: ("%", "//")}
_COMPARE_SWAPS = {ast.Eq: ("==", "!="), ast.NotEq: ("!=", "=="), ast.Lt: ("<", ">"),
                  ast.Gt: (">", "<"), ast.In: ("in", "not in")}


def _compare_ops(node: ast.Compare):
    """(operator, left operand, right operand) of each link of a comparison chain."""
    operands = [node.left, *node.comparators]
    for index, op in enumerate(node.ops):
        yield op, operands[index], operands[index + 1]


def _int_constant(node: ast.AST) -> int | None:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _int_constant(node.operand)
        return -inner if inner is not None else None
    return None


def off_by_one_sites(tree: ast.AST, pos: _Positions, rng: random.Random) -> list[Edit]:
    edits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for op, left, right in _compare_ops(node):
                if type(op) in _STRICTNESS:
                    old, new = _STRICTNESS[type(op)]
                    edits.append(_operator_edit(pos, left, right, old, new, node.lineno))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range"
              and node.args and not node.keywords):
            stop = node.args[0] if len(node.args) == 1 else node.args[1]
            start, end = pos.span(stop)
            value = _int_constant(stop)
            if value is not None:
                new = str(value + rng.choice((-1, 1)))
            elif (isinstance(stop, ast.BinOp) and isinstance(stop.op, ast.Add)
                  and _int_constant(stop.right) == 1):
                new = pos.text(stop.left)  # range(n + 1) -> range(n)
            else:
                new = f"{pos.text(stop)} - 1"
            edits.append(Edit(start, end, new, f"line {node.lineno}: range stop `{pos.text(stop)}` -> `{new}`"))
        elif isinstance(node, ast.Subscript):
            bounds = [node.slice] if not isinstance(node.slice, ast.Slice) else \
                [b for b in (node.slice.lower, node.slice.upper) if b is not None]
            for bound in bounds:
                value = _int_constant(bound)
                if value is not None:
                    new = str(value + (1 if value >= 0 else -1))
                    start, end = pos.span(bound)
                    edits.append(Edit(start, end, new, f"line {node.lineno}: index `{value}` -> `{new}`"))
    return [edit for edit in edits if edit is not None]


def wrong_operator_sites(tree: ast.AST, pos: _Positions, rng: random.Random) -> list[Edit]:
    edits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            old, new = _BINOPS[type(node.op)]
            edits.append(_operator_edit(pos, node.left, node.right, old, new, node.lineno))
        elif isinstance(node, ast.BoolOp):
            old, new = ("and", "or") if isinstance(node.op, ast.And) else ("or", "and")
            edits.append(_operator_edit(pos, node.values[0], node.values[1], old, new, node.lineno))
        elif isinstance(node, ast.Compare):
            for op, left, right in _compare_ops(node):
                if type(op) in _COMPARE_SWAPS:
                    old, new = _COMPARE_SWAPS[type(op)]
                    edits.append(_operator_edit(pos, left, right, old, new, node.lineno))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("min", "max"):
            new = "max" if node.func.id == "min" else "min"
            start, end = pos.span(node.func)
            edits.append(Edit(start, end, new, f"line {node.lineno}: `{node.func.id}` -> `{new}`"))
    return [edit for edit in edits if edit is not None]


def missing_return_sites(tree: ast.AST, pos: _Positions, rng: random.Random) -> list[Edit]:
    returns = [node for node in ast.walk(tree) if isinstance(node, ast.Return) and node.value is not None]
    if not returns:
        return []
    last = max(returns, key=lambda node: (node.lineno, node.col_offset))
    start = pos.offset(last.lineno, last.col_offset)
    value_start = pos.span(last.value)[0]
    return [Edit(start, value_start, "", f"line {last.lineno}: `return` removed")]


# Keyed by (type, value): True == 1 in Python, so a plain dict would merge them.
_EDGE_VALUES = {(bool, True): "False", (bool, False): "True", (int, 0): "1", (int, 1): "0",
                (str, ""): "None", (type(None), None): "False"}


def wrong_edge_case_sites(tree: ast.AST, pos: _Positions, rng: random.Random) -> list[Edit]:
    edits = []
    for parent in ast.walk(tree):
        for body in (getattr(parent, "body", None), getattr(parent, "orelse", None)):
            if not isinstance(body, list) or len(body) < 2:
                continue  # deleting the only statement of a block would not compile
            for stmt in body:
                if (isinstance(stmt, ast.If) and not stmt.orelse and len(stmt.body) == 1
                        and isinstance(stmt.body[0], ast.Return)):
                    start = pos.line_starts[stmt.lineno - 1]
                    end = pos.line_starts[stmt.end_lineno] if stmt.end_lineno < len(pos.lines) else len(pos.source)
                    edits.append(Edit(start, end, "", f"line {stmt.lineno}: guard "
                                      f"`if {pos.text(stmt.test)}: ...` removed"))
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            for stmt in node.body:
                if not isinstance(stmt, ast.Return) or stmt.value is None:
                    continue
                value = stmt.value
                new = None
                if isinstance(value, ast.Constant) and (type(value.value), value.value) in _EDGE_VALUES:
                    new = _EDGE_VALUES[(type(value.value), value.value)]
                elif isinstance(value, (ast.List, ast.Tuple, ast.Dict)) and not getattr(value, "elts", None) \
                        and not getattr(value, "keys", None):
                    new = "None"
                if new is not None:
                    start, end = pos.span(value)
                    edits.append(Edit(start, end, new, f"line {stmt.lineno}: edge-case result "
                                      f"`{pos.text(value)}` -> `{new}`"))
    return edits


MUTATORS: dict[str, Callable[[ast.AST, _Positions, random.Random], list[Edit]]] = {
    "off_by_one": off_by_one_sites,
    "wrong_operator": wrong_operator_sites,
    "missing_return": missing_return_sites,
    "wrong_edge_case": wrong_edge_case_sites,
}


def mutate(source: str, kind: str, rng: random.Random, first_line: int = 1,
           function: str | None = None) -> tuple[str, str] | None:
    """``source`` with one bug of ``kind`` planted at or after ``first_line``.

    ``function`` limits the search to that function's body (HumanEval: the entry point,
    not the helpers its prompt defines). Returns (mutant, note), or None when the code has
    no place for this kind of bug.
    """
    tree = ast.parse(source)
    scope: ast.AST = tree
    if function is not None:
        scope = next((node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.name == function), tree)
    pos = _Positions(source)
    candidates = [edit for edit in MUTATORS[kind](scope, pos, rng)
                  if edit.start >= pos.line_starts[min(first_line, len(pos.lines)) - 1]]
    rng.shuffle(candidates)
    for edit in candidates:
        mutant = source[:edit.start] + edit.text + source[edit.end:]
        if mutant == source:
            continue
        try:
            compile(mutant, "<mutant>", "exec", dont_inherit=True)
        except SyntaxError:
            continue  # e.g. a removed guard left an empty block: try another place
        return mutant, edit.note
    return None
