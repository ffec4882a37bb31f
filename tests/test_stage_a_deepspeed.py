"""Stage A for real: 2 gloo ranks under DeepSpeed ZeRO-3 with three launchers, a kill -9, resume and export.

Run A (torchrun) trains 12 steps uninterrupted. Run B starts under the `deepspeed` launcher, is killed with
SIGKILL after its step-4 checkpoint, and is resumed under `mpirun` (mpi4py discovery): its losses after the
resume must equal run A's, and so must its final weights.
"""

import json
import sys

import torch
from conftest import BLOCK, run_cli
from dsruns import kill_after_checkpoint, train_losses, write_config

from clsd_ds.dit import load_dit

STEPS, SAVE_EVERY = 12, 4


def test_zero3_stage_a_trains_and_partitions(stage_a_run):
    run_dir, proc = stage_a_run
    losses = train_losses(run_dir)
    assert sorted(losses) == list(range(1, STEPS + 1))
    first, last = sum(losses[s] for s in (1, 2, 3)) / 3, sum(losses[s] for s in (10, 11, 12)) / 3
    assert last < 0.9 * first, losses
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    evals = [r for r in records if r["kind"] == "eval"]
    assert [e["step"] for e in evals] == [0, STEPS] and evals[1]["loss"] < evals[0]["loss"]
    assert all(1 <= e["tau"] <= BLOCK + 1 for e in evals)  # exact decoding of held-out prompts, both ranks
    taus = [e["tau"] for e in evals]  # keep_best_tau: the drafter of the first evaluation with the best τ
    best = json.loads((run_dir / "best_tau" / "best_tau.json").read_text())
    assert best == {"tau": max(taus), "step": evals[taus.index(max(taus))]["step"]}
    kept, final = load_dit(run_dir / "best_tau").state_dict(), load_dit(run_dir / "export").state_dict()
    assert all(torch.equal(kept[k], final[k]) for k in final) == (best["step"] == STEPS)
    train = [r for r in records if r["kind"] == "train"][-1]
    for key in ("loss_t0", "loss_t3", "grad_norm", "lr", "tok_s", "step_s", "samples"):
        assert key in train, key
    assert train["samples"] == STEPS * 8
    # ZeRO-3: each rank's optimizer holds half of the fp32 master weights; the module states hold no weights.
    ckpt = run_dir / "checkpoints" / f"step{STEPS:08d}"
    parts = [torch.load(ckpt / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt", map_location="cpu",
                        weights_only=False)["optimizer_state_dict"] for r in (0, 1)]
    model_states = torch.load(ckpt / "zero_pp_rank_0_mp_rank_00_model_states.pt", map_location="cpu",
                              weights_only=False)
    total = sum(s.numel() for s in model_states["param_shapes"][0].values())
    local = [sum(t.numel() for t in p["fp32_flat_groups"]) for p in parts]
    assert parts[0]["partition_count"] == 2
    assert all(total / 2 <= n < total / 2 + 1024 for n in local), (local, total)
    assert sum(v.numel() for v in model_states["module"].values()) < total / 100
    # keep_last=2 and the `latest` pointer
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step*")) == ["step00000008", "step00000012"]
    assert (run_dir / "checkpoints" / "latest").read_text() == f"step{STEPS:08d}"
    assert json.loads(proc.stdout[proc.stdout.index("{"):])["end_step"] == STEPS  # rank 0's summary
    assert list((run_dir / "wandb").glob("offline-run-*")), "wandb (offline) was not written"
    # 2 ranks x 2 DataLoader workers on this Python: started so that they cannot deadlock at fork, no warning
    start = "forkserver" if sys.version_info < (3, 11, 8) else "fork"
    for rank in (0, 1):
        log = (run_dir / "logs" / f"rank{rank}.log").read_text()
        assert f"2 DataLoader workers per rank, started by {start}" in log
    assert "gh-112275" not in proc.stdout + proc.stderr


def test_export_reloads_into_the_trained_model(stage_a_run):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    run_dir, _ = stage_a_run
    dit = load_dit(run_dir / "export")
    master = get_fp32_state_dict_from_zero_checkpoint(str(run_dir / "checkpoints"), tag=f"step{STEPS:08d}")
    exported = dit.state_dict()
    assert set(master) == set(exported)
    for name, value in master.items():
        assert torch.equal(exported[name], value), name
    assert any(v.abs().sum() > 0 for k, v in exported.items() if "adaLN" in k)  # trained, not the zero init


def test_kill_resume_on_other_launchers_matches_uninterrupted_run(stage_a_run, shards, tmp_path):
    run_dir_a, _ = stage_a_run
    run_dir = tmp_path / "run"
    cfg = write_config(tmp_path / "b.yaml", run_dir, shards)
    resumed_from = kill_after_checkpoint(cfg, run_dir, SAVE_EVERY, launcher="deepspeed")
    assert resumed_from < STEPS
    resumed = run_cli(["train", "--config", str(cfg)], nproc=2, launcher="mpirun")
    assert f"resumed from {run_dir / 'checkpoints' / f'step{resumed_from:08d}'} at step {resumed_from}" \
        in resumed.stdout + resumed.stderr
    a, b = train_losses(run_dir_a), train_losses(run_dir)
    after = range(resumed_from + 1, STEPS + 1)
    assert [b[s] for s in after] == [a[s] for s in after]
    final_a, final_b = load_dit(run_dir_a / "export").state_dict(), load_dit(run_dir / "export").state_dict()
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_a)
