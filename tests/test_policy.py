"""The drafter as a stochastic policy (shadow/policy.py) on a real grafted tiny DiT: a block's log-probability is
the density of its recorded steps and draws (checked with torch.distributions), and the GRPO loss moves it the way
the advantage says."""

import math

import pytest
import torch
from conftest import tiny_verifier
from torch.distributions import Categorical, Normal

from clsd_ds.dit import DiTConfig
from clsd_ds.flow import FlowConfig, Readout, pin_anchor, towards
from clsd_ds.graft import graft
from clsd_ds.shadow.policy import Block, PolicyConfig, grpo_loss, group_advantages, log_prob, sample
from clsd_ds.shadow.trajectory import decode, encode

K = 6


@pytest.fixture(scope="module")
def setup():
    verifier = tiny_verifier()
    dit = graft(verifier, DiTConfig(num_layers=2, block_len=K))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # leave the zero init: every output would be 0 and every logit equal
        for name, p in dit.named_parameters():
            if "adaLN" in name or name.startswith(("final.linear", "pos_emb")):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    lm = verifier.lm
    embedding = lm.get_input_embeddings().weight.detach()
    readout = Readout(lm.lm_head, embedding, dit.cfg.embed_scale)
    cond = torch.randn(3, embedding.shape[1], generator=g)
    return dit, readout, cond, embedding


def _model(dit, cond):
    return lambda x, t: dit(x, t, cond)


def _independent_logp(dit, cond, block, flow, cfg, anchor, readout, scored=None):
    """The density from first principles: each step's mean by hand, Normal and Categorical from torch; ``scored``
    (a list): only each row's draws at positions below it."""
    steps = block.states.shape[0] - 1
    dt, total = 1.0 / steps, torch.zeros(block.states.shape[1])
    gaussian = steps if flow.objective == "velocity" else steps - 1
    drafted = slice(1, None) if anchor is not None else slice(None)
    for i in range(steps):
        x, t = block.states[i], torch.full((block.states.shape[1],), i * dt)
        out = dit(pin_anchor(x, anchor), t, cond)
        if flow.objective == "velocity":
            mu = x + dt * out
        else:
            logits = readout.head(out)
            mu = x + dt * towards(readout.clean_estimate(logits), x, t)
        if i < gaussian:
            normal = Normal(mu[:, drafted], cfg.sigma * math.sqrt(dt))
            total += normal.log_prob(block.states[i + 1][:, drafted]).flatten(1).sum(1)
    if flow.objective == "tokens":
        for b in range(len(total)):
            first = 1 if anchor is not None else 0
            last = block.tokens.shape[1] if scored is None else scored[b]
            if last > first:
                draws = Categorical(logits=logits[b, first:last] / cfg.temperature)
                total[b] += draws.log_prob(block.tokens[b, first:last]).sum()
    return total


@pytest.mark.parametrize("objective,steps,anchored", [("tokens", 3, True), ("tokens", 1, True),
                                                      ("velocity", 2, False)])
