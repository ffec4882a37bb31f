"""The Stage A objective on its own (no DeepSpeed): inputs from every kind of shard give the same loss."""

import pytest
import torch
from conftest import BLOCK, tiny_verifier

from clsd_ds.config import ConfigError
from clsd_ds.data.format import Manifest
from clsd_ds.dit import DiTConfig
from clsd_ds.flow import FlowConfig, lead_lengths, sample_block
from clsd_ds.graft import graft
from clsd_ds.train.distributed import DistInfo
from clsd_ds.train.stage_a import StageATask, block_flops_per_token


def _task(fields, prefix_state=False):
    verifier = tiny_verifier()
    torch.manual_seed(0)
    dit = graft(verifier, DiTConfig(num_layers=4, block_len=BLOCK, prefix_state=prefix_state))
    task = StageATask(dit, verifier, FlowConfig())
    manifest = Manifest(block_len=BLOCK, prefix_len=8, fields=fields, vocab_size=320, hidden_size=64)
    task.setup(DistInfo(0, 1, 0, torch.device("cpu")), torch.float32, manifest)
    with torch.no_grad():  # a DiT that does not output zeros, so the comparison means something
        task.module.final.linear.weight.normal_(0, 0.02)
    return task


def _batch(with_cond: bool, with_emb: bool, verifier):
    g = torch.Generator().manual_seed(1)
    prefix = torch.randint(0, 320, (3, 8), generator=g)
    lengths = torch.tensor([8, 5, 1])
    block = torch.randint(0, 320, (3, BLOCK), generator=g)
    batch = {"prefix": prefix, "prefix_len": lengths}
    if with_emb:
        batch["emb"] = verifier.embed(block).detach()
    else:
        batch["block"] = block
    if with_cond:
        batch["cond"] = verifier.conditioning(prefix, lengths)
    return batch


def test_token_embedding_and_cond_shards_give_the_same_loss():
    task = _task(["prefix", "block"])
    assert task.online_cond
    losses = []
    for with_cond, with_emb in [(False, False), (True, False), (True, True), (False, True)]:
        batch = _batch(with_cond, with_emb, task.verifier)
        loss, metrics = task.loss(task.module, batch, torch.Generator().manual_seed(7), 0)
        losses.append(loss.item())
        assert metrics["loss"][1] == 3 and sum(metrics[f"loss_t{i}"][1] for i in range(4)) == 3
    assert losses[0] > 0 and all(abs(x - losses[0]) < 1e-6 for x in losses), losses


def test_gradients_reach_only_the_dit():
    task = _task(["prefix", "block"])
    loss, _ = task.loss(task.module, _batch(False, False, task.verifier), torch.Generator().manual_seed(7), 0)
    loss.backward()
    assert all(p.grad is None for p in task.verifier.lm.parameters())
    assert task.module.final.linear.weight.grad.abs().sum() > 0


def test_prefix_state_drafter_runs_the_verifier_and_trains_only_the_dit():
    task = _task(["prefix", "block", "cond"], prefix_state=True)
    assert task.online_cond  # C in the shards, but the DiT needs the per-layer prefix state
    with torch.no_grad():  # open the blocks' gates (zero at init: the blocks would ignore the prefix state)
        for name, p in task.module.named_parameters():
            if "adaLN" in name:
                p.normal_(0, 0.05)
    batch = _batch(True, False, task.verifier)
    loss, _ = task.loss(task.module, batch, torch.Generator().manual_seed(7), 0)
    loss.backward()
    assert all(p.grad is None for p in task.verifier.lm.parameters())
    assert all(p.grad is not None for p in task.module.parameters())
    changed = dict(batch, prefix=batch["prefix"].flip(1))  # other prefixes (C comes from them, not the shard)
    assert task.loss(task.module, changed, torch.Generator().manual_seed(7), 0)[0].item() != loss.item()
    manifest = Manifest(block_len=BLOCK, prefix_len=8, fields=["emb", "cond"], vocab_size=320, hidden_size=64)
    with pytest.raises(ConfigError, match="dit.prefix_state needs the prefixes' token ids"):
        task.check_data(manifest, "shards/train")


def _traced_token_loss(flow: FlowConfig):
    """A 2-layer DiT's Stage A loss under ``flow`` on ``_batch`` (generator seed 7): (task, batch, loss, metrics,
    the DiT's input and its output, which keeps its gradient)."""
    verifier = tiny_verifier()
    torch.manual_seed(0)
    dit = graft(verifier, DiTConfig(num_layers=2, block_len=BLOCK))
    task = StageATask(dit, verifier, flow)
    manifest = Manifest(block_len=BLOCK, prefix_len=8, fields=["prefix", "block"], vocab_size=320)
    task.check_data(manifest, "shards")
    task.setup(DistInfo(0, 1, 0, torch.device("cpu")), torch.float32, manifest)
    with torch.no_grad():
        dit.final.linear.weight.normal_(0, 0.02)
    batch = _batch(False, False, verifier)
    seen = []

    def hook(module, args, out):
        out.retain_grad()
        seen.append((args[0], out))

    dit.register_forward_hook(hook)
    loss, metrics = task.loss(dit, batch, torch.Generator().manual_seed(7), 0)
    return task, batch, loss, metrics, *seen[0]


