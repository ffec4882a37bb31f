"""The shadow loop measured: does RL from objectively verified rollouts make the CLSD decoder solve more tasks?

    python bench/shadow_loop.py [--run runs/shadow_bench] [--tiny] [--out bench/results/<device>-<date>-shadow]

1. The base: the quickstart's pipeline (``clsd_ds/quickstart.py``: arithmetic corpus, BPE, mini verifier, the
   recipe CLSD drafter on the verifier's distilled continuations), with the verifier trained ``verifier_steps``.
2. A task set (``clsd-ds shadow-tasks``' generator; none of its questions in the corpus), ``heldout`` held out.
3. Held-out solve rates, each checked in the sandbox: the verifier's greedy decoding; best-of-N sampling from the
   verifier at T = 1 (the sample the verifier scores highest, and pass@N, whether any of the N passes); the CLSD
   decoder of the primary (N rollouts under the policy and the guillotine rule, the one the verifier scores highest)
   with the starting drafter and with each version the loop publishes — the same N, rule and seeds every time.
4. The loop: Redis, ``clsd-ds shadow-primary`` and ``clsd-ds train stage=shadow`` as processes for ``updates``
   updates (``launch/shadow_local.sh``'s pieces); from their logs: primary trajectories/s, trainer updates/s, and
   the version lag (the newest published version minus the one a trajectory was drafted with, when it was sent).
JSON + Markdown + PNG (solve rate against updates); a rerun reuses the base, the tasks and the measured versions.
``--threshold`` / ``--temperature`` change the decoding rule of every CLSD number and of the loop; a run directory
keeps the rule it was measured with (``rule.json``) and refuses another. ``--lr`` sets the trainer's learning rate;
``--train-tasks K`` trains on only K training tasks, ones the starting drafter solves sometimes (``focus_tasks``):
a test of whether the loop can raise the reward where its gradient is nonzero, read from the per-round rewards.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path

import torch

from clsd_ds.graft import load_drafter
from clsd_ds.infer.decoder import DecodeConfig
from clsd_ds.quickstart import QuickstartConfig, quickstart
from clsd_ds.shadow.policy import PolicyConfig
from clsd_ds.shadow.primary import Primary, PrimaryConfig
from clsd_ds.shadow.redis_server import RedisServer
from clsd_ds.shadow.sandbox import Sandbox, SandboxConfig
from clsd_ds.shadow.tasks import make_tasks, read_tasks, write_tasks
from clsd_ds.shadow.trainer import ShadowConfig
from clsd_ds.tiny import TINY
from clsd_ds.verifier import VerifierConfig, document_start_id

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Plan:
    base: QuickstartConfig
    tasks: int = 240
    heldout: int = 60
    n: int = 4  # rollouts per task (the group) and the N of every best-of-N
    tokens: int = 48  # new tokens per completion
    updates: int = 60  # trainer updates
    batch: int = 4  # trajectories per update
    save_every: int = 20  # a version every this many updates
    measure_every: int = 20  # the versions measured on the held-out tasks: every this many updates
    lr: float = 1e-4
    threshold: float = 0.1  # guillotine
    temperature: float = 1.0
    credit: str = "block"  # policy.credit: the draws a block's log-probability scores
    train_tasks: int = 0  # > 0: the loop trains on only this many training tasks, ones the starting drafter's
    #                       group solves sometimes (mixed verdicts; see focus_tasks); 0: on all of them


FULL = Plan(QuickstartConfig(run_dir="", documents=4000, verifier_steps=4000, decode_prompts=2, progress=False),
            tasks=200, heldout=40, tokens=64, updates=40)
LOOP = ("threshold", "temperature", "updates", "save_every", "credit", "lr", "train_tasks")  # what its cells depend on
EARLIER = {"credit": "block", "lr": 1e-4, "train_tasks": 0}  # what a run directory's rule.json without them meant
TINY_PLAN = Plan(QuickstartConfig(run_dir="", documents=120, verifier=dict(TINY), verifier_steps=4,
                                  distill_shards=1, clsd_steps=4, decode_prompts=1, decode_tokens=4, num_workers=0,
                                  progress=False), tasks=10, heldout=3, n=2, tokens=6, updates=2, batch=1, save_every=1,
                  measure_every=1)


def decode_cfg(plan: Plan) -> DecodeConfig:
    return DecodeConfig(num_candidates=1, acceptance="guillotine", threshold=plan.threshold,
                        max_new_tokens=plan.tokens, block_len=plan.base.block_len)


def score(lm, prompt: list[int], completion: list[int]) -> float:
    """The verifier's mean log-probability of a completion: how the best of N is chosen without the checker."""
    if not completion:
        return float("-inf")
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        logp = torch.log_softmax(lm(ids).logits[0, len(prompt) - 1:-1].float(), -1)
    return float(logp.gather(-1, torch.tensor(completion)[:, None]).mean())


