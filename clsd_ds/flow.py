"""Rectified flow in the verifier's (rescaled) embedding space.

With x0 ~ N(0, I) noise and x1 the target embeddings divided by ``embed_scale`` (so both have unit RMS):

    x_t = (1 - t) * x0 + t * x1,        v* = x1 - x0,        L = mean ||v_theta(x_t, t, C) - v*||^2

Sampling integrates dx/dt = v_theta from t = 0 (noise) to t = 1 (data) with ``steps`` Euler steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch

from .config import ConfigError


@dataclass
class FlowConfig:
    t_sampling: Literal["uniform", "logit_normal"] = "logit_normal"
    logit_mean: float = 0.0  # logit-normal: t = sigmoid(N(logit_mean, logit_std^2)), as in SD3
    logit_std: float = 1.0
    euler_steps: int = 2  # sampler steps at inference and in Stage C
    t_bins: int = 4  # loss is also reported per t-bin [i/t_bins, (i+1)/t_bins)

    def validate(self) -> None:
        if self.euler_steps < 1:
            raise ConfigError(f"field 'flow.euler_steps': expected an integer >= 1, got {self.euler_steps}")
        if self.logit_std <= 0:
            raise ConfigError(f"field 'flow.logit_std': expected a positive number, got {self.logit_std}")
        if self.t_bins < 1:
            raise ConfigError(f"field 'flow.t_bins': expected an integer >= 1, got {self.t_bins}")


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t x1, with t of shape [B] broadcast over the remaining dims."""
    t = t.reshape(-1, *([1] * (x1.dim() - 1))).to(x1.dtype)
    return (1 - t) * x0 + t * x1


def velocity_target(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """The straight-line velocity v* = x1 - x0."""
    return x1 - x0


def sample_t(cfg: FlowConfig, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """n training timesteps in [0, 1): uniform, or sigmoid of a normal (logit-normal)."""
    if cfg.t_sampling == "uniform":
        return torch.rand(n, generator=generator, device=device)
    z = torch.randn(n, generator=generator, device=device)
    return torch.sigmoid(cfg.logit_mean + cfg.logit_std * z)


def per_sample_loss(v_pred: torch.Tensor, v_target: torch.Tensor) -> torch.Tensor:
    """Mean squared velocity error per sample, shape [B] (computed in fp32)."""
    return (v_pred.float() - v_target.float()).pow(2).flatten(1).mean(1)


def loss_by_t_bin(losses: torch.Tensor, t: torch.Tensor, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums and counts of per-sample losses in ``bins`` equal t-intervals (reduce across ranks, then divide)."""
    idx = (t.detach().float() * bins).long().clamp_(0, bins - 1)
    sums = torch.zeros(bins, device=losses.device).index_add_(0, idx, losses.detach().float())
    counts = torch.zeros(bins, device=losses.device).index_add_(0, idx, torch.ones_like(losses, dtype=torch.float))
    return sums, counts


def euler_sample(velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x0: torch.Tensor,
                 steps: int) -> torch.Tensor:
    """Integrate dx/dt = velocity(x, t) from t=0 to t=1 in ``steps`` equal Euler steps; t has shape [B]."""
    if steps < 1:
        raise ValueError(f"euler_sample: steps must be >= 1, got {steps}")
    x, dt = x0, 1.0 / steps
    for i in range(steps):
        t = torch.full((x0.shape[0],), i * dt, device=x0.device, dtype=torch.float32)
        x = x + dt * velocity(x, t)
    return x
