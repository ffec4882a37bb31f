"""The benchmark suite's CPU smoke run: it runs the same code as on the GPU and writes every field (not any speed)."""

import json
import os
import subprocess
import sys
from collections import Counter
from dataclasses import replace

import pytest

from conftest import REPO


def test_suite_tiny_writes_json_table_and_heat_map(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(REPO / "bench" / "suite.py"), "--tiny", "--warmup", "0", "--reps", "1",
                    "--out", str(tmp_path)], check=True, env=env, cwd=REPO, capture_output=True, text=True)
    [result_file] = tmp_path.glob("cpu-*-suite_tiny.json")
    result = json.loads(result_file.read_text())
    assert result["prefill"]["tok_s"] > 0 and result["ar"]["static"]["cuda_graph"] is False
    assert all(result["ar"][k]["ms_per_token"] > 0 for k in ("static", "generate"))
    grid = {(r["N"], r["K"], r["euler_steps"]) for r in result["cycles"]}
    assert grid == {(n, k, s) for n in (1, 4) for k in (8, 32) for s in (1, 2)}
    for row in result["cycles"]:
        assert row["cycle_ms"] == row["draft_ms"] + row["verify_ms"] + row["advance_ms"]
        ar_ms = min(v["ms_per_token"] for v in result["ar"].values())
        assert abs(row["break_even_tau"] - row["cycle_ms"] / ar_ms) < 1e-9
    assert result["verify_paths"]["shared_state_ms"] > 0 and result["verify_paths"]["rerun_prefix_ms"] > 0
    table = result_file.with_suffix(".md").read_text()
    assert table.count("\n| ") == 1 + len(grid)  # header + one row per grid point
    assert result_file.with_suffix(".png").stat().st_size > 1000


