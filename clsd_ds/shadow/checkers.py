"""Objective verdicts on decoded text: a pluggable ``Checker`` interface and the arithmetic checker.

A checker maps (task, completion) to a ``Verdict``: ``pass`` / ``fail`` / ``timeout`` / ``error``, with the reason.
The reward of the shadow loop is 1 for ``pass`` and 0 otherwise; what the checker runs, it runs in the sandbox.

``ArithmeticChecker`` (the quickstart's worked problems, ``data/corpus.py``): the completion is what follows
"Solution:". Its stated equations ``x op y = z`` and its ``Answer:`` line are parsed on the host; one sandboxed
program evaluates the task's ``compute`` expression (the reference answer, from the question's numbers alone) and
the left side of every stated equation. Pass iff the answer equals the reference and every stated equation holds;
a completion without an answer line fails. The host only compares what the program printed with what it parsed,
so a completion cannot make itself pass except by being right.

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
        run = self.sandbox.run(program)
        if run.status != "ok" or run.exit_code != 0:
            return Verdict("timeout" if run.status == "timeout" else "error",
                           run.reason or f"exit code {run.exit_code}", run.seconds)
        try:
            out = json.loads(run.stdout.strip().splitlines()[-1])
        except (json.JSONDecodeError, IndexError):
            return Verdict("error", f"unreadable check output {run.stdout[-200:]!r}", run.seconds)
        wrong = [f"{s} = {claimed} (is {value})" for (s, claimed), value in zip(steps, out["steps"])
                 if value != claimed]
        if answer != out["reference"]:
            return Verdict("fail", f"answer {answer!r}, expected {out['reference']!r}", run.seconds)
        if wrong:
            return Verdict("fail", "wrong step: " + "; ".join(wrong), run.seconds)
        return Verdict("pass", "", run.seconds)