def test_log_prob_is_the_density_of_the_recorded_steps(setup, objective, steps, anchored):
    dit, readout, cond, embedding = setup
    flow, cfg = FlowConfig(objective=objective, anchor=anchored), PolicyConfig(sigma=0.7, temperature=0.8)
    g = torch.Generator().manual_seed(2)
    anchor = embedding[torch.tensor([3, 4, 5])] / dit.cfg.embed_scale if anchored else None
    d = embedding.shape[1]

    def nearest(x):
        return torch.cdist(x.flatten(0, 1), embedding / dit.cfg.embed_scale).argmin(-1).view(x.shape[:2])

    with torch.no_grad():
        block = sample(_model(dit, cond), torch.randn(3, K, d, generator=g), flow, steps, cfg, anchor, readout, g,
                       nearest)
        independent = _independent_logp(dit, cond, block, flow, cfg, anchor, readout)
    recomputed = log_prob(_model(dit, cond), block, flow, cfg, anchor, readout)
    torch.testing.assert_close(block.logp, independent, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(recomputed.detach(), independent, rtol=1e-4, atol=1e-3)
    assert recomputed.requires_grad
    torch.testing.assert_close(block.logp, block.token_logp.sum(1) + _independent_logp(
        dit, cond, block, flow, cfg, anchor, readout, scored=[0, 0, 0]), rtol=1e-4, atol=1e-3)  # draws + steps
    scored = [1, 3, K]  # credit: the first s positions' draws (and every step)
    with torch.no_grad():
        independent = _independent_logp(dit, cond, block, flow, cfg, anchor, readout, scored)
    part = log_prob(_model(dit, cond), block, flow, cfg, anchor, readout, torch.tensor(scored))
    torch.testing.assert_close(part.detach(), independent, rtol=1e-4, atol=1e-3)
    if objective == "tokens":  # fewer draws scored: a larger probability
        assert part[0] > recomputed[0] and torch.allclose(part[2], recomputed[2])
    if anchored:  # the anchor is held at every step
        assert all(torch.equal(s[:, 0], anchor) for s in block.states)
    if objective == "velocity":
        assert torch.equal(block.tokens, nearest(block.states[-1]))


def test_the_gaussian_steps_have_the_stated_spread(setup):
    """x_{i+1} − μ_i over many draws has standard deviation σ·sqrt(Δ)."""
    dit, readout, cond, embedding = setup
    flow, cfg = FlowConfig(objective="velocity"), PolicyConfig(sigma=0.5)
    g, steps = torch.Generator().manual_seed(4), 2
    x0 = torch.randn(3, K, embedding.shape[1], generator=g)
    with torch.no_grad():
        block = sample(_model(dit, cond), x0, flow, steps, cfg, generator=g, nearest=lambda x: x[..., 0].long())
        mu0 = x0 + 0.5 * dit(x0, torch.zeros(3), cond)
    spread = (block.states[1] - mu0).std().item()
    assert spread == pytest.approx(0.5 * math.sqrt(0.5), rel=0.05)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_an_advantage_moves_the_log_probability_its_way(setup, sign):
    dit, readout, cond, embedding = setup
    flow, cfg = FlowConfig(objective="tokens", anchor=True), PolicyConfig(sigma=0.3, kl=0.0)
    anchor = embedding[torch.tensor([3, 4, 5])] / dit.cfg.embed_scale
    g = torch.Generator().manual_seed(5)
    params = {n: p.detach().clone() for n, p in dit.named_parameters()}
    with torch.no_grad():
        block = sample(_model(dit, cond), torch.randn(3, K, embedding.shape[1], generator=g), flow, 2, cfg, anchor,
                       readout, g)
    before = log_prob(_model(dit, cond), block, flow, cfg, anchor, readout)
    loss, stats = grpo_loss(before, block.logp, torch.full((3,), sign), block.logp, cfg)
    assert stats["ratio"] == pytest.approx(1.0, abs=1e-4)
    opt = torch.optim.SGD(dit.parameters(), lr=1e-3)
    opt.zero_grad()
    loss.backward()
    opt.step()
    after = log_prob(_model(dit, cond), block, flow, cfg, anchor, readout).detach()
    assert ((after - before.detach()) * sign > 0).all(), (before, after)
    with torch.no_grad():  # put the weights back for the other tests
        for n, p in dit.named_parameters():
            p.copy_(params[n])


def test_advantages_clipping_and_the_kl_term():
    assert torch.equal(group_advantages(torch.tensor([1.0, 1.0, 1.0])), torch.zeros(3))
    torch.testing.assert_close(group_advantages(torch.tensor([1.0, 0.0, 0.0, 1.0])),
                               torch.tensor([1.0, -1.0, -1.0, 1.0]), atol=1e-5, rtol=0)
    cfg = PolicyConfig(clip=0.2, kl=0.5)
    old = torch.zeros(2)
    logp = torch.tensor([1.0, -1.0], requires_grad=True)  # ratios e and 1/e: both outside 1 ± 0.2
    loss, stats = grpo_loss(logp, old, torch.tensor([1.0, -1.0]), logp.detach(), cfg)
    loss.backward()
    assert stats["clipped"] == 1.0 and stats["kl"] == 0.0
    assert torch.equal(logp.grad, torch.zeros(2))  # clipped on the side the advantage pushes: no gradient
    logp = torch.tensor([0.0], requires_grad=True)
    loss, stats = grpo_loss(logp, torch.zeros(1), torch.zeros(1), torch.tensor([1.0]), cfg)
    assert stats["kl"] == pytest.approx(math.e - 2)  # exp(q) - q - 1 at q = 1
    with pytest.raises(ValueError, match="deterministic"):
        sample(lambda x, t: x, torch.zeros(1, 2, 3), FlowConfig(), 1, PolicyConfig(sigma=0.0))


THRESHOLD = 0.002  # the fixture's random verifier keeps all 4 tokens of some blocks, 1 or 2 of others


def test_the_trainer_recomputes_every_block_of_a_trajectory_in_one_batch(shadow_files, verifier_dir):
    """The trainer's batched recomputation (all of a trajectory's prefixes in one verifier pass, all blocks in one DiT
    pass) gives, per block, the log-probability the decoder drafted it with, and what one prefix pass and one DiT
    pass per block give."""
    from types import SimpleNamespace

    from clsd_ds.graft import load_drafter
    from clsd_ds.infer.decoder import DecodeConfig, SpeculativeDecoder
    from clsd_ds.shadow.trainer import ShadowConfig, ShadowTask
    from clsd_ds.verifier import Verifier, VerifierConfig
    from clsd_ds.verifier_state import read_prefixes

    verifier = Verifier.load(VerifierConfig(path=str(verifier_dir)))
    dit = load_drafter(str(shadow_files / "drafter"), verifier)
    with torch.no_grad():  # the fixture's zero init would make every logit equal
        g = torch.Generator().manual_seed(2)
        for name, p in dit.named_parameters():
            if "adaLN" in name or name.startswith("final.linear"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    cfg = PolicyConfig(temperature=1.3, credit="decided")
    decoder = SpeculativeDecoder(verifier.lm, dit.eval(), DecodeConfig(num_candidates=1, acceptance="guillotine",
                                 threshold=THRESHOLD, max_new_tokens=14, block_len=4), policy=cfg)
    prompt, rollouts = [1, 17, 40, 5, 88, 9], []
    for seed in (0, 1, 2):
        decoder.generator.manual_seed(seed)
        decoder.trace = []
        out, _ = decoder.generate(prompt)
        rollouts.append({"completion": out, "reward": float(seed == 1),
                         "cycles": [{**c, "states": encode(c["states"])} for c in decoder.trace]})
    traj = {"prompt": prompt, "rollouts": rollouts}
    task = ShadowTask(dit, verifier, cfg, ShadowConfig())
    task.setup(SimpleNamespace(device=torch.device("cpu")), torch.float32, None)
    new, old, ref, owner = task._block_logps(dit, traj, torch.device("cpu"))
    assert new.requires_grad
    new = new.detach()
    cycles = [(j, c) for j, r in enumerate(rollouts) for c in r["cycles"]]
    assert len(cycles) > len(rollouts) and len({c["length"] for _, c in cycles}) > 1  # several prefixes batched
    assert owner == [j for j, _ in cycles]
    assert all(c["scored"] == min(c["accepted"] + 1, 4) for _, c in cycles)  # credit: decided
    assert len({c["scored"] for _, c in cycles}) > 1
    assert torch.allclose(new, old, atol=1e-4) and torch.allclose(ref, old, atol=1e-4)
    lm, readout = verifier.lm, task.readout()
    for b, (j, c) in enumerate(cycles):  # one block at a time
        text = torch.tensor([prompt + rollouts[j]["completion"]])[:, :c["length"]]
        cond, prefix = read_prefixes(lm, text, torch.tensor([c["length"]]), task.embedding)
        anchor = task.embedding[lm.lm_head(cond).argmax(-1)] / dit.cfg.embed_scale
        block = Block(torch.stack([torch.as_tensor(decode(c["states"]))], 1), torch.tensor([c["tokens"]]),
                      torch.tensor([c["logp"]]))
        one = log_prob(lambda x, t: dit(x, t, cond, prefix), block, dit.flow, cfg, anchor, readout,
                       torch.tensor([c["scored"]]))
        assert float(one.detach()) == pytest.approx(float(new[b]), abs=1e-4)
    block_credit = SpeculativeDecoder(verifier.lm, dit.eval(), decoder.cfg, policy=PolicyConfig(temperature=1.3,
                                                                                                credit="block"))
    block_credit.generator.manual_seed(0)
    block_credit.trace = []
    block_credit.generate(prompt)
    assert [c["tokens"] for c in block_credit.trace] == [c["tokens"] for c in rollouts[0]["cycles"]]  # same draws
    assert all(c["scored"] == 4 for c in block_credit.trace)
    assert all(c["logp"] <= d["logp"] + 1e-6 for c, d in zip(block_credit.trace, rollouts[0]["cycles"]))
