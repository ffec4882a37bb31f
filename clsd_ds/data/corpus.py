"""A deterministic arithmetic chain-of-thought corpus (math-like, as the seed's NuminaMath-CoT), made offline.

Each document is a worksheet of several worked problems; every line of a solution follows from the previous
ones, so a small verifier can learn the text and a drafter has something predictable to draft.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

NAMES = ["Ana", "Ben", "Chen", "Dana", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jade", "Kofi", "Lena"]
ITEMS = ["apples", "books", "coins", "marbles", "pencils", "stamps", "cards", "shells"]


@dataclass(frozen=True)
class Problem:
    """One worked problem: its question, the solution's steps, the answer, and ``compute``, a Python expression
    whose ``str()`` is the answer, computed from the question's numbers alone (the shadow loop's check)."""

    kind: str
    question: str
    steps: str
    answer: str
    compute: str

    @property
    def text(self) -> str:
        return f"Problem: {self.question}\nSolution: {self.steps}\nAnswer: {self.answer}"


def _expression(r: random.Random) -> Problem:
    a, b, c, d = r.randint(2, 60), r.randint(2, 60), r.randint(2, 9), r.randint(1, 50)
    s1 = a + b
    s2 = s1 * c
    s3 = s2 - d
    return Problem("expression", f"Compute ({a} + {b}) * {c} - {d}.",
                   f"First, {a} + {b} = {s1}. Then {s1} * {c} = {s2}. Finally, {s2} - {d} = {s3}.", str(s3),
                   f"({a} + {b}) * {c} - {d}")


def _word(r: random.Random) -> Problem:
    name, item = r.choice(NAMES), r.choice(ITEMS)
    a, b, c = r.randint(1, 40), r.randint(2, 9), r.randint(2, 12)
    p = b * c
    return Problem("word", f"{name} has {a} {item}. {name} buys {b} boxes with {c} {item} each. "
                   f"How many {item} does {name} have now?",
                   f"The boxes hold {b} * {c} = {p} {item}. Together, {a} + {p} = {a + p}.", str(a + p),
                   f"{a} + {b} * {c}")


def _sum(r: random.Random) -> Problem:
    xs = [r.randint(1, 99) for _ in range(r.randint(3, 5))]
    steps, total = [], xs[0]
    for x in xs[1:]:
        steps.append(f"{total} + {x} = {total + x}.")
        total += x
    listed = ", ".join(str(x) for x in xs[:-1]) + f" and {xs[-1]}"
    return Problem("sum", f"Find the sum of {listed}.", " ".join(steps), str(total), f"sum({xs})")


def _sequence(r: random.Random) -> Problem:
    start, step = r.randint(1, 30), r.randint(2, 12)
    terms = [start + i * step for i in range(4)]
    nxt = terms[-1] + step
    return Problem("sequence", f"What is the next term of {', '.join(map(str, terms))}?",
                   f"Each term adds {step}. So {terms[-1]} + {step} = {nxt}.", str(nxt),
                   f"2 * {terms[-1]} - {terms[-2]}")


def _division(r: random.Random) -> Problem:
    d, q, rem = r.randint(3, 15), r.randint(3, 30), 0
    rem = r.randint(0, d - 1)
    n = d * q + rem
    return Problem("division", f"Divide {n} by {d} with remainder.", f"{d} * {q} = {d * q}. {n} - {d * q} = {rem}.",
                   f"{q} remainder {rem}", f"'%d remainder %d' % divmod({n}, {d})")


PROBLEMS = [_expression, _word, _sum, _sequence, _division]


def make_document(r: random.Random) -> str:
    """A worksheet of 2 to 4 worked problems."""
    return "\n\n".join(r.choice(PROBLEMS)(r).text for _ in range(r.randint(2, 4)))


def write_corpus(path: str | Path, documents: int, seed: int = 0) -> Path:
    """Write ``documents`` worksheets as JSONL (field ``text``); the same seed gives the same file."""
    r = random.Random(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for _ in range(documents):
            fh.write(json.dumps({"text": make_document(r)}) + "\n")
    return path
