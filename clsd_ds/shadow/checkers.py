"""Objective verdicts on decoded text: a pluggable ``Checker`` interface, the arithmetic and the Python checker.

A checker maps (task, completion) to a ``Verdict``: ``pass`` / ``fail`` / ``timeout`` / ``error``, with the reason.
The reward of the shadow loop is 1 for ``pass`` and 0 otherwise; what the checker runs, it runs in the sandbox.

``ArithmeticChecker`` (the quickstart's worked problems, ``data/corpus.py``): the completion is what follows
"Solution:". Its stated equations ``x op y = z`` and its ``Answer:`` line are parsed on the host; one sandboxed
program evaluates the task's ``compute`` expression (the reference answer, from the question's numbers alone) and
the left side of every stated equation. Pass iff the answer equals the reference and every stated equation holds;
a completion without an answer line fails. The host only compares what the program printed with what it parsed,
so a completion cannot make itself pass except by being right.

``PythonChecker`` (``functions.py``'s tasks): the completion is the function's body, what follows the prompt's
signature and docstring, up to its first line that is not indented (the end of the function). The sandbox runs the
prompt, the body and a harness that calls the function on each case's inputs and prints what it returned (or the
exception it raised) as one JSON line. The expected outputs never enter the sandbox: the host compares. Pass iff
every case returned its expected value; code written by a model runs only in the sandbox, under its limits.

``CHECKERS`` maps a task's ``checker`` field to its class.

Lean 4 is not here: no Lean toolchain installs from this project's registries (PyPI, Debian, npm). A Lean checker
would be one more ``Checker`` (write the proof to a file, run ``lake env lean`` in the sandbox's directory, pass
iff it exits 0 with no ``sorry``), not claimed until a test runs it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Literal, Protocol

from .sandbox import Sandbox

EQUATION = re.compile(r"(-?\d+(?:\s*[-+*/%]\s*-?\d+)+)\s*=\s*(-?\d+)")
ANSWER = re.compile(r"Answer:[ \t]*([^\n]*)")


@dataclass
class Verdict:
    status: Literal["pass", "fail", "timeout", "error"]
    reason: str = ""
    seconds: float = 0.0

    @property
    def reward(self) -> float:
        return float(self.status == "pass")


class Checker(Protocol):
    """Anything with ``check(task, completion) -> Verdict``; ``task`` is the task set's record (a dict)."""

    def check(self, task: dict, completion: str) -> Verdict: ...


def run_for_json(sandbox: Sandbox, program: str) -> tuple[object, float] | Verdict:
    """Run a check program in the sandbox: (its last output line read as JSON, seconds), or the ``timeout`` /
    ``error`` verdict of a run that did not finish cleanly (the reason ends with the tail of its stderr)."""
    run = sandbox.run(program)
    if run.status != "ok" or run.exit_code != 0:
        stderr = run.stderr.strip()[-200:]
        return Verdict("timeout" if run.status == "timeout" else "error",
                       run.reason or f"exit code {run.exit_code}" + (f": {stderr}" if stderr else ""), run.seconds)
    try:
        return json.loads(run.stdout.strip().splitlines()[-1]), run.seconds
    except (json.JSONDecodeError, IndexError):
        return Verdict("error", f"unreadable check output {run.stdout[-200:]!r}", run.seconds)


class ArithmeticChecker:
    def __init__(self, sandbox: Sandbox):
        self.sandbox = sandbox

    @staticmethod
    def parse(completion: str) -> tuple[list[tuple[str, int]], str | None]:
        """(stated equations (left side, right side), the answer) of a completion, up to its answer line."""
        answer = ANSWER.search(completion)
        body = completion[:answer.start()] if answer else completion
        steps = [(m.group(1), int(m.group(2))) for m in EQUATION.finditer(body)]
        return steps, answer.group(1).strip() if answer else None

    def check(self, task: dict, completion: str) -> Verdict:
        steps, answer = self.parse(completion)
        if answer is None:
            return Verdict("fail", "no 'Answer:' line")
        program = (f"import json\nreference = str({task['compute']})\n"
                   f"steps = [eval(s, {{'__builtins__': {{}}}}) for s, _ in {steps!r}]\n"
                   "print(json.dumps({'reference': reference, 'steps': steps}))")
        ran = run_for_json(self.sandbox, program)
        if isinstance(ran, Verdict):
            return ran
        out, seconds = ran
        wrong = [f"{s} = {claimed} (is {value})" for (s, claimed), value in zip(steps, out["steps"])
                 if value != claimed]
        if answer != out["reference"]:
            return Verdict("fail", f"answer {answer!r}, expected {out['reference']!r}", seconds)
        if wrong:
            return Verdict("fail", "wrong step: " + "; ".join(wrong), seconds)
        return Verdict("pass", "", seconds)


HARNESS = """
import json as _json
_results = []
for _args in {args!r}:
    try:
        _results.append(["returned", {entry}(*_args)])
    except Exception as _exc:
        _results.append(["raised", type(_exc).__name__])
print(_json.dumps(_results, default=repr))
"""


class PythonChecker:
    def __init__(self, sandbox: Sandbox):
        self.sandbox = sandbox

    @staticmethod
    def body(completion: str) -> str:
        """The function's body: the completion up to its first non-empty line that is not indented."""
        lines = completion.split("\n")
        for i, line in enumerate(lines):  # the prompt ends with a newline: the completion starts a line
            if line.strip() and not line[0].isspace():
                return "\n".join(lines[:i])
        return completion

    def check(self, task: dict, completion: str) -> Verdict:
        body = self.body(completion)
        if not body.strip():
            return Verdict("fail", "empty function body")
        args = [a for a, _ in task["cases"]]
        ran = run_for_json(self.sandbox, task["prompt"] + body + "\n" + HARNESS.format(args=args, entry=task["entry"]))
        if isinstance(ran, Verdict):
            return ran
        results, seconds = ran
        try:
            results = [(str(kind), value) for kind, value in results]
        except (TypeError, ValueError):
            return Verdict("error", f"check output is not a list of pairs: {results!r:.200}", seconds)
        if len(results) != len(task["cases"]):
            return Verdict("error", f"{len(results)} results for {len(task['cases'])} cases", seconds)
        for (args, expected), (kind, value) in zip(task["cases"], results):
            call = f"{task['entry']}({', '.join(map(repr, args))})"
            if kind != "returned":
                return Verdict("fail", f"{call} raised {value}", seconds)
            if value != expected or type(value) is not type(expected):
                return Verdict("fail", f"{call} returned {value!r}, expected {expected!r}", seconds)
        return Verdict("pass", "", seconds)


CHECKERS = {"arithmetic": ArithmeticChecker, "python": PythonChecker}

