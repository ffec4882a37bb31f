"""The shadow loop's task set: worked arithmetic problems (``data/corpus.py``'s kinds) with a held-out split.

A task is one JSON line: ``id``, ``split`` (``train`` or ``heldout``), ``kind``, ``checker`` (``arithmetic``),
``prompt`` (``Problem: <question>\\nSolution:``, the start of a worked problem as the corpus writes it),
``compute`` (a Python expression whose ``str()`` is the answer) and ``answer`` (for reading; the checker
recomputes it in the sandbox). Tasks are drawn from their own seed, and a question that occurs in the given
training corpus is dropped, so no held-out task was seen in pretraining.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError
from ..data.corpus import PROBLEMS

FIELDS = ("id", "split", "kind", "checker", "prompt", "compute", "answer")


def make_tasks(count: int, heldout: int, seed: int = 1234, exclude_text: str = "") -> list[dict]:
    """``count`` distinct tasks, the last ``heldout`` of them held out; none whose question is in ``exclude_text``."""
    if not 0 < heldout < count:
        raise ConfigError(f"tasks: expected 0 < heldout < count, got heldout {heldout}, count {count}")
    r, tasks, seen = random.Random(seed), [], set()
    for _ in range(100 * count):
        if len(tasks) == count:
            break
        p = r.choice(PROBLEMS)(r)
        if p.question in seen or f"Problem: {p.question}" in exclude_text:
            continue
        seen.add(p.question)
        tasks.append({"id": f"{p.kind}-{len(tasks):05d}", "kind": p.kind, "checker": "arithmetic",
                      "prompt": f"Problem: {p.question}\nSolution:", "compute": p.compute, "answer": p.answer})
    if len(tasks) < count:
        raise ConfigError(f"tasks: only {len(tasks)} distinct tasks outside the corpus; ask for fewer")
    for i, t in enumerate(tasks):
        t["split"] = "heldout" if i >= count - heldout else "train"
    return [{k: t[k] for k in FIELDS} for t in tasks]


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
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{n}: not a JSON object ({exc})") from None
        if missing:
            raise ConfigError(f"{path}:{n}: task lacks field(s) {', '.join(missing)}; expected {', '.join(FIELDS)}")
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
    tasks = make_tasks(cfg.count, cfg.heldout, cfg.seed, text)
    write_tasks(cfg.out, tasks)
    kinds: dict[str, int] = {}
    for t in tasks:
        kinds[t["kind"]] = kinds.get(t["kind"], 0) + 1
    return {"out": cfg.out, "train": cfg.count - cfg.heldout, "heldout": cfg.heldout, "kinds": kinds}
