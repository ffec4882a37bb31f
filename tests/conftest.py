"""Shared fixtures: a tiny tokenizer, a tiny random-init Qwen3.5 verifier checkpoint, and token shards."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clsd_ds import tiny
from clsd_ds.data.corpus import write_corpus
from clsd_ds.data.tokenizer import train_tokenizer
from clsd_ds.data.writer import PrepareConfig, prepare_data
from clsd_ds.verifier import Verifier, VerifierConfig

REPO = Path(__file__).resolve().parents[1]
TINY = {**tiny.TINY, "vocab_size": 320}  # 8 layers in Qwen3.5's [3 x DeltaNet, 1 x attention] pattern, hidden 64
BLOCK, PREFIX = 16, 32


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("clsd")


@pytest.fixture(scope="session")
def corpus(workdir) -> Path:
    return write_corpus(workdir / "corpus.jsonl", 40, seed=1)


@pytest.fixture(scope="session")
def tokenizer_dir(workdir, corpus) -> Path:
    texts = [json.loads(line)["text"] for line in corpus.open()]
    train_tokenizer(texts, 300, workdir / "tokenizer")
    return workdir / "tokenizer"


@pytest.fixture(scope="session")
def verifier_dir(workdir, tokenizer_dir) -> Path:
    """A random-init tiny verifier saved as a Hugging Face checkpoint, with the tokenizer beside it."""
    from clsd_ds.verifier import load_tokenizer

    out = workdir / "verifier"
    Verifier.load(VerifierConfig(random_init=TINY), seed=3).lm.save_pretrained(out)
    load_tokenizer(str(tokenizer_dir)).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def shadow_files(verifier_dir, tmp_path_factory) -> Path:
    """The shadow loop's fixture: a starting drafter (the recipe's flow: anchor, tokens objective, one step from
    the mask; random weights, as the loop must work whatever its τ) and a task set."""
    from clsd_ds.dit import DiTConfig, save_dit
    from clsd_ds.flow import FlowConfig
    from clsd_ds.graft import graft
    from clsd_ds.shadow.tasks import make_tasks, write_tasks

    base = tmp_path_factory.mktemp("shadow")
    verifier = Verifier.load(VerifierConfig(path=str(verifier_dir)))
    torch.manual_seed(0)
    dit = graft(verifier, DiTConfig(num_layers=2, block_len=8, prefix_state=True))
    flow = FlowConfig(anchor=True, objective="tokens", euler_steps=1, t_sampling="euler_grid", source="mask")
    save_dit(dit.state_dict(), dit.text_config, dit.cfg, base / "drafter", flow)
    write_tasks(base / "tasks.jsonl", make_tasks(12, heldout=4))
    return base


def make_shards(out: Path, tokenizer_dir: Path, **kw) -> dict:
    cfg = dict(input=[str(out.parent / "corpus.jsonl")], out=str(out), tokenizer=str(tokenizer_dir),
               block_len=BLOCK, prefix_len=PREFIX, shard_samples=60, val_fraction=0.1, shuffle_buffer=200)
    cfg.update(kw)
    return prepare_data(PrepareConfig(**cfg), log=lambda *_: None)


@pytest.fixture(scope="session")
def shards(workdir, corpus, tokenizer_dir) -> Path:
    make_shards(workdir / "shards", tokenizer_dir)
    return workdir / "shards"


@pytest.fixture(scope="session")
def stage_a_run(shards, tmp_path_factory):
    """A 12-step, 2-rank ZeRO-3 Stage A run under torchrun (wandb offline); Stage C tests start from it."""
    from dsruns import write_config

    tmp = tmp_path_factory.mktemp("stage_a_run")
    cfg = write_config(tmp / "a.yaml", tmp / "run", shards, log__wandb=True)
    proc = run_cli(["train", "--config", str(cfg)], nproc=2)
    return tmp / "run", proc


@pytest.fixture(scope="session")
def stage_a_checkpoint_only(stage_a_run, tmp_path_factory):
    """The Stage A run directory without its export: init_from must consolidate the checkpoint."""
    src, _ = stage_a_run
    dst = tmp_path_factory.mktemp("a_ckpt") / "run"
    dst.mkdir()
    shutil.copy(src / "config.json", dst / "config.json")
    shutil.copytree(src / "checkpoints", dst / "checkpoints")
    return dst


@pytest.fixture(scope="session")
def replicate_run(stage_a_checkpoint_only, shards, tmp_path_factory):
    """An 8-step, 2-rank Stage C run (verifier replicated) from the Stage A checkpoint, under torchrun."""
    from dsruns import stage_c_run

    return stage_c_run(tmp_path_factory.mktemp("c_rep"), shards, stage_a_checkpoint_only, "replicate")


def run_cli(args: list[str], nproc: int = 1, launcher: str = "torchrun", env: dict | None = None,
            timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m clsd_ds ARGS`` (the installed package) under a launcher (torchrun / deepspeed / mpirun /
    none), from the repository root."""
    full_env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", PYTHONUNBUFFERED="1")
    full_env.update(env or {})
    bindir = Path(sys.executable).parent
    if launcher == "torchrun":
        cmd = [str(bindir / "torchrun"), "--nproc_per_node", str(nproc), "--master_port", str(_port()), "-m",
               "clsd_ds", *args]
    elif launcher == "deepspeed":
        cmd = [str(bindir / "deepspeed"), "--num_gpus", str(nproc), "--master_port", str(_port()), "--module",
               "clsd_ds", *args]
    elif launcher == "mpirun":
        cmd = [str(bindir / "mpirun"), "-n", str(nproc), sys.executable, "-m", "clsd_ds", *args]
    else:
        cmd = [sys.executable, "-m", "clsd_ds", *args]
    proc = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-8000:]}")
    return proc


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@torch.no_grad()
def greedy(lm, ids: list[int], n: int) -> list[int]:
    """Greedy decoding by definition: each token is the argmax of a full forward over the text so far. (HF's
    ``generate`` picked another token at 130 tokens here, cached or not, where the forward's top two differ by
    3e-3 in float64: not used as the reference.)"""
    text = list(ids)
    for _ in range(n):
        text.append(int(lm(torch.tensor([text])).logits[0, -1].argmax()))
    return text[len(ids):]


def tiny_verifier() -> Verifier:
    return Verifier.load(VerifierConfig(random_init=TINY), seed=3)


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(0)
