"""``clsd-ds doctor``: its report on this machine, checked against what transformers really runs; the CLI from any
directory; what a config needs and lacks; the launcher environment it sees."""

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import Qwen3_5TextConfig
from transformers.models.qwen3_5 import modeling_qwen3_5 as qwen

from clsd_ds import doctor
from clsd_ds.config import load_config
from clsd_ds.train.run import RunConfig

# The doctor's entry points wired as __main__.py wires a subcommand (until `python -m clsd_ds doctor` exists).
CLI = ("import argparse, sys; from clsd_ds import doctor; p = argparse.ArgumentParser(); doctor.add_arguments(p); "
       "sys.exit(doctor.main(p.parse_args()))")
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE",
                 "PMI_RANK", "PMIX_RANK", "MPI_LOCALNRANKS")
SRUN = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "4", "SLURM_PROCID": "2", "SLURM_LOCALID": "0", "SLURM_STEP_ID": "0",
        "SLURM_JOB_NODELIST": "node[01-02]"}
SBATCH = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "4", "SLURM_JOB_NODELIST": "node[01-02]"}  # no srun step


@pytest.fixture(scope="module")
def rep():
    return doctor.report(None)


def entry(rep: dict, name: str) -> dict:
    return next(p for p in rep["fast_paths"] if p["name"].startswith(name))


def errors(rep: dict) -> list[str]:
    return [v["message"] for v in rep["verdicts"] if v["level"] == "error"]


def clean_env(**extra) -> dict:
    """This process's environment without any launcher's variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS and not k.startswith("SLURM_")}
    return {**env, **extra}


def run(args: list[str], cwd, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=False, cwd=cwd, env=env or clean_env(), capture_output=True, text=True,
                          timeout=300)


def torch_fallback_ran() -> bool:
    """Run a tiny Qwen3_5GatedDeltaNet and tell whether transformers' own torch chunk rule executed."""
    cfg = Qwen3_5TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=2,
                            num_key_value_heads=1, head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4,
                            linear_key_head_dim=16, linear_value_head_dim=16, vocab_size=64)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    layer = qwen.Qwen3_5GatedDeltaNet(cfg, layer_idx=0).to(device)
    called = set()
    sys.setprofile(lambda frame, event, arg: called.add(frame.f_code) if event == "call" else None)
    try:
        layer(torch.randn(1, 8, 64, device=device))
    finally:
        sys.setprofile(None)
    return any(c.co_name == "torch_chunk_gated_delta_rule" and c.co_filename == qwen.__file__ for c in called)


def test_report_is_json_with_the_installed_versions(rep):
    assert json.loads(json.dumps(rep)) == rep
    assert {"versions", "devices", "fast_paths", "environment", "verdicts"} <= rep.keys()
    for name in ("torch", "deepspeed", "transformers", "clsd-ds"):
        assert rep["versions"][name] == importlib.metadata.version(name)
    assert rep["devices"]["cuda_available"] == torch.cuda.is_available()
    assert all(set(p) == {"name", "used", "why", "detail"} and isinstance(p["used"], bool) for p in rep["fast_paths"])
    assert all(v["level"] in ("ok", "warn", "error") for v in rep["verdicts"])
    assert doctor.exit_code(rep) == 0


def test_gated_deltanet_entry_tells_what_transformers_runs(rep):
    gdn = entry(rep, "Gated DeltaNet")
    fallback = torch_fallback_ran()
    assert gdn["detail"]["chunk"].endswith("modeling_qwen3_5.torch_chunk_gated_delta_rule") == fallback
    if fallback:
        assert not gdn["used"] and "torch fallback" in gdn["why"]
    if not torch.cuda.is_available():  # this CPU: fla is installed, triton and CUDA are not
        assert fallback and "CUDA device" in gdn["why"] and "triton" in gdn["why"]
        assert any(v["level"] == "ok" and "Gated DeltaNet" in v["message"] for v in rep["verdicts"])


def test_probe_runs_forward_and_backward_separately():
    cpu = torch.device("cpu")
    torch_rule = qwen.torch_chunk_gated_delta_rule.__wrapped__  # transformers' own torch code
    assert doctor.probe_chunk_rule(torch_rule, cpu) == {"forward": "ok", "backward": "ok"}

    def detached_rule(q, k, v, **kwargs):
        return v.detach().clone(), None

    result = doctor.probe_chunk_rule(detached_rule, cpu)
    assert result["forward"] == "ok" and result["backward"].startswith("RuntimeError")


