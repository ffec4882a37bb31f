"""The ``train`` entry point: one config file describes a run; ``stage`` picks what is trained (``stages.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..ar_drafter import ARDrafterConfig
from ..config import ConfigError, to_dict
from ..data.reader import DataConfig
from ..dit import DiTConfig
from ..flow import FlowConfig
from ..shadow.policy import PolicyConfig
from ..shadow.trainer import ShadowConfig
from ..verifier import Verifier, VerifierConfig, check_checkpoint_dir
from .distributed import init_distributed
from .ds_config import compute_dtype, is_zero3, read_ds_config
from .loop import LogConfig, OptimConfig, Trainer, TrainConfig
from .preemption import StopRequest
from .stage_c import StageCConfig
from .stages import STAGES, Task, stage_help


@dataclass
class RunConfig:
    run_dir: str = "runs/stage_a"
    stage: str = "a"  # a name in stages.STAGES
    seed: int = 0
    init_from: str | None = None  # the DiT's start: an export directory, or a run directory (export or checkpoint)
    verifier: VerifierConfig = field(default_factory=VerifierConfig)
    dit: DiTConfig = field(default_factory=DiTConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    stage_c: StageCConfig = field(default_factory=StageCConfig)
    ar: ARDrafterConfig = field(default_factory=ARDrafterConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)  # stage shadow: the sampler's policy and the loss
    shadow: ShadowConfig = field(default_factory=ShadowConfig)  # stage shadow: where the trajectories come from
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def validate(self) -> None:
        if self.stage not in STAGES:
            raise ConfigError(f"field 'stage': expected one of {', '.join(STAGES)}, got {self.stage!r}; the "
                              f"stages:\n{stage_help()}")
        stage = STAGES[self.stage]
        if not self.data.train and self.stage != "shadow":  # the shadow trainer reads Redis, not shards
            raise ConfigError("field 'data.train': a shard directory is required")
        if self.stage == "lm" and self.verifier.random_init is None:
            raise ConfigError("stage 'lm' pretrains a new verifier: set 'verifier.random_init' (its architecture)")
        if self.stage == "c" and (self.flow.anchor or self.flow.objective != "velocity"):
            raise ConfigError("fields 'flow.anchor' / 'flow.objective': Stage C trains the seed's velocity drafter "
                              "through the verifier; an anchored or token-objective drafter is trained in Stage A "
                              "(its CE already reads the drafts through the verifier's head)")
        if self.stage == "shadow" and self.init_from is None:
            raise ConfigError("stage 'shadow' improves a trained drafter: set 'init_from' (an exported DiT or a run "
                              "directory)")
        if not stage.trains_drafter and (self.train.tau_prompts or self.train.keep_best_tau):
            raise ConfigError(f"fields 'train.tau_prompts' / 'train.keep_best_tau': stage {self.stage!r} trains no "
                              f"drafter, so there is no τ to measure")


def build_task(cfg: RunConfig, dtype, device) -> Task:
    """The stage's task; every rank builds the same initial weights (the new layers are seeded)."""
    torch.manual_seed(cfg.seed)
    verifier = Verifier.load(cfg.verifier, dtype=dtype, seed=cfg.seed, device=device)
    return STAGES[cfg.stage].build(cfg, verifier)


def check_ds_config(cfg: RunConfig, ds_config: dict) -> None:
    """What the run config asks of its DeepSpeed config (raises ConfigError)."""
    if cfg.stage == "c" and cfg.stage_c.placement == "zero3" and not is_zero3(ds_config):
        raise ConfigError(f"stage_c.placement=zero3 partitions the verifier with ZeRO-3, but {cfg.train.ds_config} "
                          f"is not a ZeRO stage 3 config")


def run(cfg: RunConfig) -> dict:
    """Train ``cfg`` to ``train.steps`` (resuming from ``run_dir`` if it holds checkpoints); rank 0 gets a summary."""
    ds_config = read_ds_config(cfg.train.ds_config)
    if cfg.verifier.path is not None:
        check_checkpoint_dir(cfg.verifier.path)  # fail before starting the process group
    check_ds_config(cfg, ds_config)
    stop = StopRequest()  # from here on a stop signal waits for the first step boundary instead of killing us
    dist_info = init_distributed()
    task = build_task(cfg, compute_dtype(ds_config), dist_info.device)
    trainer = Trainer(task, cfg.run_dir, cfg.seed, cfg.data, cfg.optim, cfg.train, cfg.log, dist_info, to_dict(cfg),
                      stop)
    try:
        return trainer.run()
    finally:
        stop.close()