def test_anchored_token_objective_trains_only_the_drafted_positions():
    """flow.anchor + objective tokens: the DiT's input at position 0 is the block's first token, clean; the loss is
    the position-weighted CE of head(output) at positions 1.., and nothing flows back from position 0."""
    task, batch, loss, metrics, inputs, outputs = _traced_token_loss(
        FlowConfig(anchor=True, objective="tokens", position_decay=3.0))
    torch.testing.assert_close(inputs[:, 0], task.targets(batch)[:, 0])
    loss.backward()
    assert outputs.grad[:, 0].abs().max() == 0 and outputs.grad[:, 1].abs().max() > 0
    logits = task.verifier.lm.lm_head(outputs.detach()).float()
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["block"].flatten(), reduction="none")
    w = torch.exp(-torch.arange(BLOCK - 1.0) / 3.0)
    expected = (ce.view(3, BLOCK)[:, 1:] * w / w.mean()).sum(1) / BLOCK
    assert loss.item() == pytest.approx(expected.mean().item(), rel=1e-5)
    assert metrics["accuracy"][1] == 3 * (BLOCK - 1) and metrics["accuracy_first"][1] == 3
    with pytest.raises(ConfigError, match="objective=tokens trains on the blocks' token ids"):
        task.check_data(Manifest(block_len=BLOCK, prefix_len=8, fields=["prefix", "emb"], vocab_size=320,
                                 hidden_size=64), "emb-shards")


def test_reveal_trains_after_a_clean_lead_of_the_true_tokens():
    """flow.reveal: the DiT's input holds the block's true embeddings at positions < r (r from
    ``flow.lead_lengths`` with the step's generator) and the mask after them; the loss is the CE at positions >= r,
    decayed from r on, and nothing flows back from the lead; the accuracies count only drafted positions."""
    flow = FlowConfig(anchor=True, objective="tokens", position_decay=3.0, reveal=1.0, source="mask", euler_steps=1,
                      t_sampling="euler_grid")
    task, batch, loss, metrics, inputs, outputs = _traced_token_loss(flow)
    lead = lead_lengths(flow, 3, BLOCK, torch.Generator().manual_seed(7))  # the mask source draws nothing before it
    assert len(set(lead.tolist())) > 1 and (lead > 1).any()
    x1 = task.targets(batch)
    loss.backward()
    w = torch.exp(-torch.arange(BLOCK - 1.0) / 3.0)
    logits = task.verifier.lm.lm_head(outputs.detach()).float()
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["block"].flatten(), reduction="none")
    expected = []
    for b, r in enumerate(lead.tolist()):
        torch.testing.assert_close(inputs[b, :r], x1[b, :r])
        assert (inputs[b, r:] == 1).all()
        assert outputs.grad[b, :r].abs().max() == 0 and outputs.grad[b, r].abs().max() > 0
        wr = w[: BLOCK - r]
        expected.append((ce.view(3, BLOCK)[b, r:] * wr / wr.mean()).sum() / BLOCK)
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-5)
    assert metrics["accuracy"][1] == (BLOCK - lead).sum() and metrics["accuracy_first"][1] == 3


def test_sampler_training_inputs_are_the_inputs_decoding_gives_the_dit():
    """flow.train_inputs sampler: the loss runs the DiT at t = 0, 1/S, ... on exactly the inputs ``sample_block``
    feeds it from the same noise (each built from the previous step's estimate), and averages the steps' CE; a
    training step costs S DiT passes."""
    verifier = tiny_verifier()
    torch.manual_seed(0)
    dit = graft(verifier, DiTConfig(num_layers=2, block_len=BLOCK))
    flow = FlowConfig(anchor=True, objective="tokens", euler_steps=3, train_inputs="sampler")
    task = StageATask(dit, verifier, flow)
    task.setup(DistInfo(0, 1, 0, torch.device("cpu")), torch.float32,
               Manifest(block_len=BLOCK, prefix_len=8, fields=["prefix", "block"], vocab_size=320))
    with torch.no_grad():  # drafts that differ from step to step
        dit.final.linear.weight.normal_(0, 0.5)
    batch = _batch(False, False, verifier)
    seen = []
    dit.register_forward_hook(lambda module, args, out: seen.append((args[0].detach(), args[1], out.detach())))
    loss, metrics = task.loss(dit, batch, torch.Generator().manual_seed(7), 0)
    trained, seen[:] = list(seen), []
    x1 = task.targets(batch)
    x0 = torch.randn(x1.shape, generator=torch.Generator().manual_seed(7))
    cond = verifier.conditioning(batch["prefix"], batch["prefix_len"])
    with torch.no_grad():
        sample_block(lambda x, t: dit(x, t, cond), x0, flow, 3, x1[:, 0], task.readout())
    assert len(trained) == len(seen) == 3
    assert not torch.allclose(trained[1][0], trained[2][0])
    for (x_train, t_train, _), (x_decode, t_decode, _) in zip(trained, seen):
        torch.testing.assert_close(x_train, x_decode)
        torch.testing.assert_close(t_train, t_decode)
    expected = torch.stack([  # no position decay: the drafted positions weigh 1, the anchor 0
        torch.nn.functional.cross_entropy(verifier.lm.lm_head(out).flatten(0, 1), batch["block"].flatten(),
                                          reduction="none").view(3, BLOCK)[:, 1:].sum(1) / BLOCK
        for _, _, out in trained]).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert metrics["loss"][1] == 9 and [metrics[f"loss_t{i}"][1].item() for i in range(4)] == [3, 3, 3, 0]
    assert task.flops_per_token() == 3 * block_flops_per_token(dit, BLOCK)
    with pytest.raises(ConfigError, match="flow.train_inputs.*flow.objective: tokens"):
        FlowConfig(train_inputs="sampler").validate()