def verifier_baselines(primary: Primary, tasks: list[dict], plan: Plan) -> dict:
    """Greedy, best-of-N by the verifier's score and pass@N, sampling from the verifier at T = 1."""
    lm, tok = primary.verifier.lm, primary.tokenizer
    greedy, best, any_pass = [], 0, 0
    for i, task in enumerate(tasks):
        ids = [document_start_id(tok)] + tok(task["prompt"], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            g = lm.generate(torch.tensor([ids]), max_new_tokens=plan.tokens, do_sample=False)[0, len(ids):].tolist()
            torch.manual_seed(i)
            s = lm.generate(torch.tensor([ids] * plan.n), max_new_tokens=plan.tokens, do_sample=True,
                            temperature=1.0, top_k=0)[:, len(ids):].tolist()
        if primary.check(task, tok.decode(g, skip_special_tokens=True)).status == "pass":
            greedy.append(i)
        verdicts = [primary.check(task, tok.decode(x, skip_special_tokens=True)).status == "pass" for x in s]
        best += verdicts[max(range(plan.n), key=lambda j: score(lm, ids, s[j]))]
        any_pass += any(verdicts)
    n = len(tasks)
    return {"greedy": len(greedy) / n, "best_of_n": best / n, "pass_at_n": any_pass / n, "greedy_solved": greedy}


def clsd_solve_rate(primary: Primary, drafter: str, tasks: list[dict], plan: Plan) -> dict:
    """The primary's decoding with ``drafter``: N rollouts per task, the verifier's favourite checked (and pass@N)."""
    primary.decoder = primary._decoder(load_drafter(drafter, primary.verifier))
    solved, any_pass, reward = [], 0, 0.0
    for i, task in enumerate(tasks):
        group = primary.task_group(task, seed=10_000 + i)
        scores = [score(primary.verifier.lm, group["prompt"], r["completion"]) for r in group["rollouts"]]
        chosen = max(range(len(scores)), key=scores.__getitem__)
        if group["rollouts"][chosen]["reward"] == 1:
            solved.append(i)
        any_pass += any(r["reward"] == 1 for r in group["rollouts"])
        reward += sum(r["reward"] for r in group["rollouts"]) / len(group["rollouts"])
    n = len(tasks)
    return {"best_of_n": len(solved) / n, "pass_at_n": any_pass / n, "mean_reward": reward / n, "solved": solved}


def focus_tasks(primary: Primary, tasks: Path, out: Path, plan: Plan) -> dict:
    """The task set ``out``: the held-out tasks of ``tasks`` and the first ``plan.train_tasks`` training tasks on
    which the primary's group of N rollouts (its drafter and rule, probe seeds apart from the loop's) has mixed
    verdicts: the tasks where a group-relative advantage is nonzero, so a loop that can learn at all should raise
    their reward. Written once; a rerun reuses it."""
    if not out.is_file():
        chosen, probed = [], 0
        for i, task in enumerate(read_tasks(tasks, "train")):
            if len(chosen) == plan.train_tasks:
                break
            rewards = [r["reward"] for r in primary.task_group(task, seed=20_000 + i)["rollouts"]]
            probed += 1
            if 0 < sum(rewards) < len(rewards):
                chosen.append(task)
        if len(chosen) < plan.train_tasks:
            raise SystemExit(f"--train-tasks {plan.train_tasks}: only {len(chosen)} of the {probed} training tasks "
                             f"of {tasks} have mixed verdicts under the starting drafter; ask for fewer")
        write_tasks(out, chosen + read_tasks(tasks, "heldout"))
        (out.with_suffix(".probe.json")).write_text(json.dumps({"probed": probed, "chosen": len(chosen)}))
    return json.loads(out.with_suffix(".probe.json").read_text())


def run_loop(root: Path, base: Path, tasks: Path, plan: Plan) -> dict:
    """Redis + the primary + the trainer as processes, until the trainer has done ``plan.updates`` updates."""
    loop = root / "loop"
    if (loop / "exit.json").is_file():
        return json.loads((root / "loop_summary.json").read_text())
    server = RedisServer(root / "redis").start()
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                              "MASTER_PORT")}  # this process's own (quickstart)
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", WANDB_MODE="offline")
    verifier, drafter = base / "verifier" / "export", base / "clsd"
    primary = subprocess.Popen([sys.executable, "-m", "clsd_ds", "shadow-primary", f"verifier.path={verifier}",
                                f"drafter={drafter}", f"tokenizer={base / 'tokenizer'}", f"tasks={tasks}",
                                f"rollouts={plan.n}", "decode.num_candidates=1", "decode.acceptance=guillotine",
                                f"decode.threshold={plan.threshold}", f"decode.max_new_tokens={plan.tokens}",
                                f"policy.temperature={plan.temperature}", f"policy.credit={plan.credit}",
                                f"shadow.redis={server.url}",
                                f"out={root / 'primary'}"], cwd=REPO, env=env,
                               stdout=open(root / "primary.log", "ab"), stderr=subprocess.STDOUT)
    t0 = time.time()
    done = subprocess.run([sys.executable, "-m", "clsd_ds", "train", "stage=shadow", f"init_from={drafter}",
                           f"verifier.path={verifier}", f"shadow.redis={server.url}", f"run_dir={loop}",
                           f"train.steps={plan.updates}", f"train.batch_size={plan.batch}",
                           f"train.save_every={plan.save_every}", "train.log_every=1",
                           "train.ds_config=ds_configs/cpu_zero1.json", "log.progress=false", f"optim.lr={plan.lr}",
                           f"optim.warmup_steps={max(1, plan.updates // 10)}",
                           f"policy.temperature={plan.temperature}"],
                          cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.time() - t0
    primary.send_signal(signal.SIGTERM)
    primary.wait(timeout=300)
    from clsd_ds.shadow.transport import Transport

    transport = Transport(server.url)
    published = {int(f[b"version"]): float(f[b"time"]) for _, f in transport.client.xrange(transport.versions)}
    stats = transport.stats()
    server.stop()
    if done.returncode != 0:
        raise SystemExit(f"the shadow trainer failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    sent = [json.loads(line) for line in (root / "primary" / "metrics.jsonl").read_text().splitlines()]
    lag = [max([v for v, t in published.items() if t <= m["time"]], default=0) - m["version"] for m in sent]
    train = [json.loads(line) for line in (loop / "metrics.jsonl").read_text().splitlines()]
    train = [e for e in train if e["kind"] == "train"]
    summary = {"seconds": round(seconds, 1), "trajectories": len(sent),
               "primary_trajectories_per_s": len(sent) / (sent[-1]["time"] - sent[0]["time"]) if len(sent) > 1 else 0,
               "trainer_updates_per_s": plan.updates / seconds, "version_lag_mean": sum(lag) / len(lag),
               "version_lag_max": max(lag), "versions": sorted(published), "stream": stats,
               "train": [{k: e.get(k) for k in ("step", "reward", "ratio", "clipped", "kl", "loss")} for e in train]}
    (root / "loop_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def group_verdicts(primary_out: Path, round_tasks: int) -> tuple[dict, list[dict]]:
    """How many of the loop's groups (one task's N rollouts) were all pass, all fail, or mixed: only a mixed group
    has a nonzero group-relative advantage, so only mixed groups carry a policy gradient. And per round (the primary
    goes through all ``round_tasks`` training tasks once per round, in a new order): the mean reward of the
    rollouts the loop drafted, and the drafter versions that drafted them — the training tasks' learning curve,
    free of the task order."""
    sent = [json.loads(line) for line in (primary_out / "metrics.jsonl").read_text().splitlines()]
    passed = [sum(m["rewards"]) for m in sent]
    n = [len(m["rewards"]) for m in sent]
    groups = {"mixed": sum(0 < p < k for p, k in zip(passed, n)),
              "all_pass": sum(p == k for p, k in zip(passed, n)), "all_fail": passed.count(0)}
    rounds = []
    for start in range(0, len(sent) - round_tasks + 1, round_tasks):  # complete rounds only
        part = sent[start:start + round_tasks]
        rounds.append({"round": start // round_tasks, "tasks": len(part),
                       "mean_reward": sum(sum(m["rewards"]) for m in part) / sum(len(m["rewards"]) for m in part),
                       "versions": [min(m["version"] for m in part), max(m["version"] for m in part)]})
    return groups, rounds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/shadow_bench")
    ap.add_argument("--tiny", action="store_true", help="CI sizes: a smoke run of every part")
    ap.add_argument("--out", default=None)
    ap.add_argument("--threshold", type=float, default=None, help="the guillotine's threshold instead of the plan's")
    ap.add_argument("--temperature", type=float, default=None, help="the policy's temperature instead of the plan's")
    ap.add_argument("--credit", choices=("decided", "block"), default=None, help="policy.credit instead of the plan's")
    ap.add_argument("--updates", type=int, default=None, help="the trainer's updates instead of the plan's")
    ap.add_argument("--save-every", type=int, default=None, help="a drafter version every this many updates")
    ap.add_argument("--lr", type=float, default=None, help="the trainer's learning rate instead of the plan's")
    ap.add_argument("--train-tasks", type=int, default=None,
                    help="train on only this many training tasks, ones with mixed verdicts under the starting "
                         "drafter (does the loop raise their reward?); default: all")
    ap.add_argument("--measure-every", type=int, default=None,
                    help="measure the versions every this many updates on the held-out tasks (a multiple of "
                         "--save-every; default: every version)")
    args = ap.parse_args()
    plan = TINY_PLAN if args.tiny else FULL
    given = {"threshold": args.threshold, "temperature": args.temperature, "credit": args.credit,
             "updates": args.updates, "save_every": args.save_every, "lr": args.lr, "train_tasks": args.train_tasks,
             "measure_every": args.measure_every or args.save_every}
    plan = replace(plan, **{k: v for k, v in given.items() if v is not None})
    if plan.updates < 1 or plan.save_every < 1 or plan.measure_every % plan.save_every or plan.train_tasks < 0:
        raise SystemExit(f"--updates {plan.updates} / --save-every {plan.save_every}: expected positive integers, "
                         f"--measure-every {plan.measure_every} a multiple of --save-every, and --train-tasks "
                         f"{plan.train_tasks} ≥ 0")
    root, t0 = Path(args.run).resolve(), time.time()
    rule, rule_file = {k: getattr(plan, k) for k in LOOP}, root / "rule.json"
    measured_with = {**EARLIER, **json.loads(rule_file.read_text())} if rule_file.is_file() else rule
    if measured_with != rule:  # its cells are for that rule (a run before policy.credit scored every block's draws)
        raise SystemExit(f"{root} was measured with {rule_file.read_text().strip()}, not {json.dumps(rule)}: give "
                         f"another --run (copy its base/ and tasks.jsonl there to reuse them)")
    root.mkdir(parents=True, exist_ok=True)
    rule_file.write_text(json.dumps(rule))
    base = root / "base"
    quickstart(replace(plan.base, run_dir=str(base)))
    tasks = root / "tasks.jsonl"
    if not tasks.is_file():
        write_tasks(tasks, make_tasks(plan.tasks, plan.heldout, exclude_text=(base / "corpus.jsonl").read_text()))
    heldout = read_tasks(tasks, "heldout")
    primary = Primary(PrimaryConfig(
        verifier=VerifierConfig(path=str(base / "verifier" / "export")), drafter=str(base / "clsd"),
        tokenizer=str(base / "tokenizer"), tasks=str(tasks), split="heldout", rollouts=plan.n,
        decode=decode_cfg(plan), policy=PolicyConfig(temperature=plan.temperature), shadow=ShadowConfig(),
        sandbox=SandboxConfig(), out=str(root / "eval_primary")), log=lambda *_: None)
    cache = root / "measured.json"
    measured = json.loads(cache.read_text()) if cache.is_file() else {}
    if "verifier" not in measured:
        measured["verifier"] = verifier_baselines(primary, heldout, plan)
        cache.write_text(json.dumps(measured, indent=1))
    if measured["verifier"]["pass_at_n"] == 0 and not args.tiny:
        raise SystemExit(f"the verifier solves none of the {len(heldout)} held-out tasks, greedy or in {plan.n} "
                         f"samples ({cache}): no rollout can earn a reward, the loop would measure nothing; train it "
                         f"longer")
    if "clsd_v0" not in measured:
        measured["clsd_v0"] = clsd_solve_rate(primary, str(base / "clsd"), heldout, plan)
    cache.write_text(json.dumps(measured, indent=1))
    if plan.train_tasks:
        primary.decoder = primary._decoder(load_drafter(str(base / "clsd"), primary.verifier))  # the starting one
        focus = focus_tasks(primary, tasks, root / "tasks_focus.jsonl", plan)
        tasks = root / "tasks_focus.jsonl"
    loop = run_loop(root, base, tasks, plan)
    if plan.train_tasks:
        loop["focus"] = focus
    loop["groups"], loop["rounds"] = group_verdicts(root / "primary", len(read_tasks(tasks, "train")))
    for v in loop["versions"]:
        if v % plan.measure_every == 0 and f"clsd_v{v}" not in measured:
            measured[f"clsd_v{v}"] = clsd_solve_rate(primary, str(root / "loop" / "versions" / f"v{v}"), heldout, plan)
            cache.write_text(json.dumps(measured, indent=1))
    report = {"plan": {k: v for k, v in vars(plan).items() if k != "base"}, "base": vars(plan.base),
              "heldout_tasks": len(heldout), "measured": measured, "loop": loop, "seconds": round(time.time() - t0, 1),
              "sandbox": Sandbox(SandboxConfig()).isolation()}
    out = Path(args.out or REPO / "bench" / "results" / f"cpu-{date.today()}-shadow{'_tiny' if args.tiny else ''}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str))
    out.with_suffix(".md").write_text(table(report))
    plot(report, out.with_suffix(".png"))
    print(table(report))


def table(report: dict) -> str:
    m, loop = report["measured"], report["loop"]
    n = report["plan"]["n"]
    lines = [f"held-out tasks: {report['heldout_tasks']}; N = {n}", "",
             "| decoder | solve rate (the verifier's pick of N) | pass@N | mean reward | solved, not by greedy |",
             "|---|---|---|---|---|",
             f"| verifier, greedy | {m['verifier']['greedy']:.3f} | — | — | — |",
             f"| verifier, sampling T 1 | {m['verifier']['best_of_n']:.3f} | {m['verifier']['pass_at_n']:.3f} | — "
             "| — |"]
    greedy = set(m["verifier"]["greedy_solved"])
    for key in sorted((k for k in m if k.startswith("clsd_v")), key=lambda k: int(k[6:])):
        r = m[key]
        lines.append(f"| CLSD, drafter version {key[6:]} | {r['best_of_n']:.3f} | {r['pass_at_n']:.3f} | "
                     f"{r['mean_reward']:.3f} | {len(set(r['solved']) - greedy)} |")
    lines.append(f"\nloop: {loop['trajectories']} trajectories (groups: {loop['groups']}), "
                 f"{loop['primary_trajectories_per_s']:.3f}/s from the "
                 f"primary; {loop['trainer_updates_per_s']:.3f} updates/s; version lag mean "
                 f"{loop['version_lag_mean']:.2f}, max {loop['version_lag_max']}; stream {loop['stream']}")
    if loop.get("rounds"):
        lines += ["", "| round (every training task once) | drafted by versions | mean reward |", "|---|---|---|"]
        lines += [f"| {r['round']} | {r['versions'][0]}–{r['versions'][1]} | {r['mean_reward']:.3f} |"
                  for r in loop["rounds"]]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = report["measured"]
    versions = sorted(int(k[6:]) for k in m if k.startswith("clsd_v"))
    rounds = report["loop"].get("rounds") or []
    fig, axes = plt.subplots(1, 2 if rounds else 1, figsize=(12 if rounds else 7, 4.5), squeeze=False)
    ax = axes[0, 0]
    ax.plot(versions, [m[f"clsd_v{v}"]["best_of_n"] for v in versions], marker="o", label="CLSD (verifier's pick)")
    ax.plot(versions, [m[f"clsd_v{v}"]["mean_reward"] for v in versions], marker="^", label="CLSD mean reward")
    ax.plot(versions, [m[f"clsd_v{v}"]["pass_at_n"] for v in versions], marker="s", label="CLSD pass@N")
    ax.axhline(m["verifier"]["greedy"], color="gray", linestyle="--", label="verifier greedy")
    ax.axhline(m["verifier"]["best_of_n"], color="black", linestyle=":", label="verifier best-of-N")
    ax.set_xlabel("trainer updates")
    ax.set_ylabel("held-out solve rate")
    ax.legend(fontsize=8)
    if rounds:
        ax = axes[0, 1]
        ax.plot([r["round"] for r in rounds], [r["mean_reward"] for r in rounds], marker="o")
        ax.set_xlabel("round (the primary through every training task once)")
        ax.set_ylabel("mean reward of the loop's rollouts (training tasks)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
