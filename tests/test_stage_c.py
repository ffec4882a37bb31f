"""Stage C in one process: β schedule, the prefix-state path against the full pass and HF, gradient flow."""

import dataclasses

import pytest
import torch
from conftest import BLOCK, tiny_verifier

from clsd_ds.dit import DiTConfig
from clsd_ds.flow import FlowConfig
from clsd_ds.graft import graft
from clsd_ds.train.stage_c import StageCConfig, StageCModel, beta_at
from clsd_ds.verifier import nearest_tokens


def test_beta_schedule():
    lin = StageCConfig(beta_start=0.1, beta_end=0.0, beta_steps=100, beta_schedule="linear")
    cos = dataclasses.replace(lin, beta_schedule="cosine")
    assert [beta_at(lin, s) for s in (0, 50, 100, 500)] == pytest.approx([0.1, 0.05, 0.0, 0.0])
    assert [beta_at(cos, s) for s in (0, 25, 50, 100, 500)] == pytest.approx(
        [0.1, 0.1 * (1 + 2**-0.5) / 2, 0.05, 0.0, 0.0])
    up = StageCConfig(beta_start=0.0, beta_end=1.0, beta_steps=10)
    assert beta_at(up, 5) == pytest.approx(0.5)


def _model(prefix_path="state", checkpointing=0, prefix_state=False):
    verifier = tiny_verifier()
    torch.manual_seed(0)
    dit = graft(verifier, DiTConfig(num_layers=4, block_len=BLOCK, prefix_state=prefix_state))
    with torch.no_grad():  # a DiT whose drafts are not all zero
        for name, p in dit.named_parameters():
            if "adaLN" in name or name.startswith("final.linear"):
                p.normal_(0, 0.05)
    cfg = StageCConfig(prefix_path=prefix_path, verifier_checkpointing=checkpointing)
    return StageCModel(dit, verifier.lm, cfg, FlowConfig(euler_steps=2)), verifier


def _batch(lengths, P=150, seed=0):
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    prefix = torch.randint(1, 320, (B, P), generator=g)
    lengths = torch.tensor(lengths)
    prefix[torch.arange(P)[None] >= lengths[:, None]] = 0  # right padding, as the reader collates
    block = torch.randint(0, 320, (B, BLOCK), generator=g)
    x0 = torch.randn(B, BLOCK, 64, generator=g)
    return prefix, lengths, block, x0


@pytest.mark.parametrize("lengths", [[150, 97, 1], [1, 1]])  # 150 tokens = 3 DeltaNet chunks; 1 = start token only
def test_prefix_state_path_equals_full_path(lengths):
    results = []
    for path, ckpt in (("full", 0), ("state", 0), ("state", 2)):
        model, _ = _model(path, ckpt)
        prefix, lens, block, x0 = _batch(lengths)
        loss, ce, mse, vacc, nacc = model(prefix, lens, block, None, x0, beta=0.1)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.dit.named_parameters() if p.grad is not None}
        results.append((loss.detach(), ce, mse, grads))
    (l0, ce0, mse0, g0) = results[0]
    assert set(g0) == {n for n, _ in model.dit.named_parameters()}
    for loss, ce, mse, grads in results[1:]:
        torch.testing.assert_close(ce, ce0, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(mse, mse0)
        for name in g0:
            torch.testing.assert_close(grads[name], g0[name], rtol=1e-4, atol=1e-6, msg=name)


def test_logits_equal_the_hf_forward_of_each_row():
    model, verifier = _model("state")
    prefix, lens, block, x0 = _batch([150, 40, 1])
    lm = verifier.lm
    with torch.no_grad():
        loss, ce, *_ = model(prefix, lens, block, None, x0, beta=0.0)
        cond = verifier.conditioning(prefix, lens)
        from clsd_ds.flow import euler_sample

        draft = euler_sample(lambda x, t: model.dit(x, t, cond), x0, 2) * model.dit.cfg.embed_scale
        for b, L in enumerate(lens.tolist()):
            emb = torch.cat([lm.get_input_embeddings()(prefix[b:b + 1, :L]), draft[b:b + 1, :-1]], dim=1)
            logits = lm(inputs_embeds=emb).logits[0, L - 1:].float()
            ref = torch.nn.functional.cross_entropy(logits, block[b], reduction="none")
            torch.testing.assert_close(ce[b], ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("prefix_state", [False, True])
def test_one_step_moves_the_dit_and_not_the_verifier(prefix_state):
    model, verifier = _model("state", checkpointing=1, prefix_state=prefix_state)
    before_v = {n: p.clone() for n, p in verifier.lm.named_parameters()}
    before_d = {n: p.clone() for n, p in model.dit.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    assert all(not p.requires_grad for p in verifier.lm.parameters())
    prefix, lens, block, x0 = _batch([150, 20])
    loss, *_ = model(prefix, lens, block, None, x0, beta=0.1)
    loss.backward()
    opt.step()
    assert all(p.grad is None for p in verifier.lm.parameters())
    assert all(torch.equal(p, before_v[n]) for n, p in verifier.lm.named_parameters())
    changed = [n for n, p in model.dit.named_parameters() if not torch.equal(p, before_d[n])]
    assert len(changed) == len(before_d), set(before_d) - set(changed)


def test_nearest_tokens():
    E = torch.randn(300, 16)
    ids = torch.randint(0, 300, (4, 5))
    noisy = E[ids] + 0.01 * torch.randn(4, 5, 16)
    assert torch.equal(nearest_tokens(noisy, E, chunk=64), ids)


@pytest.mark.parametrize("prefix_state", [False, True])
def test_prefix_state_drafter_reads_the_whole_prefix(prefix_state):
    """With C held fixed, other prefix tokens change the drafts (their MSE to the block) only when the DiT reads
    the verifier's prefix state; only the changed row moves."""
    model, _ = _model(prefix_state=prefix_state)
    prefix, lens, block, x0 = _batch([150, 20])
    cond = torch.randn(2, 64, generator=torch.Generator().manual_seed(3))
    _, _, mse, *_ = model(prefix, lens, block, cond, x0, beta=0.1)
    other = prefix.clone()
    other[0, :50] = (other[0, :50] + 1) % 320
    _, _, mse_other, *_ = model(other, lens, block, cond, x0, beta=0.1)
    assert torch.equal(mse[1], mse_other[1])
    assert torch.equal(mse[0], mse_other[0]) != prefix_state