def test_cpu_fast_paths(rep):
    if torch.cuda.is_available():
        pytest.skip("the CPU branch")
    assert not entry(rep, "fused AdamW")["used"] and not entry(rep, "bf16")["used"]
    assert entry(rep, "gloo")["used"] and not entry(rep, "NCCL")["used"]
    cpu_adam = entry(rep, "DeepSpeed CPUAdam")
    assert not cpu_adam["used"] and "used by configs that need it" in cpu_adam["why"]


@pytest.mark.parametrize("slurm, launcher", [(SRUN, "slurm"), (SBATCH, "single")], ids=["srun", "sbatch"])
def test_cli_json_from_any_directory_shows_the_launcher(tmp_path, slurm, launcher):
    out = run([sys.executable, "-c", CLI, "--json"], tmp_path, clean_env(**slurm))
    assert out.returncode == 0, out.stderr
    rep = json.loads(out.stdout)
    assert slurm.items() <= rep["environment"]["variables"].items()
    assert rep["environment"]["launcher"] == launcher
    truth = run([sys.executable, "-c", "from clsd_ds.train.distributed import launcher_env; print(launcher_env())"],
                tmp_path, clean_env(**slurm))
    assert truth.stdout.strip() == launcher, truth.stderr
    if launcher == "single":
        assert any(v["level"] == "warn" and "srun" in v["message"] for v in rep["verdicts"])


def test_python_m_clsd_ds_doctor(tmp_path):
    usage = run([sys.executable, "-m", "clsd_ds", "doctor", "--help"], tmp_path)
    if usage.returncode != 0:
        pytest.skip(f"`python -m clsd_ds doctor` is not wired into clsd_ds/__main__.py yet (--help exits "
                    f"{usage.returncode})")
    out = run([sys.executable, "-m", "clsd_ds", "doctor", "--json"], tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["versions"]["clsd-ds"] == importlib.metadata.version("clsd-ds")


def test_config_needs_met(verifier_dir, shards):
    cfg = load_config(RunConfig, None, [f"verifier.path={verifier_dir}", f"data.train={shards / 'train'}",
                                        f"data.val={shards / 'val'}", "train.ds_config=ds_configs/cpu_zero1.json"])
    rep = doctor.report(cfg)
    assert errors(rep) == [] and doctor.exit_code(rep) == 0
    assert rep["config"] == {"ds_config": "ds_configs/cpu_zero1.json", "precision": "fp32", "zero_stage": 1,
                             "offload_optimizer": False, "optimizer": "torch"}


def test_config_needs_missing_are_errors():
    cfg = load_config(RunConfig, None, ["verifier.path=/nonexistent", "data.train=/nonexistent/shards",
                                        "train.ds_config=ds_configs/single_gpu_offload.json"])
    rep = doctor.report(cfg)
    assert doctor.exit_code(rep) == 1
    assert any(m.startswith("verifier.path") and "/nonexistent" in m for m in errors(rep))
    assert any(m.startswith("data.train") and "/nonexistent/shards" in m for m in errors(rep))
    assert rep["config"]["offload_optimizer"] and entry(rep, "DeepSpeed CPUAdam")["why"].endswith("this config uses it")
    if not torch.cuda.is_available():
        assert any(v["level"] == "warn" and "bf16 without a CUDA device" in v["message"] for v in rep["verdicts"])


def test_config_with_a_ds_config_that_names_nothing():
    cfg = load_config(RunConfig, None, ["verifier.path=/nonexistent", "data.train=/nonexistent",
                                        "train.ds_config=ds_configs/no_such.json"])
    rep = doctor.report(cfg)
    assert rep["config"] is None and doctor.exit_code(rep) == 1
    assert any("train.ds_config 'ds_configs/no_such.json' names no file" in m for m in errors(rep))


def test_config_that_does_not_load_exits_2(capsys):
    args = argparse.Namespace(json=True, config=None, overrides=["data.train=/x", "verifier.path=/y", "no_such=1"])
    assert doctor.main(args) == 2
    assert "unknown field 'no_such'" in capsys.readouterr().err
