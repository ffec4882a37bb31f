"""The drafter as a stochastic policy, and the shadow loop's RL objective (GRPO on objectively verified rollouts).

The DiT's Euler sampler (``flow.py``: S steps, t_i = i / S, Δ = 1 / S, the anchor pinned at position 0) is made
stochastic so that a drafted block has a density:

    μ_i     = x_i + Δ · v_θ(x_i, t_i)                            (v: the DiT's velocity; tokens objective: towards x̂1)
    x_{i+1} = μ_i + σ √Δ · ε_i,   ε_i ~ N(0, I)                  at the drafted positions (Gaussian steps, set σ)
    y_k     ~ Cat(softmax(l_k / T))                              tokens objective: the last step's logits l

With the tokens objective the last step's state x_S is not read (the tokens are), so its Gaussian term is left out:
the stochastic steps are i < S - 1 and the readout; with one Euler step (the recipe) the policy is the categorical
alone. With the velocity objective every step is Gaussian and the tokens are a function of x_S (the nearest
reading). σ = 0 makes the steps deterministic (their term is then left out). The block's log-probability is

    log π_θ(b) = Σ_{stochastic i} Σ_{drafted k} log N(x_{i+1,k}; μ_{i,k}, σ²Δ I)
               + Σ_{drafted k} log softmax(l_k / T)[y_k]

recomputed by running the DiT on the recorded inputs x_i (teacher-forced, not resampled).

Credit (``policy.credit``). Given the states, the K drafted tokens are independent draws, so the probability of
the states and of any subset of the tokens is the sum above restricted to that subset (the others marginalise to
one). With one candidate per cycle, the text depends only on the tokens up to the first one the verifier refused:
under ``guillotine`` (or ``sampling``) a cycle that keeps a tokens commits y_0..y_{a−1} and then the verifier's own
token, which y_a's refusal decided, and y_{a+1}.. are never read. ``credit: decided`` scores exactly those, the
first s = min(a + 1, K) positions (``scored``):

    log π_θ(b) = Σ_{stochastic i} Σ_{drafted k} log N(x_{i+1,k}; μ_{i,k}, σ²Δ I)
               + Σ_{drafted k < s} log softmax(l_k / T)[y_k]

the probability of what decided the text, so the tokens nothing read add no noise to the gradient. ``credit:
block`` scores all K (s = K); with N > 1 candidates every token takes part in choosing the candidate, so the
primary scores the whole block whatever ``credit`` says.

For one task, N rollouts
with rewards r_j (1 if the objective check passed, plus an optional shaping term) get group-relative advantages
A_j = (r_j − mean r) / (std r + 1e-6) (all 0 when every r_j is equal), and every block b of rollout j is trained with
the clipped surrogate and a KL penalty to the starting (reference) drafter, k3 estimator:

    ρ_b = exp(log π_θ(b) − log π_old(b))                         (π_old: the version that drafted it; stale is fine)
    L   = mean_b [ −min(ρ_b A_j, clip(ρ_b, 1 − ε, 1 + ε) A_j)  +  β (exp(q_b) − q_b − 1) ]
    q_b = log π_ref(b) − log π_θ(b)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch

from ..config import ConfigError
from ..flow import FlowConfig, Readout, pin_anchor, towards


@dataclass
class PolicyConfig:
    sigma: float = 0.0  # Gaussian step noise σ; 0: deterministic steps
    temperature: float = 1.0  # tokens objective: drafted tokens ~ softmax(logits / T)
    clip: float = 0.2  # ε of the clipped ratio
    kl: float = 0.02  # β of the KL penalty to the reference drafter
    credit: str = "block"  # block: all K draws; decided: the draws that decided the text (docstring; measured: no help)

    def validate(self) -> None:
        if self.sigma < 0:
            raise ConfigError(f"field 'policy.sigma': expected >= 0, got {self.sigma}")
        for name in ("temperature", "clip"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"field 'policy.{name}': expected a positive number, got {getattr(self, name)}")
        if self.kl < 0:
            raise ConfigError(f"field 'policy.kl': expected >= 0, got {self.kl}")
        if self.credit not in ("decided", "block"):
            raise ConfigError(f"field 'policy.credit': expected decided or block, got {self.credit!r}")


class Block(NamedTuple):
    """One sampled block: what recomputing its log-probability needs."""

    states: torch.Tensor  # [S + 1, B, K, d] x_0 .. x_S as sampled (anchor pinned)
    tokens: torch.Tensor  # [B, K] the drafted tokens (tokens objective: the categorical draws; position 0 the anchor's)
    logp: torch.Tensor  # [B] log π of the block under the policy that sampled it (all K positions scored)
    token_logp: torch.Tensor | None = None  # [B, K] the draws' own terms of logp (0 where nothing is drawn)


Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _step(model: Model, x: torch.Tensor, i: int, steps: int, flow: FlowConfig, anchor, readout):
    """(μ_i, logits or None) at step i from the state x_i."""
    dt = 1.0 / steps
    t = torch.full((x.shape[0],), i * dt, device=x.device, dtype=torch.float32)
    out = model(pin_anchor(x, anchor), t)
    if flow.objective == "velocity":
        return x + dt * out, None
    logits = readout.head(out)
    return x + dt * towards(readout.clean_estimate(logits).to(x.dtype), x, t), logits


def _gaussian_steps(flow: FlowConfig, steps: int, cfg: PolicyConfig) -> int:
    """How many steps carry a Gaussian term (module docstring)."""
    if cfg.sigma == 0:
        return 0
    return steps if flow.objective == "velocity" else steps - 1


def _drafted(x: torch.Tensor, anchor) -> torch.Tensor:
    return x[:, 1:] if anchor is not None else x


def _gaussian_logp(x_next, mu, var, anchor) -> torch.Tensor:
    diff = _drafted(x_next - mu, anchor).float()
    n = diff[0].numel()
    return -0.5 * (diff.pow(2).flatten(1).sum(1) / var + n * math.log(2 * math.pi * var))


def _token_logp(logits, tokens, temperature, anchor, scored=None) -> torch.Tensor:
    """[B, K] each drafted token's log softmax(l / T); 0 at the anchor and at positions >= ``scored`` [B]."""
    logp = torch.log_softmax(logits.float() / temperature, -1).gather(-1, tokens[..., None])[..., 0]
    keep = torch.ones_like(logp, dtype=torch.bool)
    if anchor is not None:
        keep[:, 0] = False
    if scored is not None:
        keep &= torch.arange(logp.shape[1], device=logp.device)[None] < scored.to(logp.device)[:, None]
    return torch.where(keep, logp, torch.zeros_like(logp))