def test_drafter_comparison_tiny_runs_every_stage_and_decodes_greedily(tmp_path):
    """bench/drafters.py --tiny: corpus, tokenizer, verifier, the three drafters and the K x N grid; every decode in
    the grid reproduces the verifier's greedy text."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(REPO / "bench" / "drafters.py"), "--tiny", "--run",
                           str(tmp_path / "run"), "--out", str(tmp_path / "out" / "grid")], env=env, cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "grid.json").read_text())
    grid = report["grid"]
    short = ("clsd_adaln", "clsd_prefix", "clsd_adaln+vread", "clsd_prefix+vread")  # DiTs trained at block 8
    expected = {(d, k, n) for d in short for k in (4, 8) for n in (1, 4)} | \
        {(d, 16, n) for d in ("clsd_adaln@16", "clsd_prefix@16") for n in (1, 4)} | \
        {("ar", k, n) for k in (4, 8, 16) for n in (1, 4)}
    assert {(r["drafter"], r["K"], r["N"]) for r in grid} == expected
    for name in ("clsd_adaln@16", "clsd_prefix@16"):  # K 16 is drafted by DiTs trained at that block
        exported = json.loads((tmp_path / "run" / name / "export" / "dit_config.json").read_text())
        assert exported["dit"]["block_len"] == 16
    assert report["budget"]["dit_flops_long"] == pytest.approx(report["budget"]["dit_flops"], rel=0.05)
    assert all(r["greedy_outputs"] == "2/2" for r in grid)
    assert all(1 <= r["tau"] <= r["K"] + 1 for r in grid)
    assert report["budget"]["ar_steps"] >= 1 and report["verifier_heldout_ce"] > 0
    assert (tmp_path / "out" / "grid.png").stat().st_size > 1000
    assert "| ar | 8 |" in (tmp_path / "out" / "grid.md").read_text()


def test_drafter_levers_tiny_runs_every_stage_and_decodes_greedily(tmp_path):
    """bench/drafter_levers.py --tiny: verifier, distilled shards, the AR and lever DiT drafters on both data and
    the DiT variants, τ curves during training at matched FLOPs; both rules, noise and lattice candidates; every
    exact decode reproduces the verifier's greedy text."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(REPO / "bench" / "drafter_levers.py"), "--tiny", "--run",
                           str(tmp_path / "run"), "--out", str(tmp_path / "out" / "levers")], env=env, cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "levers.json").read_text())
    names = {"ar", "ar_dist", "clsd", "clsd_dist", "ar_dist_2x", "clsd_dist_l2", "clsd_dist_attn", "clsd_dist_2step",
             "clsd_many", "ar_many_2x", "clsd_many_mask", "clsd_many_mask_reveal", "clsd_many_3x", "clsd_many_mask_3x",
             "ar_many_3x", "clsd_many_mask_reveal_3x", "clsd_many_mask_reveal_3x_seed1", "ar_many_3x_seed1",
             "clsd_many_seed1", "clsd_many_mask_seed1", "clsd_dense", "ar_dense_2x"}
    ablation = {"abl_seed", "abl_prefix", "abl_anchor", "abl_tokens", "abl_one_step", "abl_decay", "abl_decay_adaln"}
    assert {r["drafter"] for r in report["rows"]} == names | ablation
    exact = [r for r in report["rows"] if r["rule"] == "exact"]
    assert all(r["greedy_outputs"] == "2/2" for r in exact)
    assert all(1 <= r["tau"] <= r["K"] + 1 and all(0 <= a <= 1 for a in r["alpha"]) for r in report["rows"])
    cells = Counter((r["drafter"], r["rule"]) for r in report["rows"])  # N 1, 2 (and a DiT's lattice at N 2)
    assert all(cells[name, rule] == (2 if name.startswith("ar") or "_mask" in name else 3) + (rule == "exact") * (
        2 * ("_mask" in name) + 2 * ("_reveal" in name)) for name in names for rule in ("exact", "sampling"))
    # a mask DiT: one draft, so N 2 is the lattice only; under exact also the lattice redrafted at N 1 and 2 (a
    # reveal DiT's also twice)
    assert {r["N"] for r in report["rows"] if r["candidates"] == "redraft"} == {1, 2}
    assert {r["drafter"] for r in report["rows"] if r["candidates"] == "redraft2"} == {
        "clsd_many_mask_reveal", "clsd_many_mask_reveal_3x", "clsd_many_mask_reveal_3x_seed1"}
    reveal = json.loads((tmp_path / "run" / "clsd_many_mask_reveal" / "export" / "dit_config.json").read_text())
    assert reveal["flow"]["reveal"] == 0.5 and reveal["flow"]["source"] == "mask"
    assert all(cells[name, "exact"] == 1 and cells[name, "sampling"] == 0 for name in ablation)
    seed = json.loads((tmp_path / "run" / "abl_seed" / "export" / "dit_config.json").read_text())
    assert not seed["dit"]["prefix_state"] and seed["flow"]["objective"] == "velocity" and not seed["flow"]["anchor"]
    mask = json.loads((tmp_path / "run" / "clsd_many_mask" / "export" / "dit_config.json").read_text())
    assert mask["flow"]["source"] == "mask" and mask["flow"]["anchor"]
    two_step = json.loads((tmp_path / "run" / "clsd_dist_2step" / "export" / "dit_config.json").read_text())
    assert two_step["flow"]["anchor"] and two_step["flow"]["train_inputs"] == "sampler"
    runs = report["budget"]["runs"]
    assert runs["clsd_dist"]["steps"] == report["budget"]["dit_steps"] * 2  # the tiny plan's long = 2
    assert runs["clsd_dist_2step"]["steps"] == runs["clsd_dist"]["steps"] // 2  # two DiT passes a step
    assert runs["clsd_many_3x"]["steps"] == runs["clsd_many_mask_3x"]["steps"] == report["budget"]["dit_steps"] * 3
    assert runs["ar_many_3x"]["steps"] == runs["ar_many_2x"]["steps"] // 2 * 3  # the tiny plan's converge = 3
    seeded = [json.loads((tmp_path / "run" / name / "config.json").read_text()) for name in ("clsd_many_seed1",
                                                                                             "clsd_many")]
    assert [(c["seed"], c["data"]["seed"]) for c in seeded] == [(1, 1), (0, 0)]
    final = {name: curve[-1]["flops"] for name, curve in report["curves"].items()
             if "_3x" not in name and name != "clsd"}
    assert max(final.values()) == pytest.approx(min(final.values()), rel=0.1)  # the long runs' FLOPs match
    assert (tmp_path / "run" / "distilled" / "manifest.json").is_file()
    distilled = json.loads((tmp_path / "run" / "distilled" / "manifest.json").read_text())
    for name, anchors in (("many", 2), ("dense", 3)):  # the tiny plan's anchors per rollout
        many = json.loads((tmp_path / "run" / f"distilled_{name}" / "manifest.json").read_text())
        assert sum(x["samples"] for x in many["shards"]) == anchors * sum(x["samples"] for x in distilled["shards"])
    curve = report["verifier_curve"]  # the verifier's recipe for twice its steps, evaluated at every quarter
    assert [e["step"] for e in curve] == list(range(0, 2 * report["sizes"]["verifier_steps"] + 1,
                                                   report["sizes"]["verifier_steps"] // 4))
    assert curve[-1]["loss"] < curve[0]["loss"]
    assert (tmp_path / "out" / "levers.png").stat().st_size > 1000


def test_drafter_levers_only_names_drafters_of_the_plan(tmp_path):
    """--only NAME: an unknown drafter is refused before anything is built, with the plan's names."""
    done = subprocess.run([sys.executable, str(REPO / "bench" / "drafter_levers.py"), "--tiny", "--run",
                           str(tmp_path / "run"), "--only", "clsd_many_mask", "nope"], cwd=REPO, capture_output=True,
                          text=True)
    assert done.returncode == 2 and "no drafter named nope" in done.stderr and "clsd_many_mask_reveal" in done.stderr
    assert not (tmp_path / "run").exists()


def test_shadow_loop_bench_tiny_measures_every_decoder_and_the_loop(tmp_path):
    """bench/shadow_loop.py --tiny: the quickstart base, a task set, the verifier's greedy and best-of-N, the CLSD
    decoder at the starting drafter and at every version the loop (Redis + primary + trainer processes) published,
    the loop's throughput and version lag."""
    from clsd_ds.shadow import redis_server

    if redis_server.available() is not None:
        pytest.skip(redis_server.available())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(REPO / "bench" / "shadow_loop.py"), "--tiny", "--run",
                           str(tmp_path / "run"), "--out", str(tmp_path / "out" / "shadow"), "--updates", "3",
                           "--measure-every", "2"], env=env, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "shadow.json").read_text())
    assert set(report["measured"]) == {"verifier", "clsd_v0", "clsd_v2"}  # a version each update, every 2nd measured
    assert all(0 <= v <= 1 for r in report["measured"].values() for v in r.values() if not isinstance(v, list))
    n = report["heldout_tasks"]
    verifier = report["measured"]["verifier"]
    assert len(verifier["greedy_solved"]) == round(verifier["greedy"] * n)
    for key in ("clsd_v0", "clsd_v2"):  # the tasks solved, by index: what greedy did not solve is counted
        solved = report["measured"][key]["solved"]
        assert set(solved) <= set(range(n)) and len(solved) == round(report["measured"][key]["best_of_n"] * n)
    assert "solved, not by greedy" in (tmp_path / "out" / "shadow.md").read_text()
    loop = report["loop"]
    assert loop["versions"] == [1, 2, 3] and loop["trajectories"] >= 3 and loop["version_lag_max"] >= 0
    assert loop["stream"]["pending"] == 0 and [e["step"] for e in loop["train"]] == [1, 2, 3]
    assert sum(loop["groups"].values()) == loop["trajectories"]  # each group all pass, all fail or mixed
    other = subprocess.run([sys.executable, str(REPO / "bench" / "shadow_loop.py"), "--tiny", "--run",
                            str(tmp_path / "run"), "--threshold", "0.5"], env=env, cwd=REPO, capture_output=True,
                           text=True)  # its cells are for the plan's rule: another one is refused, nothing rewritten
    assert other.returncode != 0 and '"threshold": 0.1' in other.stderr and "another --run" in other.stderr
    other = subprocess.run([sys.executable, str(REPO / "bench" / "shadow_loop.py"), "--tiny", "--run",
                            str(tmp_path / "run")], env=env, cwd=REPO, capture_output=True, text=True)
    assert other.returncode != 0 and '"updates": 3' in other.stderr  # nor a loop of another length
    assert (tmp_path / "out" / "shadow.png").stat().st_size > 1000


