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


def _right_body(task: dict) -> str:
    """A correct body for each family, written from the task's name and docstring (not from functions.py's code)."""
    name, kind = task["entry"], task["kind"]
    k = name.rsplit("_", 1)[1]
    if kind == "clamp":
        lo, hi = name.split("_")[1:]
        lo = "-" + lo[:-1] if lo.endswith("n") else lo
        return f"    if x < {lo}:\n        return {lo}\n    return {hi} if x > {hi} else x\n"
    return {"add": f"    return x + {k}\n", "scale": f"    return [x * {k} for x in xs]\n",
            "count": f"    return sum(1 for ch in s if ch == '{k}')\n", "divisible": f"    return n % {k} == 0\n",
            "multiples": f"    return sum(i for i in range(1, n) if i % {k} == 0)\n",
            "filter": f"    return len([x for x in xs if x > {k}])\n"}[kind]


def test_python_tasks_right_bodies_pass_for_every_family_and_the_set_round_trips(tmp_path):
    from clsd_ds.shadow.checkers import PythonChecker
    from clsd_ds.shadow.functions import FAMILIES

    tasks = make_tasks(40, heldout=10, checker="python")
    assert tasks == make_tasks(40, heldout=10, checker="python") and len({t["prompt"] for t in tasks}) == 40
    assert {t["kind"] for t in tasks} == {f(random.Random(0)).kind for f in FAMILIES}
    assert all(t["prompt"].startswith(f"def {t['entry']}(") and t["checker"] == "python" for t in tasks)
    checker = PythonChecker(Sandbox(SandboxConfig(cpu_s=2, wall_s=6.0)))
    for t in tasks:
        v = checker.check(t, _right_body(t) + "\n\nprint('after the function')\nraise SystemExit(3)\n")
        assert v.status == "pass", (t["prompt"], v)  # the body ends at the first line that is not indented
    path = write_tasks(tmp_path / "tasks.jsonl", tasks)
    assert read_tasks(path, "heldout") == tasks[30:]
    path.write_text(path.read_text() + json.dumps({k: v for k, v in tasks[0].items() if k != "cases"}) + "\n")
    with pytest.raises(ConfigError, match=r"tasks.jsonl:41: a python task lacks field\(s\) cases"):
        read_tasks(path)
    path.write_text(json.dumps({**tasks[0], "checker": "lean"}) + "\n")
    with pytest.raises(ConfigError, match=r"tasks.jsonl:1: field 'checker': expected one of arithmetic, python"):
        read_tasks(path)
    with pytest.raises(ConfigError, match="field 'checker'"):
        make_tasks(10, heldout=2, checker="lean")


def test_python_checker_fails_wrong_code_with_the_case_and_contains_hostile_code():
    from clsd_ds.shadow.checkers import PythonChecker

    checker = PythonChecker(Sandbox(SandboxConfig(cpu_s=2, wall_s=6.0)))
    task = next(t for t in make_tasks(40, heldout=10, checker="python") if t["kind"] == "divisible")
    k = int(task["entry"].rsplit("_", 1)[1])
    v = checker.check(task, f"    return n % {k + 1} == 0\n")
    assert v.status == "fail" and "expected" in v.reason and task["entry"] in v.reason
    v = checker.check(task, f"    return 1 if n % {k} == 0 else 0\n")  # 1 == True, but not a bool
    assert v.status == "fail" and "returned" in v.reason
    v = checker.check(task, "    return n // 0\n")
    assert v.status == "fail" and "raised ZeroDivisionError" in v.reason
    assert checker.check(task, "return 1\n").reason == "empty function body"
    assert checker.check(task, "    while True:\n        pass\n").status == "timeout"
    v = checker.check(task, "    return open('/etc/passwd').read()\n")
    assert v.status == "fail" and "raised" in v.reason
    forged = [["returned", False]] * len(task["cases"])  # it cannot know the expected outputs: they stay on the host
    v = checker.check(task, f"    import os\n    print('{json.dumps(forged)}')\n    os._exit(0)\n")
    assert v.status in ("fail", "error") and v.reward == 0
    v = checker.check(task, "    while True:\n        print('x' * 1000)\n")  # output without end
    assert v.status == "error" and "output" in v.reason and v.reward == 0


def test_the_primary_checks_each_task_with_the_checker_it_names(shadow_files, verifier_dir, tmp_path):
    """A task set mixing both checkers (`clsd-ds shadow-tasks checker=python` and the arithmetic default): the
    primary's rollouts get each task's own checker's verdicts."""
    from clsd_ds.infer.decoder import DecodeConfig
    from clsd_ds.shadow.primary import Primary, PrimaryConfig
    from clsd_ds.shadow.tasks import TasksConfig, write_task_set
    from clsd_ds.verifier import VerifierConfig

    summary = write_task_set(TasksConfig(out=str(tmp_path / "py.jsonl"), count=6, heldout=2, checker="python"))
    assert summary["train"] == 4 and sum(summary["kinds"].values()) == 6
    tasks = read_tasks(tmp_path / "py.jsonl", "train")[:1] + make_tasks(4, heldout=1)[:1]
    write_tasks(tmp_path / "mixed.jsonl", tasks)
    primary = Primary(PrimaryConfig(verifier=VerifierConfig(path=str(verifier_dir)), drafter=str(shadow_files /
                      "drafter"), tasks=str(tmp_path / "mixed.jsonl"), rollouts=2, out=str(tmp_path / "primary"),
                      decode=DecodeConfig(num_candidates=1, acceptance="guillotine", max_new_tokens=6, block_len=4),
                      sandbox=SandboxConfig(cpu_s=2, wall_s=6.0)), log=lambda *_: None)
    assert sorted(primary.checkers) == ["arithmetic", "python"]
    for task in tasks:
        group = primary.task_group(task, seed=0)
        for r in group["rollouts"]:
            assert r["verdict"] == primary.check(task, r["text"]).status and r["reward"] in (0.0, 1.0)
    python, arithmetic = (primary.check(t, "    return 0\n").reason for t in tasks)
    assert tasks[0]["entry"] in python and arithmetic == "no 'Answer:' line"
