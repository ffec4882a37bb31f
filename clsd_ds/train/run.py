"""The ``train`` entry point: one config file describes a run; ``stage`` picks what is trained.

    stage a   Stage A rectified flow of the DiT grafted from the verifier
    stage lm  next-token pretraining of a small random-init verifier (the embedded default's fixture)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from ..config import ConfigError, to_dict
from ..data.reader import DataConfig
from ..dit import DiTConfig
from ..flow import FlowConfig
from ..graft import graft
from ..verifier import Verifier, VerifierConfig
from .distributed import init_distributed
from .lm import LMTask
from .loop import LogConfig, OptimConfig, Trainer, TrainConfig, compute_dtype, read_ds_config
from .stage_a import StageATask


@dataclass
class RunConfig:
    run_dir: str = "runs/stage_a"
    stage: Literal["a", "lm"] = "a"
    seed: int = 0
    verifier: VerifierConfig = field(default_factory=VerifierConfig)
    dit: DiTConfig = field(default_factory=DiTConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def validate(self) -> None:
        if self.stage == "lm" and self.verifier.random_init is None:
            raise ConfigError("stage 'lm' pretrains a new verifier: set 'verifier.random_init' (its architecture)")


def build_task(cfg: RunConfig, dtype, device):
    """The stage's task; every rank builds the same initial weights (the new layers are seeded)."""
    torch.manual_seed(cfg.seed)
    verifier = Verifier.load(cfg.verifier, dtype=dtype, seed=cfg.seed, device=device)
    if cfg.stage == "lm":
        return LMTask(verifier.lm)
    return StageATask(graft(verifier, cfg.dit), verifier, cfg.flow)


def run(cfg: RunConfig) -> dict:
    """Train ``cfg`` to ``train.steps`` (resuming from ``run_dir`` if it holds checkpoints); rank 0 gets a summary."""
    dist_info = init_distributed()
    dtype = compute_dtype(read_ds_config(cfg.train.ds_config))
    task = build_task(cfg, dtype, dist_info.device)
    trainer = Trainer(task, cfg.run_dir, cfg.seed, cfg.data, cfg.optim, cfg.train, cfg.log, dist_info, to_dict(cfg))
    return trainer.run()
