"""Rectified flow: path, target, timestep sampling and the Euler sampler against the oracle velocity."""

import math

import pytest
import torch

from clsd_ds.config import ConfigError
from clsd_ds.flow import (FlowConfig, Readout, euler_sample, interpolate, lead_lengths, loss_by_t_bin, pin_anchor,
                          pin_lead, position_weights, sample_block, sample_t, draw_source, velocity_target)


def _pair(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, 8, 16, generator=g), torch.randn(3, 8, 16, generator=g)


def test_path_endpoints_and_target():
    x0, x1 = _pair()
    assert torch.equal(interpolate(x0, x1, torch.zeros(3)), x0)
    assert torch.equal(interpolate(x0, x1, torch.ones(3)), x1)
    t = torch.tensor([0.25, 0.5, 0.9])
    # d/dt of the path is the target velocity
    eps = 1e-3
    fd = (interpolate(x0, x1, t + eps) - interpolate(x0, x1, t - eps)) / (2 * eps)
    torch.testing.assert_close(fd, velocity_target(x0, x1), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("steps", [1, 2, 8])
def test_euler_with_oracle_velocity_reaches_the_data(steps):
    x0, x1 = _pair()
    seen = []

    def oracle(x, t):  # the straight-line velocity from the current point: (x1 - x_t) / (1 - t)
        seen.append(t[0].item())
        return (x1 - x) / (1 - t).view(-1, 1, 1)

    out = euler_sample(oracle, x0, steps)
    torch.testing.assert_close(out, x1, rtol=1e-5, atol=1e-5)
    assert seen == pytest.approx([i / steps for i in range(steps)])
    torch.testing.assert_close(oracle(interpolate(x0, x1, torch.full((3,), 0.3)), torch.full((3,), 0.3)),
                               velocity_target(x0, x1))


def test_wrong_velocity_misses_and_has_positive_loss():
    x0, x1 = _pair()
    out = euler_sample(lambda x, t: 0.5 * (x1 - x0), x0, 2)
    assert not torch.allclose(out, x1)
    assert not torch.allclose(0.5 * (x1 - x0), velocity_target(x0, x1))


@pytest.mark.parametrize("kind", ["uniform", "logit_normal"])
def test_timestep_sampling(kind):
    cfg = FlowConfig(t_sampling=kind)
    t = sample_t(cfg, 20000, torch.Generator().manual_seed(0))
    assert t.shape == (20000,) and t.min() >= 0 and t.max() < 1
    assert abs(t.mean().item() - 0.5) < 0.01
    if kind == "logit_normal":  # concentrated in the middle: fewer samples near the ends than uniform
        assert ((t < 0.1) | (t > 0.9)).float().mean() < 0.15
    else:
        assert abs(((t < 0.1) | (t > 0.9)).float().mean().item() - 0.2) < 0.02


def test_loss_by_t_bin():
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0])
    sums, counts = loss_by_t_bin(losses, torch.tensor([0.05, 0.3, 0.35, 0.99]), bins=4)
    assert sums.tolist() == [1.0, 5.0, 0.0, 4.0]
    assert counts.tolist() == [1.0, 2.0, 0.0, 1.0]


def test_source_is_standard_noise_or_the_all_ones_mask():
    noise = draw_source(FlowConfig(), (4, 8), torch.Generator().manual_seed(1))
    torch.testing.assert_close(noise, torch.randn(4, 8, generator=torch.Generator().manual_seed(1)))
    assert torch.equal(draw_source(FlowConfig(source="mask"), (4, 8), torch.Generator().manual_seed(1)),
                       torch.ones(4, 8))


def test_position_weights():
    torch.testing.assert_close(position_weights(FlowConfig(), 4), torch.ones(4))
    w = position_weights(FlowConfig(anchor=True, position_decay=2.0), 5)
    assert w[0] == 0 and w[1:].mean().item() == pytest.approx(1.0)
    torch.testing.assert_close(w[2:] / w[1:-1], torch.full((3,), math.exp(-1 / 2)))  # exp(-(k-1)/gamma)


