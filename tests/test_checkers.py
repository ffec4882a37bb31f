"""The shadow loop's task set and its arithmetic checker (real sandboxed runs)."""

import json
import os
import random

import pytest

from clsd_ds.config import ConfigError
from clsd_ds.data.corpus import PROBLEMS, make_document
from clsd_ds.shadow.checkers import ArithmeticChecker
from clsd_ds.shadow.sandbox import Sandbox, SandboxConfig
from clsd_ds.shadow.tasks import make_tasks, read_tasks, write_tasks


@pytest.fixture(scope="module")
def checker():
    return ArithmeticChecker(Sandbox(SandboxConfig(cpu_s=2, wall_s=6.0)))


def solution(problem) -> str:
    return problem.text.split("Solution:", 1)[1]


def test_the_corpus_own_solutions_pass_and_every_kind_is_checked(checker):
    r, kinds = random.Random(3), set()
    for _ in range(12):
        p = r.choice(PROBLEMS)(r)
        task = {"compute": p.compute}
        assert checker.check(task, solution(p)).status == "pass", p.text
        kinds.add(p.kind)
    assert kinds == {"expression", "word", "sum", "sequence", "division"}


def test_wrong_answers_wrong_steps_and_missing_answers_fail_with_the_reason(checker):
    p = PROBLEMS[0](random.Random(0))  # Compute (a + b) * c - d.
    right = solution(p)
    wrong_answer = right.replace(f"Answer: {p.answer}", f"Answer: {int(p.answer) + 1}")
    v = checker.check({"compute": p.compute}, wrong_answer)
    assert v.status == "fail" and "expected" in v.reason and v.reward == 0
    first = right.split("=", 1)[1].split(".")[0].strip()  # the first step's stated result
    wrong_step = right.replace(f"= {first}.", f"= {int(first) + 1}.", 1)
    v = checker.check({"compute": p.compute}, wrong_step)
    assert v.status == "fail" and "wrong step" in v.reason
    assert checker.check({"compute": p.compute}, right.split("Answer:")[0]).reason == "no 'Answer:' line"
    assert checker.check({"compute": p.compute}, right).reward == 1.0


def test_a_completion_is_data_never_code_and_a_hostile_task_is_contained(checker):
    p = PROBLEMS[0](random.Random(0))
    evil = "__import__('os').system('touch /tmp/clsd-pwned') = 1. Answer: " + p.answer
    assert checker.check({"compute": p.compute}, evil).status == "pass"  # no stated equation: the answer alone
    assert not os.path.exists("/tmp/clsd-pwned")
    v = checker.check({"compute": "sum(1 for _ in iter(int, 1))"}, " 1 + 1 = 2. Answer: 2")  # an endless task
    assert v.status == "timeout"
    v = checker.check({"compute": "open('/etc/passwd').read()"}, " Answer: x")
    assert v.status == "error" and "not allowed" in v.reason


def test_task_set_split_distinct_outside_the_corpus_and_round_trips(tmp_path):
    corpus = "\n\n".join(make_document(random.Random(i)) for i in range(50))
    tasks = make_tasks(60, heldout=20, exclude_text=corpus)
    assert [t["split"] for t in tasks].count("heldout") == 20 and len({t["prompt"] for t in tasks}) == 60
    assert all(t["prompt"].removesuffix("\nSolution:") not in corpus for t in tasks)
    assert all(t["prompt"].startswith("Problem: ") and str(eval(t["compute"])) == t["answer"] for t in tasks)
    path = write_tasks(tmp_path / "tasks.jsonl", tasks)
    assert read_tasks(path, "heldout") == tasks[40:] and read_tasks(path) == tasks
    path.write_text(path.read_text() + json.dumps({"id": "x"}) + "\n")
    with pytest.raises(ConfigError, match=r"tasks.jsonl:61: task lacks field\(s\) split"):
        read_tasks(path)
    with pytest.raises(ConfigError, match="heldout"):
        make_tasks(5, heldout=5)
