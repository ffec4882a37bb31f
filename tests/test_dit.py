"""The graft and the DiT: parity with the HF layers it was copied from, identity at init, causality, export."""

import dataclasses

import pytest
import torch
from conftest import BLOCK, tiny_verifier

from clsd_ds.config import ConfigError
from clsd_ds.dit import CausalDiT, DiTConfig, load_dit, save_dit
from clsd_ds.flow import FlowConfig, draw_source, pin_anchor
from clsd_ds.graft import STRIDE_INDICES, graft, resolve_slice
from clsd_ds.verifier_state import Prefix, continue_pass, left_align, prefix_pass


@pytest.fixture(scope="module")
def verifier():
    return tiny_verifier()


def _inputs(dit: CausalDiT, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = dit.text_config.hidden_size
    return torch.randn(batch, BLOCK, d, generator=g), torch.rand(batch, generator=g), torch.randn(batch, d, generator=g)


def _randomize_modulation(dit: CausalDiT, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in dit.named_parameters():
            if "adaLN" in name or name.startswith(("final.linear", "pos_emb")):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


def test_seed_slice_and_hybrid_pattern_of_the_9b():
    assert resolve_slice(32, 12) == STRIDE_INDICES
    layer_types = ["linear_attention" if (i + 1) % 4 else "full_attention" for i in range(32)]
    kinds = "".join("A" if layer_types[i] == "full_attention" else "D" for i in STRIDE_INDICES)
    assert kinds == "DADDDADDDDDA"  # 9 DeltaNet + 3 attention, as the model card lists


def test_graft_keeps_source_layer_kinds_and_weights(verifier):
    dit = graft(verifier, DiTConfig(num_layers=4, block_len=BLOCK))
    assert dit.cfg.layers == [0, 2, 5, 7]
    assert dit.layer_types == [verifier.config.layer_types[i] for i in dit.cfg.layers]
    assert "full_attention" in dit.layer_types and "linear_attention" in dit.layer_types
    for block, src in zip(dit.blocks, dit.cfg.layers):
        for (name, p), (_, q) in zip(block.layer.named_parameters(), verifier.lm.model.layers[src].named_parameters()):
            assert torch.equal(p, q), name
            assert p.data_ptr() != q.data_ptr()  # a copy, not a shared tensor
    explicit = graft(verifier, DiTConfig(layers=[1, 3], block_len=BLOCK))
    assert explicit.layer_types == ["linear_attention", "full_attention"]


def test_gate_one_blocks_equal_their_source_layers(verifier):
    """With gate_init=one and zero modulation each block computes exactly its HF Qwen3_5DecoderLayer."""
    dit = graft(verifier, DiTConfig(num_layers=4, block_len=BLOCK, gate_init="one"))
    h, _, cond = _inputs(dit)
    c = dit.conditioning(torch.rand(2), cond)  # non-zero c, but the adaLN weights are zero
    pos = torch.arange(BLOCK)[None].expand(2, BLOCK)
    pe = dit.rotary(h, pos)
    for block, src in zip(dit.blocks, dit.cfg.layers):
        ref = verifier.lm.model.layers[src](h, position_embeddings=pe, attention_mask=None, position_ids=pos)
        assert torch.equal(block(h, c, pe, None), ref), f"block from layer {src} differs"


def _prefix_and_block(verifier, lengths, seed=5):
    """Right-padded random prefixes of ``lengths``, their left-aligned embeddings and mask, and a block of ids."""
    g = torch.Generator().manual_seed(seed)
    V, P = verifier.config.vocab_size, max(lengths)
    prefix = torch.randint(0, V, (len(lengths), P), generator=g)
    block = torch.randint(0, V, (len(lengths), BLOCK), generator=g)
    lengths = torch.tensor(lengths)
    ids, mask = left_align(prefix, lengths)
    return verifier.lm.get_input_embeddings()(ids), mask, lengths, block


@torch.no_grad()
def test_prefix_state_dit_continues_the_verifier(verifier):
    """A prefix-state DiT of all the verifier's layers (gate one, zero modulation, identity output) computes the
    verifier's own final-norm states of the block after each prefix: each block continues its source layer's state
    (attention K/V and DeltaNet conv + recurrent), at positions after the prefix, with padded prefixes."""
    L = verifier.config.num_hidden_layers
    dit = graft(verifier, DiTConfig(layers=list(range(L)), block_len=BLOCK, gate_init="one", prefix_state=True))
    d = dit.text_config.hidden_size
    dit.final.linear.weight.copy_(torch.eye(d))
    embeds, mask, lengths, block = _prefix_and_block(verifier, [70, 9, 33])  # across the DeltaNet's 64-token chunk
    _, states = prefix_pass(verifier.lm, embeds, mask)
    x1 = verifier.lm.get_input_embeddings()(block) / dit.cfg.embed_scale
    out = dit(x1, torch.rand(3), torch.randn(3, d), Prefix(states, mask, lengths))
    reference = continue_pass(verifier.lm, x1 * dit.cfg.embed_scale, mask, lengths, states)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="dit.prefix_state=true: pass the verifier's prefix state"):
        dit(x1, torch.rand(3), torch.randn(3, d))
    plain = graft(verifier, DiTConfig(num_layers=4, block_len=BLOCK))
    with pytest.raises(ValueError, match="built without dit.prefix_state"):
        plain(x1, torch.rand(3), torch.randn(3, d), Prefix(states, mask, lengths))


def test_prefix_state_dit_is_causal_and_trains(verifier):
    """Block position j depends on the prefix and positions <= j only; gradients reach the DiT, not the state."""
    dit = graft(verifier, DiTConfig(num_layers=4, block_len=BLOCK, prefix_state=True, checkpointing=True)).train()
    _randomize_modulation(dit)
    embeds, mask, lengths, _ = _prefix_and_block(verifier, [40, 12])
    _, states = prefix_pass(verifier.lm, embeds, mask)
    x, t, cond = _inputs(dit)
    prefix = Prefix(states, mask, lengths)
    v = dit(x, t, cond, prefix)
    x2 = x.clone()
    x2[:, 5:] += 1.0
    v2 = dit(x2, t, cond, prefix)
    assert torch.equal(v[:, :5], v2[:, :5]) and not torch.allclose(v[:, 5:], v2[:, 5:])
    _, other = prefix_pass(verifier.lm, embeds.flip(1), mask.flip(1))  # another prefix changes every position
    assert not torch.allclose(dit(x, t, cond, Prefix(other, mask.flip(1), lengths)), v)
    v.pow(2).mean().backward()
    assert all(p.grad is not None for p in dit.parameters() if p.requires_grad)


def test_a_constant_mask_input_trains_where_a_zero_input_cannot(verifier):
    """Why flow.source mask is the all-ones vector, not zero: at the zero init of the output layer and the position
    embeddings, an all-zero input at the drafted positions normalises to zero, so the output weights get no
    gradient from those positions (and nothing before them does): the DiT could never leave its init."""
    dit = graft(verifier, DiTConfig(num_layers=2, block_len=BLOCK))
    head, E = verifier.lm.lm_head, verifier.lm.get_input_embeddings().weight
    _, t, cond = _inputs(dit)
    targets = torch.randint(0, E.shape[0], (2, BLOCK), generator=torch.Generator().manual_seed(2))
    grads = {}
    anchor = E[targets[:, 0]].detach() / dit.cfg.embed_scale  # clean at position 0
    shape = (2, BLOCK, E.shape[1])
    for name, x0 in (("zeros", torch.zeros(shape)), ("mask", draw_source(FlowConfig(source="mask"), shape))):
        dit.zero_grad()
        logits = head(dit(pin_anchor(x0, anchor), torch.zeros_like(t), cond))
        torch.nn.functional.cross_entropy(logits[:, 1:].flatten(0, 1), targets[:, 1:].flatten()).backward()
        grads[name] = dit.final.linear.weight.grad.abs().sum().item()
    assert grads["zeros"] == 0 and grads["mask"] > 0


def test_zero_init_blocks_are_the_identity(verifier):
    dit = graft(verifier, DiTConfig(num_layers=4, block_len=BLOCK))
    h, t, cond = _inputs(dit)
    c = dit.conditioning(t, cond)
    pe = dit.rotary(h, torch.arange(BLOCK)[None].expand(2, BLOCK))
    for block in dit.blocks:
        assert torch.equal(block(h, c, pe, None), h)
    assert torch.count_nonzero(dit(*_inputs(dit))) == 0  # zero-init output layer: v = 0


@pytest.mark.parametrize("gate_init", ["zero", "one"])
def test_causal(verifier, gate_init):
    dit = graft(verifier, DiTConfig(num_layers=4, block_len=BLOCK, gate_init=gate_init))
    _randomize_modulation(dit)
    x, t, cond = _inputs(dit)
    out = dit(x, t, cond)
    for k in (1, 7, BLOCK - 1):
        x2 = x.clone()
        x2[:, k] += 3.0
        out2 = dit(x2, t, cond)
        assert torch.equal(out2[:, :k], out[:, :k]), f"positions before {k} changed"
        assert not torch.allclose(out2[:, k:], out[:, k:])


def test_activation_checkpointing_gives_the_same_gradients(verifier):
    cfg = DiTConfig(num_layers=4, block_len=BLOCK)
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        dit = graft(verifier, dataclasses.replace(cfg, checkpointing=ckpt)).train()
        _randomize_modulation(dit)
        dit(*_inputs(dit)).pow(2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in dit.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-7, msg=name)


def test_export_roundtrip(verifier, tmp_path):
    dit = graft(verifier, DiTConfig(num_layers=4, block_len=BLOCK))
    _randomize_modulation(dit)
    flow = FlowConfig(euler_steps=3, t_sampling="uniform")
    save_dit(dit.state_dict(), dit.text_config, dit.cfg, tmp_path, flow)
    loaded = load_dit(tmp_path)
    assert loaded.cfg == dit.cfg and loaded.flow == flow
    x = _inputs(dit)
    assert torch.equal(loaded(*x), dit(*x))


def test_slice_errors():
    with pytest.raises(ConfigError, match=r"dit.layers\[1\].*40 is out of range.*0\.\.31"):
        resolve_slice(32, 12, [0, 40])
    with pytest.raises(ConfigError, match="strictly increasing"):
        resolve_slice(8, 2, [3, 1])
    with pytest.raises(ConfigError, match="dit.num_layers"):
        resolve_slice(8, 9)


def test_load_dit_names_the_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="dit_config.json"):
        load_dit(tmp_path)
