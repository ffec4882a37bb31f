"""Rectified flow in the verifier's (rescaled) embedding space.

With x0 ~ N(0, I) noise and x1 the target embeddings divided by ``embed_scale`` (so both have unit RMS):

    x_t = (1 - t) * x0 + t * x1,        v* = x1 - x0,        L = mean ||v_theta(x_t, t, C) - v*||^2

Sampling integrates dx/dt = v_theta from t = 0 (noise) to t = 1 (data) with ``steps`` Euler steps.

Two options change what the DiT is asked, both recorded with the drafter (its ``flow``) so decoding follows them:

``anchor`` (after DFlash): block position 0 holds the anchor, the token the verifier has already chosen (in
training the block's first token), clean at every t (x_t[:, 0] = x1[:, 0]: inpainting); positions 1.. are drafted,
and only they are trained. At decoding the anchor is the verifier's own next token, so every candidate's first
token is accepted by construction and the drafter spends its positions on what comes after it.

``objective: tokens`` (after CDCD's score interpolation): the DiT's output o at (x_t, t) is read through the
verifier's frozen LM head as logits l = head(o) over the vocabulary, trained with cross-entropy to the block's
tokens; the clean-block estimate is x̂1 = softmax(l) · E / embed_scale and the sampler's velocity is the straight
path's through x_t towards it, v = (x̂1 - x_t) / (1 - t). The drafted tokens are argmax l of the last step, so the
reading is the drafter's own distribution, not a nearest embedding. (One Euler step from t = 0 gives x̂1 at once.)

``train_inputs: sampler`` (tokens objective) trains the DiT on the inputs its own Euler sampler gives it instead of
interpolations of the true block: x^(0) = x0, and for every step i (t_i = i / S) the DiT's logits at
(x^(i), t_i) are trained with cross-entropy to the block while x^(i+1) = x^(i) + (x̂1^(i) - x^(i)) / (S - i) is
built from its own estimate (detached). A later step thus learns to correct the drafts of the earlier one, as it
must at decoding (``interpolation``, the seed's, shows it the true block under less noise instead).

``source: mask`` replaces the noise by one fixed point, x0 = 1 (the all-ones vector: unit RMS, as the noise and the
rescaled embeddings, the same at every position): with one Euler step from t = 0 the drafted positions' input is
DFlash's "mask" token (positions told apart by the DiT's position embeddings and rotary), and the draft is
deterministic (N candidates then come from ``decode.candidates: lattice``). Not x0 = 0: with the zero-init
position embeddings and output layer, RMSNorm(0) = 0 gives the output weights no gradient from the drafted
positions, nor anything before them, so such a DiT never leaves its initialisation (measured: τ 2.00 flat).

``reveal`` ρ > 0 (with ``anchor``; after block diffusion's clean context and mask-predict's re-masking) trains a
fraction ρ of the blocks with a longer clean lead: r ~ U{1, ..., K - 1} positions held clean (the anchor and the
block's next r - 1 true tokens), positions r.. drafted and trained (the rest keep r = 1, the anchor alone). The DiT is
causal, so a drafted position then sees the true tokens before it, as an AR drafter's does: decoding can draft a
block again after a token it has fixed (``decode.redraft``: a branch of the lattice, conditioned on its branch).

``position_decay`` γ > 0 weights drafted position k (k = 1, 2, ... after the clean lead) by exp(-(k - 1) / γ),
normalised to mean 1 over the drafted positions, as DFlash does: early positions decide acceptance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, NamedTuple

import torch

from .config import ConfigError


@dataclass
class FlowConfig:
    t_sampling: Literal["uniform", "logit_normal", "euler_grid"] = "logit_normal"  # euler_grid: the sampler's t
    logit_mean: float = 0.0  # logit-normal: t = sigmoid(N(logit_mean, logit_std^2)), as in SD3
    logit_std: float = 1.0
    euler_steps: int = 2  # sampler steps at inference and in Stage C
    t_bins: int = 4  # loss is also reported per t-bin [i/t_bins, (i+1)/t_bins)
    anchor: bool = False  # block position 0 is the anchor token, clean at every t; positions 1.. are drafted
    objective: Literal["velocity", "tokens"] = "velocity"  # tokens: logits through the verifier's head, CE
    position_decay: float = 0.0  # gamma > 0: drafted position k weighted exp(-(k-1)/gamma); 0: all equal
    source: Literal["noise", "mask"] = "noise"  # x0 ~ N(0, I), or x0 = 1: DFlash's mask input at one step from t = 0
    # interpolation: x_t = (1 - t) x0 + t x1 of the true block; sampler: every Euler step on its own sampler's input
    train_inputs: Literal["interpolation", "sampler"] = "interpolation"
    reveal: float = 0.0  # with anchor: the fraction of blocks trained with a clean lead of r ~ U{1..K-1} positions

    def validate(self) -> None:
        if self.euler_steps < 1:
            raise ConfigError(f"field 'flow.euler_steps': expected an integer >= 1, got {self.euler_steps}")
        if self.logit_std <= 0:
            raise ConfigError(f"field 'flow.logit_std': expected a positive number, got {self.logit_std}")
        if self.t_bins < 1:
            raise ConfigError(f"field 'flow.t_bins': expected an integer >= 1, got {self.t_bins}")
        if self.position_decay < 0:
            raise ConfigError(f"field 'flow.position_decay': expected >= 0, got {self.position_decay}")
        if not 0 <= self.reveal <= 1:
            raise ConfigError(f"field 'flow.reveal': expected a fraction in [0, 1], got {self.reveal}")
        if self.reveal > 0 and not self.anchor:
            raise ConfigError("field 'flow.reveal': a clean lead extends the anchor; it needs flow.anchor: true")
        if self.train_inputs == "sampler" and self.objective != "tokens":
            raise ConfigError("field 'flow.train_inputs': 'sampler' unrolls the sampler through the DiT's clean-block "
                              "estimates, which need flow.objective: tokens")


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t x1, with t of shape [B] broadcast over the remaining dims."""
    t = t.reshape(-1, *([1] * (x1.dim() - 1))).to(x1.dtype)
    return (1 - t) * x0 + t * x1