def sample(model: Model, x0: torch.Tensor, flow: FlowConfig, steps: int, cfg: PolicyConfig,
           anchor: torch.Tensor | None = None, readout: Readout | None = None,
           generator: torch.Generator | None = None, nearest: Callable | None = None) -> Block:
    """Draw a block from x0 [B, K, d] with the stochastic sampler; ``nearest`` (velocity objective) reads tokens
    from x_S. ``anchor`` [B, d] and the anchor token (position 0 of ``tokens``) are the caller's."""
    if flow.objective == "tokens" and readout is None:
        raise ValueError("policy.sample: the tokens objective needs the verifier's readout (head, embedding)")
    if flow.objective == "velocity" and cfg.sigma == 0:
        raise ValueError("policy.sample: a velocity drafter with policy.sigma 0 is deterministic, its blocks have no "
                         "log-probability to train; set policy.sigma > 0")
    var, gauss = cfg.sigma ** 2 / steps, _gaussian_steps(flow, steps, cfg)
    x, states, logp, logits, per_token = pin_anchor(x0, anchor), [pin_anchor(x0, anchor)], 0.0, None, None
    for i in range(steps):
        mu, logits = _step(model, x, i, steps, flow, anchor, readout)
        if i < gauss:
            noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
            x = pin_anchor(mu + math.sqrt(var) * noise, anchor)
            logp = logp + _gaussian_logp(x, mu, var, anchor)
        else:
            x = pin_anchor(mu, anchor)
        states.append(x)
    if flow.objective == "tokens":
        probs = torch.softmax(logits.float() / cfg.temperature, -1)
        tokens = torch.multinomial(probs.flatten(0, 1), 1, generator=generator).view(probs.shape[:2])
        per_token = _token_logp(logits, tokens, cfg.temperature, anchor)
        logp = logp + per_token.sum(1)
    else:
        tokens = nearest(x)
    if not torch.is_tensor(logp):
        logp = torch.zeros(x0.shape[0], device=x0.device)
    if per_token is None:
        per_token = torch.zeros(tokens.shape, device=x0.device)
    return Block(torch.stack(states), tokens, logp.detach(), per_token.detach())


def log_prob(model: Model, block: Block, flow: FlowConfig, cfg: PolicyConfig, anchor: torch.Tensor | None = None,
             readout: Readout | None = None, scored: torch.Tensor | None = None) -> torch.Tensor:
    """log π_θ of recorded blocks [B], differentiable in the model's parameters (the DiT run on the recorded
    inputs); ``scored`` [B]: only each block's first ``scored`` draws count (module docstring; None: all K)."""
    steps = block.states.shape[0] - 1
    var, gauss = cfg.sigma ** 2 / steps, _gaussian_steps(flow, steps, cfg)
    logp = torch.zeros(block.states.shape[1], device=block.states.device)
    for i in range(steps):
        if i >= gauss and not (flow.objective == "tokens" and i == steps - 1):
            continue  # a deterministic step: no term, and its output is not read
        mu, logits = _step(model, block.states[i], i, steps, flow, anchor, readout)
        if i < gauss:
            logp = logp + _gaussian_logp(block.states[i + 1], mu, var, anchor)
        if flow.objective == "tokens" and i == steps - 1:
            logp = logp + _token_logp(logits, block.tokens, cfg.temperature, anchor, scored).sum(1)
    return logp


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """A_j = (r_j − mean r) / (std r + 1e-6) over one task's rollouts [N]; all 0 when every reward is equal."""
    rewards = rewards.float()
    std = rewards.std(unbiased=False)
    return (rewards - rewards.mean()) / (std + 1e-6) if std > 0 else torch.zeros_like(rewards)


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, ref_logp: torch.Tensor,
              cfg: PolicyConfig) -> tuple[torch.Tensor, dict]:
    """The clipped surrogate + β·KL(k3) to the reference, averaged over blocks [B] (module docstring)."""
    ratio = torch.exp(logp - old_logp.detach())
    surrogate = torch.minimum(ratio * advantages, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * advantages)
    q = ref_logp.detach() - logp
    kl = torch.exp(q) - q - 1
    loss = (-surrogate + cfg.kl * kl).mean()
    clipped = ((ratio - 1).abs() > cfg.clip).float().mean()
    return loss, {"ratio": float(ratio.detach().mean()), "clipped": float(clipped), "kl": float(kl.detach().mean())}