def test_shadow_loop_counts_groups_and_the_mean_reward_of_each_round_of_training_tasks(tmp_path):
    """The loop's training curve free of the task order: the primary's lines cut into rounds of every training task
    once (an incomplete last round left out); and the groups all pass / all fail / mixed."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("shadow_loop", REPO / "bench" / "shadow_loop.py")
    bench = sys.modules["shadow_loop"] = importlib.util.module_from_spec(spec)  # its dataclasses look it up there
    spec.loader.exec_module(bench)
    rewards = [[1, 1], [0, 0], [0, 1], [1, 0], [1, 1], [1, 1], [0, 0]]
    versions = [0, 0, 2, 2, 4, 6, 6]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"rewards": r, "version": v}) + "\n"
                                                    for r, v in zip(rewards, versions)))
    groups, rounds = bench.group_verdicts(tmp_path, round_tasks=3)
    assert groups == {"mixed": 2, "all_pass": 3, "all_fail": 2}
    assert rounds == [{"round": 0, "tasks": 3, "mean_reward": 0.5, "versions": [0, 2]},
                      {"round": 1, "tasks": 3, "mean_reward": 5 / 6, "versions": [2, 6]}]


def test_shadow_loop_focus_keeps_the_first_training_tasks_with_mixed_verdicts_and_every_heldout_one(tmp_path):
    """--train-tasks K: the first K training tasks whose probe group has both a pass and a fail, written once with
    the held-out split; too few such tasks is refused with how many were probed."""
    import importlib.util

    from clsd_ds.shadow.tasks import make_tasks, read_tasks, write_tasks

    spec = importlib.util.spec_from_file_location("shadow_loop", REPO / "bench" / "shadow_loop.py")
    bench = sys.modules["shadow_loop"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    tasks = write_tasks(tmp_path / "tasks.jsonl", make_tasks(12, 3))
    train = read_tasks(tasks, "train")
    verdicts = {t["id"]: r for t, r in zip(train, [[1, 1], [0, 1], [0, 0], [1, 0], [0, 1], [1, 1], [0, 0], [1, 0],
                                                    [0, 0]])}

    class Probe:  # the primary's task_group, reduced to the verdicts it would give
        def __init__(self):
            self.seeds = []

        def task_group(self, task, seed):
            self.seeds.append(seed)
            return {"rollouts": [{"reward": r} for r in verdicts[task["id"]]]}

    plan = replace(bench.TINY_PLAN, train_tasks=3)
    probe = Probe()
    assert bench.focus_tasks(probe, tasks, tmp_path / "focus.jsonl", plan) == {"probed": 5, "chosen": 3}
    assert [t["id"] for t in read_tasks(tmp_path / "focus.jsonl", "train")] == [train[i]["id"] for i in (1, 3, 4)]
    assert read_tasks(tmp_path / "focus.jsonl", "heldout") == read_tasks(tasks, "heldout")
    assert len(set(probe.seeds)) == 5
    bench.focus_tasks(probe, tasks, tmp_path / "focus.jsonl", plan)  # written once: a rerun probes nothing
    assert len(probe.seeds) == 5
    with pytest.raises(SystemExit, match="only 4 of the 9 training tasks"):
        bench.focus_tasks(probe, tasks, tmp_path / "more.jsonl", replace(plan, train_tasks=5))
    assert not (tmp_path / "more.jsonl").exists()


def test_gpu_check_tiny_runs_every_part_in_its_own_process_and_reports_each_target(tmp_path):
    """bench/gpu_check.py run --tiny: the GPU call's code at the quickstart's shapes; every part's fields, its
    kernels (on this CPU: transformers' torch fallback, named) and the targets computed from them."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "run", "--tiny", "--out",
                           str(tmp_path)], env=env, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    parts = report["parts"]
    assert list(parts) == ["bare", "inference", "stage_a_ckpt", "stage_c", "stage_a_nockpt"]
    assert all(p["status"] == "ok" and p["peak_rss_gib"] > 0 for p in parts.values())
    assert all("chunk_gated_delta_rule" in p["gated_delta_fallbacks"] for p in parts.values())  # no fla here
    bare = parts["bare"]["result"]
    assert bare["matmul"]["tflop_s"] > 0 and bare["copy_gb_s"] > 0 and bare["decode_bytes"] > 0
    assert bare["ckpt"]["dit_params"] == bare["nockpt"]["dit_params"] and 0 < bare["ckpt"]["mfu_vs_matmul"]
    cycles = parts["inference"]["result"]["cycles"]
    assert {(c["N"], c["K"]) for c in cycles} == {(1, 8), (1, 32), (4, 8), (4, 32)}
    assert parts["stage_a_ckpt"]["result"]["checkpointing"] and not parts["stage_a_nockpt"]["result"]["checkpointing"]
    assert parts["stage_c"]["result"]["stage"] == "c" and parts["stage_c"]["result"]["prefix_path"] == "state"
    rows = {t["target"].split(" (")[0]: t for t in report["targets"]}
    assert rows["Stage C"]["value"] == parts["stage_c"]["result"]["block_tok_s"]
    assert sum(t["target"].startswith("cycle") for t in report["targets"]) == len(cycles)
    assert all(isinstance(t["met"], bool) for t in report["targets"])  # every part measured, every target decided
    assert "| stage_c | ok |" in (tmp_path / "gpu_check.md").read_text()