def draw_source(cfg: FlowConfig, shape: tuple, generator: torch.Generator | None = None, device=None,
                dtype=None) -> torch.Tensor:
    """x0 of ``shape`` from the flow's source: N(0, I) noise, or the all-ones mask."""
    if cfg.source == "mask":
        return torch.ones(shape, device=device, dtype=dtype)
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


def velocity_target(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """The straight-line velocity v* = x1 - x0."""
    return x1 - x0


def sample_t(cfg: FlowConfig, n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """n training timesteps in [0, 1): uniform, sigmoid of a normal (logit-normal), or uniform over the times the
    ``euler_steps`` sampler evaluates the DiT at, {0, 1/S, ..., (S-1)/S} (``euler_grid``: training sees exactly
    the inputs decoding gives it; with one step, t = 0: pure noise in, the block out, as DFlash's mask input)."""
    if cfg.t_sampling == "uniform":
        return torch.rand(n, generator=generator, device=device)
    if cfg.t_sampling == "euler_grid":
        return torch.randint(0, cfg.euler_steps, (n,), generator=generator, device=device) / cfg.euler_steps
    z = torch.randn(n, generator=generator, device=device)
    return torch.sigmoid(cfg.logit_mean + cfg.logit_std * z)


def position_weights(cfg: FlowConfig, block_len: int, device=None, lead: torch.Tensor | None = None) -> torch.Tensor:
    """Loss weights per block position: 0 for the clean lead (the anchor, or ``lead`` [B] positions per block);
    exp(-(k-1)/gamma) (or 1) for drafted positions k = 1, 2, ... after it, normalised to mean 1 over them. [K], or
    [B, K] with ``lead``."""
    start = lead[:, None].float() if lead is not None else torch.tensor(float(cfg.anchor), device=device)
    drafted = torch.arange(block_len, device=device, dtype=torch.float32) - start
    w = torch.exp(-drafted.clamp(min=0) / cfg.position_decay) if cfg.position_decay > 0 else torch.ones_like(drafted)
    w = w * (drafted >= 0)
    return w * (w > 0).sum(-1, keepdim=True) / w.sum(-1, keepdim=True)


def lead_lengths(cfg: FlowConfig, batch: int, block_len: int, generator: torch.Generator | None = None,
                 device=None) -> torch.Tensor | None:
    """Clean leading positions per training block [B]: 1 (the anchor), or with probability ``reveal``
    r ~ U{1, ..., K - 1}; None without an anchor."""
    if not cfg.anchor:
        return None
    lead = torch.ones(batch, dtype=torch.long, device=device)
    if cfg.reveal > 0 and block_len > 2:
        longer = torch.rand(batch, generator=generator, device=device) < cfg.reveal
        r = torch.randint(1, block_len, (batch,), generator=generator, device=device)
        lead = torch.where(longer, r, lead)
    return lead


def pin_lead(x: torch.Tensor, clean: torch.Tensor, lead: torch.Tensor | None) -> torch.Tensor:
    """x [B, K, d] with positions k < lead[b] replaced by the clean block's ``clean`` [B, K, d] (unchanged when
    ``lead`` is None)."""
    if lead is None:
        return x
    held = torch.arange(x.shape[1], device=x.device)[None] < lead[:, None]
    return torch.where(held[..., None], clean.to(x.dtype), x)


def pin_anchor(x: torch.Tensor, anchor: torch.Tensor | None) -> torch.Tensor:
    """x [B, K, d] with position 0 replaced by the clean anchor [B, d] (unchanged without one)."""
    if anchor is None:
        return x
    return torch.cat([anchor[:, None].to(x.dtype), x[:, 1:]], dim=1)


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


def towards(x1_hat: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The straight path's velocity from x at time t [B] to the clean estimate: v = (x̂1 - x) / (1 - t)."""
    return (x1_hat - x) / (1 - t).reshape(-1, *([1] * (x.dim() - 1)))


class Readout(NamedTuple):
    """What the ``tokens`` objective reads the DiT's output with: the verifier's head and embedding matrix."""

    head: Callable[[torch.Tensor], torch.Tensor]  # DiT output [.., d] -> logits [.., V]
    embedding: torch.Tensor  # E [V, d]
    embed_scale: float

    def clean_estimate(self, logits: torch.Tensor) -> torch.Tensor:
        """x̂1 = softmax(l) · E / embed_scale."""
        return (logits.float().softmax(-1) @ self.embedding.float()) / self.embed_scale


def sample_block(model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x0: torch.Tensor, cfg: FlowConfig,
                 steps: int, anchor: torch.Tensor | None = None,
                 readout: Readout | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Euler sampling of a block from noise x0 [B, K, d] with ``model(x, t)`` (the DiT's output): (x1, the last
    step's logits or None). ``cfg.objective`` says how the output is a velocity (module docstring); ``anchor``
    [B, d], the clean anchor, is pinned at position 0 throughout."""
    logits = None

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        nonlocal logits
        out = model(pin_anchor(x, anchor), t)
        if cfg.objective == "velocity":
            return out
        logits = readout.head(out)
        return towards(readout.clean_estimate(logits).to(x.dtype), x, t)

    if cfg.objective == "tokens" and readout is None:
        raise ValueError("sample_block: the tokens objective needs the verifier's readout (head, embedding)")
    return pin_anchor(euler_sample(velocity, x0, steps), anchor), logits
