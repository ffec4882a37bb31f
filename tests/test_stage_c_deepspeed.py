"""Stage C for real: 2 gloo ranks, ZeRO-3 DiT, the verifier replicated or ZeRO-3-partitioned, starting from the
Stage A run's checkpoint, a kill -9 and an exact resume."""

import pytest
import torch
from conftest import TINY, run_cli
from dsruns import C_SAVE_EVERY as SAVE_EVERY
from dsruns import C_STEPS as STEPS
from dsruns import SEED, kill_after_checkpoint, records, stage_c_config, stage_c_run, train_losses

from clsd_ds.dit import DiTConfig, load_dit
from clsd_ds.train.run import RunConfig
from clsd_ds.train.stages import initial_dit
from clsd_ds.verifier import Verifier, VerifierConfig


@pytest.fixture(scope="module")
def zero3_run(stage_a_checkpoint_only, shards, tmp_path_factory):
    return stage_c_run(tmp_path_factory.mktemp("c_z3"), shards, stage_a_checkpoint_only, "zero3")


def test_init_from_export_or_checkpoint_gives_the_stage_a_weights(stage_a_run, stage_a_checkpoint_only):
    run_dir, _ = stage_a_run
    verifier = Verifier.load(VerifierConfig(random_init=TINY), seed=SEED)
    trained = load_dit(run_dir / "export").state_dict()
    for source in (run_dir / "export", run_dir, stage_a_checkpoint_only):
        cfg = RunConfig(init_from=str(source), verifier=VerifierConfig(random_init=TINY),
                        dit=DiTConfig(num_layers=2, checkpointing=True))  # the architecture comes from the source
        dit = initial_dit(verifier, cfg)
        assert dit.cfg.num_layers == 4 and dit.cfg.checkpointing
        state = dit.state_dict()
        assert all(torch.equal(state[k], trained[k]) for k in trained), source


def test_stage_c_lowers_ce_and_logs_its_metrics(replicate_run):
    evals = records(replicate_run, "eval")
    assert sorted(evals) == [0, STEPS]
    assert evals[STEPS]["ce"] < evals[0]["ce"]
    last = records(replicate_run)[STEPS]
    for key in ("ce", "mse", "beta", "verifier_acc", "nearest_acc", "grad_norm", "tok_s"):
        assert key in last, key
    assert [records(replicate_run)[s]["beta"] for s in (1, STEPS)] == pytest.approx([0.1, 0.1 / 8])
    assert (replicate_run / "export" / "model.safetensors").is_file()


def test_zero3_partitioned_verifier_equals_the_replicated_one(replicate_run, zero3_run):
    rep, z3 = records(replicate_run, "eval")[0], records(zero3_run, "eval")[0]
    for key in ("ce", "verifier_acc", "nearest_acc", "mse"):
        assert z3[key] == pytest.approx(rep[key], rel=1e-5, abs=1e-6), key
    assert z3["tau"] == rep["tau"] and rep["tau"] >= 1  # decoding through the ZeRO-3-partitioned verifier
    a, b = train_losses(replicate_run), train_losses(zero3_run)
    assert [b[s] for s in range(1, STEPS + 1)] == pytest.approx([a[s] for s in range(1, STEPS + 1)], rel=1e-4)


def test_kill_and_resume_matches_the_uninterrupted_run(zero3_run, stage_a_checkpoint_only, shards, tmp_path):
    """With the verifier partitioned too: its weights are not in the checkpoints and come back from their source."""
    cfg = stage_c_config(tmp_path, "k", shards, stage_a_checkpoint_only, stage_c__placement="zero3")
    resumed_from = kill_after_checkpoint(cfg, tmp_path / "k", SAVE_EVERY, launcher="torchrun")
    assert resumed_from < STEPS
    run_cli(["train", "--config", str(cfg)], nproc=2)
    a, b = train_losses(zero3_run), train_losses(tmp_path / "k")
    assert [b[s] for s in range(resumed_from + 1, STEPS + 1)] == [a[s] for s in range(resumed_from + 1, STEPS + 1)]
