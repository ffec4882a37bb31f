"""The autoregressive (EAGLE-style) baseline drafter: its cached drafting against an uncached recomputation, exact
decoding, and its training objective."""

import pytest
import torch
from conftest import PREFIX, TINY, greedy

from clsd_ds.config import ConfigError
from clsd_ds.ar_drafter import ARDrafterConfig, ar_graft, load_ar, save_ar
from clsd_ds.infer.ar_decoder import ARSpeculativeDecoder
from clsd_ds.infer.decoder import DecodeConfig
from clsd_ds.train.stage_ar import ARModel
from clsd_ds.verifier import Verifier, VerifierConfig
from clsd_ds.verifier_state import prefix_pass

V = TINY["vocab_size"]


@pytest.fixture(scope="module")
def pair():
    verifier = Verifier.load(VerifierConfig(random_init=TINY), seed=3)
    verifier.lm.double()
    drafter = ar_graft(verifier, ARDrafterConfig(block_len=6)).double()
    with torch.no_grad():  # a drafter whose features are not the identity of its input
        drafter.fc.weight.normal_(0, 0.1)
    return verifier, drafter


def prompt(length: int, seed: int) -> list[int]:
    return torch.randint(0, V, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_graft_takes_the_last_attention_layer(pair):
    verifier, drafter = pair
    types = verifier.config.layer_types
    assert drafter.cfg.layer == max(i for i, t in enumerate(types) if t == "full_attention")
    assert drafter.layer.block_type == "full_attention"


@torch.no_grad()
def test_cached_chain_equals_an_uncached_recomputation(pair):
    """The top-1 candidate: x_L, then each token the drafter's argmax after a full pass over the true features of
    the text and its own features of the drafted tokens."""
    verifier, drafter = pair
    lm, ids = verifier.lm, prompt(40, seed=1)
    dec = ARSpeculativeDecoder(lm, drafter, DecodeConfig(num_candidates=3))
    out, _ = dec.generate(ids, max_cycles=2)  # exercises start and two commits
    text = ids + out
    L = len(text)
    t = torch.tensor([text])
    hidden, states = prefix_pass(lm, lm.get_input_embeddings()(t), torch.ones_like(t, dtype=torch.bool), grow=True)
    tokens, drafted = dec.chains(hidden[:, -1:], L, 6)
    feats = [torch.zeros_like(hidden[0, 0]), *hidden[0]]  # the feature before each position (none before 0)
    seq = text + [int(lm.lm_head(hidden[0, -1]).argmax())]
    for _ in range(5):
        pred = drafter(torch.stack(feats)[None], lm.get_input_embeddings()(torch.tensor([seq])),
                       torch.arange(len(seq))[None], torch.ones(1, len(seq), dtype=torch.bool))
        feats.append(pred[0, -1])
        seq.append(int(lm.lm_head(pred[0, -1]).argmax()))
    assert tokens[0].tolist() == seq[L:]
    torch.testing.assert_close(drafted[0], torch.stack(feats[L + 1:]), rtol=1e-6, atol=1e-6)
    assert len(set(tokens[:, 1].tolist())) == 3  # three branches at the first drafted token


@pytest.mark.parametrize("length", [1, 65])
def test_exact_decoding_with_the_ar_drafter(pair, length):
    verifier, drafter = pair
    ids = prompt(length, seed=length)
    out, stats = ARSpeculativeDecoder(verifier.lm, drafter, DecodeConfig(num_candidates=2, max_new_tokens=20)
                                      ).generate(ids)
    assert out == greedy(verifier.lm, ids, 20)
    assert min(stats.accepted[:-1]) >= 2  # the verifier's own next token leads every chain
    assert ARSpeculativeDecoder(verifier.lm, drafter, DecodeConfig()).given == 1  # the verifier's own token leads
    with pytest.raises(ConfigError, match="decode.candidates.*already branch"):
        ARSpeculativeDecoder(verifier.lm, drafter, DecodeConfig(candidates="lattice"))


def test_training_step_moves_only_the_drafter(tmp_path):
    verifier = Verifier.load(VerifierConfig(random_init=TINY), seed=3)
    drafter = ar_graft(verifier, ARDrafterConfig())
    model = ARModel(drafter, verifier)
    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(1, V, (3, PREFIX), generator=g)
    lengths = torch.tensor([PREFIX, 5, 1])
    prefix[torch.arange(PREFIX)[None] >= lengths[:, None]] = 0
    block = torch.randint(0, V, (3, 16), generator=g)
    opt = torch.optim.AdamW(drafter.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        loss, *_ = model(prefix, lengths, block)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] and all(p.grad is None for p in verifier.lm.parameters())
    save_ar(drafter.state_dict(), drafter.text_config, drafter.cfg, tmp_path)
    again = load_ar(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), drafter.state_dict().values()))
