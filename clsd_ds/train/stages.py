"""What a training stage is, and the registry of them: the one table that ``RunConfig.stage``, the ``train``
command's ``--stage`` choices and help, and ``run.build_task`` read.

A stage is a name, a one-line summary, the config sections it reads besides the common ones (``verifier``,
``data``, ``optim``, ``train``, ``log``), whether it trains a drafter (then τ during training applies), and a
factory ``build(cfg, verifier) -> Task``. A *task* (the ``Task`` protocol) is everything the training loop
calls: the trainable module, the data check, device placement, the loss, FLOPs per token, the export and, for
drafters, the speculative decoder that measures τ. A task that brings its own batches (the shadow trainer's
``batch_source``, from Redis) reads no shards, so the loop calls no ``check_data`` for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch

from ..ar_drafter import ar_graft
from ..data.format import Manifest
from ..dit import CausalDiT
from ..graft import graft, load_drafter
from ..verifier import Verifier
from .distributed import DistInfo
from .lm import LMTask
from .stage_a import StageATask
from .stage_ar import ARTask
from .stage_c import StageCTask


class Task(Protocol):
    """What a training stage provides to the loop."""

    module: torch.nn.Module

    def check_data(self, manifest: Manifest, where: str) -> None:
        """Raise ConfigError (naming ``where``) if these shards cannot train this task."""

    def setup(self, dist_info: DistInfo, dtype: torch.dtype, manifest: Manifest) -> None:
        """Place what lives outside the engine (a frozen verifier, an embedding matrix) on the device."""

    def loss(self, model, batch: dict, generator: torch.Generator, step: int) -> tuple[torch.Tensor, dict]:
        """(loss to backpropagate, metrics as {name: (sum, count)})."""

    def flops_per_token(self) -> float:
        """Training FLOPs per block token (for MFU)."""

    def export(self, state_dict: dict, out_dir: Path) -> None:
        """Write the trained module to ``out_dir`` (rank 0, full state dict)."""

    def decoder(self, engine, device: torch.device, cfg):
        """The speculative decoder of the drafter being trained (for τ), or None for a task that trains none."""


@dataclass(frozen=True)
class Stage:
    name: str
    summary: str
    sections: tuple[str, ...]  # RunConfig sections read besides verifier, data, optim, train, log
    trains_drafter: bool
    build: Callable[..., Task]  # (RunConfig, Verifier) -> Task


def initial_dit(verifier: Verifier, cfg) -> CausalDiT:
    """The DiT a run starts from: grafted fresh, or with the weights (and architecture) of ``cfg.init_from``:
    an exported DiT, or a run directory's export, else the newest complete checkpoint of that run."""
    if cfg.init_from is None:
        return graft(verifier, cfg.dit)
    return load_drafter(cfg.init_from, verifier, cfg.dit.checkpointing, what="init_from")


def _stage_a(cfg, verifier: Verifier) -> Task:
    return StageATask(initial_dit(verifier, cfg), verifier, cfg.flow)


def _stage_c(cfg, verifier: Verifier) -> Task:
    return StageCTask(initial_dit(verifier, cfg), verifier, cfg.flow, cfg.stage_c)


def _ar(cfg, verifier: Verifier) -> Task:
    return ARTask(ar_graft(verifier, cfg.ar), verifier)


def _lm(cfg, verifier: Verifier) -> Task:
    return LMTask(verifier.lm)


def _shadow(cfg, verifier: Verifier) -> Task:
    from ..shadow.trainer import ShadowTask

    return ShadowTask(initial_dit(verifier, cfg), verifier, cfg.policy, cfg.shadow)


STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage("a", "Stage A: rectified flow of the DiT grafted from the verifier", ("dit", "flow", "init_from"), True,
          _stage_a),
    Stage("c", "Stage C: the DiT through the frozen verifier (CE + annealed beta MSE), usually init_from a Stage A "
          "run", ("dit", "flow", "stage_c", "init_from"), True, _stage_c),
    Stage("ar", "the autoregressive (EAGLE-style) baseline drafter, on the same shards", ("ar",), True, _ar),
    Stage("lm", "next-token pretraining of a small random-init verifier (the embedded default's fixture)", (), False,
          _lm),
    Stage("shadow", "the shadow loop's trainer: GRPO on the primary's verified rollouts, read from Redis, "
          "init_from a trained DiT", ("init_from", "policy", "shadow"), False, _shadow),
]}


def stage_help() -> str:
    """One line per stage, for the CLI's help and error messages."""
    return "\n".join(f"  {s.name:4s} {s.summary}" for s in STAGES.values())
