"""The shadow loop's task set, with a held-out split: worked arithmetic problems (``data/corpus.py``'s kinds) or
small Python functions with tests (``functions.py``).

A task is one JSON line: ``id``, ``split`` (``train`` or ``heldout``), ``kind``, ``checker`` and ``prompt``, and what
its checker needs (``checkers.py``):

- ``checker: arithmetic``: ``prompt`` is ``Problem: <question>\nSolution:``, the start of a worked problem as the
  corpus writes it; ``compute``, a Python expression whose ``str()`` is the answer, and ``answer`` (for reading;
  the checker recomputes it in the sandbox).
- ``checker: python``: ``prompt`` is a function's signature and docstring; ``entry``, its name, and ``cases``,
  ``[args, expected]`` pairs from the project's reference implementation.

Tasks are drawn from their own seed, distinct, and one whose question (or prompt) occurs in the given training
corpus is dropped, so no held-out task was seen in pretraining.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError
from ..data.corpus import PROBLEMS
from .functions import FAMILIES

FIELDS = ("id", "split", "kind", "checker", "prompt")  # every task's; then its checker's own
CHECKER_FIELDS = {"arithmetic": ("compute", "answer"), "python": ("entry", "cases")}


def _draw(checker: str, r: random.Random) -> dict:
    if checker == "arithmetic":
        p = r.choice(PROBLEMS)(r)
        return {"kind": p.kind, "prompt": f"Problem: {p.question}\nSolution:", "compute": p.compute,
                "answer": p.answer}
    f = r.choice(FAMILIES)(r)
    return {"kind": f.kind, "prompt": f.prompt, "entry": f.entry, "cases": f.cases()}


def make_tasks(count: int, heldout: int, seed: int = 1234, exclude_text: str = "",
               checker: str = "arithmetic") -> list[dict]:
    """``count`` distinct tasks for ``checker``, the last ``heldout`` of them held out; none whose question (the
    prompt without the arithmetic's ``Solution:``) is in ``exclude_text``."""
    if not 0 < heldout < count:
        raise ConfigError(f"tasks: expected 0 < heldout < count, got heldout {heldout}, count {count}")
    if checker not in CHECKER_FIELDS:
        raise ConfigError(f"field 'checker': expected one of {', '.join(CHECKER_FIELDS)}, got {checker!r}")
    r, tasks, seen = random.Random(seed), [], set()
    for _ in range(100 * count):
        if len(tasks) == count:
            break
        t = _draw(checker, r)
        if t["prompt"] in seen or t["prompt"].removesuffix("\nSolution:") in exclude_text:
            continue
        seen.add(t["prompt"])
        tasks.append({"id": f"{t['kind']}-{len(tasks):05d}", "checker": checker, **t})
    if len(tasks) < count:
        raise ConfigError(f"tasks: only {len(tasks)} distinct tasks outside the corpus; ask for fewer")
    for i, t in enumerate(tasks):
        t["split"] = "heldout" if i >= count - heldout else "train"
    return [{k: t[k] for k in FIELDS + CHECKER_FIELDS[checker]} for t in tasks]


def write_tasks(path: str | Path, tasks: list[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(t) + "\n" for t in tasks), encoding="utf-8")
    tmp.replace(path)
    return path


def read_tasks(path: str | Path, split: str | None = None) -> list[dict]:
    """The tasks of ``path`` (of one split if given); a malformed line is an error naming the file and line."""
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        try:
            task = json.loads(line)
            missing = [k for k in FIELDS if k not in task]
        except (json.JSONDecodeError, TypeError) as exc:
            raise ConfigError(f"{path}:{n}: not a JSON object ({exc})") from None
        if missing:
            raise ConfigError(f"{path}:{n}: task lacks field(s) {', '.join(missing)}; expected {', '.join(FIELDS)}")
        if task["checker"] not in CHECKER_FIELDS:
            raise ConfigError(f"{path}:{n}: field 'checker': expected one of {', '.join(CHECKER_FIELDS)}, got "
                              f"{task['checker']!r}")
        own = CHECKER_FIELDS[task["checker"]]
        missing = [k for k in own if k not in task]
        if missing:
            raise ConfigError(f"{path}:{n}: a {task['checker']} task lacks field(s) {', '.join(missing)}; expected "
                              f"{', '.join(own)}")
        if split is None or task["split"] == split:
            out.append(task)
    return out


@dataclass
class TasksConfig:
    out: str = "tasks.jsonl"
    count: int = 400
    heldout: int = 100
    seed: int = 1234
    exclude: str | None = None  # a training corpus (JSONL with a ``text`` field, or text): its questions left out
    checker: str = "arithmetic"  # arithmetic (worked problems) or python (small functions with tests)


def write_task_set(cfg: TasksConfig) -> dict:
    """``clsd-ds shadow-tasks``: the task set at ``cfg.out``; a summary of its splits and kinds."""
    text = ""
    if cfg.exclude:
        path = Path(cfg.exclude)
        if not path.is_file():
            raise ConfigError(f"field 'exclude': no file {path}")
        text = path.read_text(encoding="utf-8", errors="replace")
        if path.suffix == ".jsonl":
            text = "\n".join(json.loads(line).get("text", "") for line in text.splitlines() if line.strip())
    tasks = make_tasks(cfg.count, cfg.heldout, cfg.seed, text, cfg.checker)
    write_tasks(cfg.out, tasks)
    kinds: dict[str, int] = {}
    for t in tasks:
        kinds[t["kind"]] = kinds.get(t["kind"], 0) + 1
    return {"out": cfg.out, "train": cfg.count - cfg.heldout, "heldout": cfg.heldout, "kinds": kinds}