def test_gpu_check_kills_a_part_past_its_budget_and_keeps_the_report(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "run", "--tiny", "--only",
                           "stage_a_ckpt", "--budget", "2", "--out", str(tmp_path)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    entry = json.loads((tmp_path / "gpu_check.json").read_text())["parts"]["stage_a_ckpt"]
    assert entry["status"] == "timeout" and entry["budget_s"] == 2 and entry["wall_s"] < 10
    assert not (tmp_path / "parts" / "stage_a_ckpt.json").exists()
    row = next(t for t in json.loads((tmp_path / "gpu_check.json").read_text())["targets"]
               if "stage_a_ckpt" in t["target"])
    assert row["value"] is None and row["met"] is None


def test_gpu_check_installs_carried_wheels_offline(tmp_path):
    """`install FOLDER --site DIR`: every wheel of the folder, offline, importable from the target."""
    import zipfile

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "carried_probe-0.1-py3-none-any.whl", "w") as whl:
        whl.writestr("carried_probe/__init__.py", "VALUE = 17\n")
        whl.writestr("carried_probe-0.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: carried-probe\n"
                     "Version: 0.1\n")
        whl.writestr("carried_probe-0.1.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\n"
                     "Root-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr("carried_probe-0.1.dist-info/RECORD", "")
    script = str(REPO / "bench" / "gpu_check.py")
    subprocess.run([sys.executable, script, "install", str(wheels), "--site", str(tmp_path / "site")], check=True,
                   capture_output=True)
    probe = subprocess.run([sys.executable, "-c", "import carried_probe; print(carried_probe.VALUE)"],
                           env={**os.environ, "PYTHONPATH": str(tmp_path / "site")}, capture_output=True, text=True)
    assert probe.stdout.strip() == "17"
    empty = subprocess.run([sys.executable, script, "install", str(tmp_path), "--site", str(tmp_path / "s2")],
                           capture_output=True, text=True)
    assert empty.returncode != 0 and "no *.whl or *.tar.gz" in empty.stderr