def test_reveal_draws_clean_leads_and_weights_the_positions_after_them():
    """flow.reveal ρ: a block's clean lead is the anchor alone, or with probability ρ r ~ U{1..K-1} positions;
    the lead is pinned to the clean block and weighs 0, the decay restarts after it, each row's drafted positions
    weigh 1 on average. Without reveal the generator is not drawn from (runs before it reproduce)."""
    g = torch.Generator().manual_seed(0)
    assert lead_lengths(FlowConfig(), 5, 8, g) is None
    state = g.get_state()
    assert lead_lengths(FlowConfig(anchor=True), 5, 8, g).tolist() == [1] * 5 and torch.equal(g.get_state(), state)
    always = lead_lengths(FlowConfig(anchor=True, reveal=1.0), 4000, 8, g)
    assert set(always.tolist()) == set(range(1, 8))
    half = lead_lengths(FlowConfig(anchor=True, reveal=0.5), 4000, 8, g)
    assert (half == 1).float().mean().item() == pytest.approx(0.5 + 0.5 / 7, abs=0.03)
    lead = torch.tensor([1, 3, 4])
    w = position_weights(FlowConfig(anchor=True, position_decay=2.0), 5, lead=lead)
    for row, r in zip(w, lead.tolist()):
        assert (row[:r] == 0).all() and row[r:].mean().item() == pytest.approx(1.0)
        if r < 4:
            torch.testing.assert_close(row[r + 1:] / row[r:-1], torch.full((4 - r,), math.exp(-1 / 2)))
    torch.testing.assert_close(w[0], position_weights(FlowConfig(anchor=True, position_decay=2.0), 5))
    x, clean = torch.zeros(3, 5, 2), torch.randn(3, 5, 2)
    pinned = pin_lead(x, clean, lead)
    for b, r in enumerate(lead.tolist()):
        assert torch.equal(pinned[b, :r], clean[b, :r]) and (pinned[b, r:] == 0).all()
    assert torch.equal(pin_lead(x, clean, None), x)
    with pytest.raises(ConfigError, match="flow.reveal.*needs flow.anchor"):
        FlowConfig(reveal=0.5).validate()
    with pytest.raises(ConfigError, match="flow.reveal.*fraction"):
        FlowConfig(anchor=True, reveal=1.5).validate()


def test_anchor_is_pinned_and_tokens_objective_reads_the_logits():
    """With the anchor pinned, the DiT sees the anchor's clean embedding at position 0 at every step, and the
    sample keeps it; the tokens objective's velocity (x̂1 - x_t)/(1 - t) with x̂1 = softmax(l)·E/scale lands on
    the embeddings of the tokens the logits choose, and those logits are returned."""
    V, d, K, scale = 11, 6, 5, 2.0
    g = torch.Generator().manual_seed(0)
    embedding = torch.randn(V, d, generator=g)
    target = torch.randint(0, V, (3, K), generator=g)
    anchor = embedding[target[:, 0]] / scale
    seen = []

    def head(out):  # a sharp head: all mass on the target tokens, whatever the output
        return 50.0 * torch.nn.functional.one_hot(target, V).float() + 0 * out.sum()

    def model(x, t):
        seen.append(x[:, 0].clone())
        return torch.zeros_like(x)

    cfg = FlowConfig(anchor=True, objective="tokens")
    x0 = torch.randn(3, K, d, generator=g)
    x, logits = sample_block(model, x0, cfg, 3, anchor, Readout(head, embedding, scale))
    assert all(torch.equal(s, anchor) for s in seen) and len(seen) == 3 and torch.equal(x[:, 0], anchor)
    torch.testing.assert_close(x, embedding[target] / scale, rtol=1e-4, atol=1e-4)
    assert torch.equal(logits.argmax(-1), target)
    assert torch.equal(pin_anchor(x0, None), x0)
    with pytest.raises(ValueError, match="needs the verifier's readout"):
        sample_block(model, x0, cfg, 1, anchor)


@pytest.mark.parametrize("steps", [1, 3])
def test_euler_grid_timesteps_are_the_samplers(steps):
    """t_sampling euler_grid trains at exactly the times euler_sample evaluates the model at."""
    cfg = FlowConfig(t_sampling="euler_grid", euler_steps=steps)
    t = sample_t(cfg, 600, torch.Generator().manual_seed(0))
    seen = []
    euler_sample(lambda x, tt: seen.append(tt[0].item()) or torch.zeros_like(x), torch.zeros(1, 2, 3), steps)
    assert sorted(set(t.tolist())) == pytest.approx(seen)
