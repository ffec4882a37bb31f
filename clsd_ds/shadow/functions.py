"""Small Python functions with tests, written by the project: the shadow loop's code tasks (``checker: python``).

A family is a kind of function with parameters drawn from a seed (a constant, a character, a bound); one draw is a
task: a ``prompt`` — the function's signature and docstring, what a model continues with the body — its ``entry``
(the function's name) and ``cases``, inputs with the outputs the project's own reference implementation gives for
them (``[args, expected]``, JSON values). The reference stays on the host: the checker runs the model's function in
the sandbox on the inputs and compares what it returned with ``expected`` (``checkers.PythonChecker``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable


@dataclass
class Function:
    kind: str
    entry: str
    params: str  # the signature's parameter list
    doc: str
    reference: Callable
    inputs: list[tuple]

    @property
    def prompt(self) -> str:
        return f'def {self.entry}({self.params}):\n    """{self.doc}"""\n'

    def cases(self) -> list[list]:
        return [[list(args), self.reference(*args)] for args in self.inputs]


def _ints(r: random.Random, n: int = 5, lo: int = -50, hi: int = 99) -> list[tuple]:
    return [(r.randint(lo, hi),) for _ in range(n)]


def _lists(r: random.Random, n: int = 5) -> list[tuple]:
    return [([r.randint(-9, 30) for _ in range(r.randint(0, 6))],) for _ in range(n)]


def _words(r: random.Random, n: int = 5) -> list[tuple]:
    letters = "abcdeilmnorst"
    return [("".join(r.choice(letters + " ") for _ in range(r.randint(0, 12))),) for _ in range(n)]


def add_constant(r):
    k = r.randint(2, 99)
    return Function("add", f"add_{k}", "x", f"Return x plus {k}.", lambda x: x + k, _ints(r))


def scale_list(r):
    k = r.randint(2, 12)
    return Function("scale", f"times_{k}", "xs", f"Return a new list with every number of xs multiplied by {k}.",
                    lambda xs: [k * x for x in xs], _lists(r))


def count_char(r):
    c = r.choice("aeiost")
    return Function("count", f"count_{c}", "s", f"Return how many times the letter '{c}' occurs in s.",
                    lambda s: s.count(c), _words(r))


def divisible(r):
    k = r.randint(2, 13)
    return Function("divisible", f"divisible_by_{k}", "n", f"Return True if n is divisible by {k}, else False.",
                    lambda n: n % k == 0, _ints(r))


def sum_multiples(r):
    k = r.randint(2, 9)
    return Function("multiples", f"sum_multiples_of_{k}", "n",
                    f"Return the sum of the positive multiples of {k} that are less than n.",
                    lambda n: sum(range(k, max(n, 0), k)), _ints(r, lo=0, hi=80))


def clamp(r):
    lo = r.randint(-20, 10)
    hi = lo + r.randint(5, 40)
    return Function("clamp", f"clamp_{abs(lo)}{'n' if lo < 0 else ''}_{hi}", "x",
                    f"Return x limited to the range from {lo} to {hi}: {lo} if x is smaller, {hi} if larger.",
                    lambda x: min(max(x, lo), hi), _ints(r, lo=-60, hi=80))


def largest_above(r):
    k = r.randint(0, 20)
    return Function("filter", f"count_above_{k}", "xs", f"Return how many numbers in xs are greater than {k}.",
                    lambda xs: sum(x > k for x in xs), _lists(r))


FAMILIES = (add_constant, scale_list, count_char, divisible, sum_multiples, clamp, largest_above)
