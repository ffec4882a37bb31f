"""The ``train`` entry point: one config file describes a run; ``stage`` picks what is trained.

    stage a   Stage A rectified flow of the DiT grafted from the verifier
    stage c   Stage C alignment of the DiT through the frozen verifier (usually ``init_from`` a Stage A run)
    stage ar  the autoregressive (EAGLE-style) baseline drafter, on the same shards
    stage lm  next-token pretraining of a small random-init verifier (the embedded default's fixture)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from ..ar_drafter import ARDrafterConfig, ar_graft
from ..config import ConfigError, to_dict
from ..data.reader import DataConfig
from ..dit import CausalDiT, DiTConfig
from ..flow import FlowConfig
from ..graft import graft, load_drafter
from ..verifier import Verifier, VerifierConfig, check_checkpoint_dir
from .distributed import init_distributed
from .lm import LMTask
from .loop import LogConfig, OptimConfig, Trainer, TrainConfig, compute_dtype, read_ds_config
from .preemption import StopRequest
from .stage_a import StageATask
from .stage_ar import ARTask
from .stage_c import StageCConfig, StageCTask


@dataclass
class RunConfig:
    run_dir: str = "runs/stage_a"
    stage: Literal["a", "c", "ar", "lm"] = "a"
    seed: int = 0
    init_from: str | None = None  # the DiT's start: an export directory, or a run directory (export or checkpoint)
    verifier: VerifierConfig = field(default_factory=VerifierConfig)
    dit: DiTConfig = field(default_factory=DiTConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    stage_c: StageCConfig = field(default_factory=StageCConfig)
    ar: ARDrafterConfig = field(default_factory=ARDrafterConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def validate(self) -> None:
        if self.stage == "lm" and self.verifier.random_init is None:
            raise ConfigError("stage 'lm' pretrains a new verifier: set 'verifier.random_init' (its architecture)")


def initial_dit(verifier: Verifier, cfg: RunConfig) -> CausalDiT:
    """The DiT a run starts from: grafted fresh, or with the weights (and architecture) of ``cfg.init_from``:
    an exported DiT, or a run directory's export, else the newest complete checkpoint of that run."""
    if cfg.init_from is None:
        return graft(verifier, cfg.dit)
    return load_drafter(cfg.init_from, verifier, cfg.dit.checkpointing, what="init_from")


def build_task(cfg: RunConfig, dtype, device):
    """The stage's task; every rank builds the same initial weights (the new layers are seeded)."""
    torch.manual_seed(cfg.seed)
    verifier = Verifier.load(cfg.verifier, dtype=dtype, seed=cfg.seed, device=device)
    if cfg.stage == "lm":
        return LMTask(verifier.lm)
    if cfg.stage == "ar":
        return ARTask(ar_graft(verifier, cfg.ar), verifier)
    if cfg.stage == "c":
        return StageCTask(initial_dit(verifier, cfg), verifier, cfg.flow, cfg.stage_c)
    return StageATask(initial_dit(verifier, cfg), verifier, cfg.flow)


def run(cfg: RunConfig) -> dict:
    """Train ``cfg`` to ``train.steps`` (resuming from ``run_dir`` if it holds checkpoints); rank 0 gets a summary."""
    ds_config = read_ds_config(cfg.train.ds_config)
    if cfg.verifier.path is not None:
        check_checkpoint_dir(cfg.verifier.path)  # fail before starting the process group
    if cfg.stage == "c" and cfg.stage_c.placement == "zero3" and \
            ds_config.get("zero_optimization", {}).get("stage", 0) != 3:
        raise ConfigError(f"stage_c.placement=zero3 partitions the verifier with ZeRO-3, but {cfg.train.ds_config} "
                          f"is not a ZeRO stage 3 config")
    stop = StopRequest()  # from here on a stop signal waits for the first step boundary instead of killing us
    dist_info = init_distributed()
    dtype = compute_dtype(ds_config)
    task = build_task(cfg, dtype, dist_info.device)
    trainer = Trainer(task, cfg.run_dir, cfg.seed, cfg.data, cfg.optim, cfg.train, cfg.log, dist_info, to_dict(cfg),
                      stop)
    try:
        return trainer.run()
    finally:
        stop.close()
