"""Speculative decoding on a tiny float64 Qwen3.5 verifier: exactness against HF's greedy ``generate``, the state
replication and advance against fresh passes, the sampling rule's distribution, the guillotine's threshold, edge
cases and bad inputs."""

import copy
import json
import random

import pytest
import torch
from conftest import BLOCK, PREFIX, TINY, greedy, run_cli

from clsd_ds.config import ConfigError
from clsd_ds.dit import DiTConfig
from clsd_ds.flow import FlowConfig, euler_sample
from clsd_ds.graft import graft
from clsd_ds.infer import acceptance
from clsd_ds.infer.acceptance import conditional_acceptance
from clsd_ds.infer.autoregressive import StaticGreedy
from clsd_ds.infer.decoder import DecodeConfig, SpeculativeDecoder
from clsd_ds.infer.lattice import branch_candidates
from clsd_ds.verifier import Verifier, VerifierConfig
from clsd_ds.verifier_state import prefix_pass

V = TINY["vocab_size"]
# 1 token, around the DeltaNet's 64-token chunks and across two of them
PROMPT_LENGTHS = [1, 7, 63, 64, 65, 100, 129]


@pytest.fixture(scope="module")
def pair():
    verifier = Verifier.load(VerifierConfig(random_init=TINY), seed=3)
    verifier.lm.double()  # float64: no near-ties between the fast paths' and HF's rounding
    return verifier.lm, graft(verifier, DiTConfig(num_layers=4, block_len=BLOCK))


def prompt(length: int, seed: int) -> list[int]:
    return torch.randint(0, V, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


class OracleDrafter(SpeculativeDecoder):
    """Drafts the reference continuation with one wrong token per candidate at a random place (some none), so
    that cycles accept long prefixes: the acceptance and the state advance are exercised far beyond one token."""

    def __init__(self, lm, dit, cfg, reference: list[int], seed: int):
        super().__init__(lm, dit, cfg)
        self.reference, self.done, self.rng = reference, 0, random.Random(seed)

    def draft(self, h, states, length, k):
        rows = []
        for _ in range(self.cfg.num_candidates):
            row = (self.reference[self.done:] + [0] * k)[:k]
            wrong = self.rng.randrange(k + 2)
            if wrong < k:
                row[wrong] = (row[wrong] + 1) % V
            rows.append(row)
        return torch.tensor(rows)

    def accept(self, logits, tokens):
        n, a, nxt = super().accept(logits, tokens)
        self.done += a + 1
        return n, a, nxt


@pytest.mark.parametrize("length", PROMPT_LENGTHS)
def test_exact_mode_is_greedy_decoding(pair, length):
    lm, dit = pair
    ids = prompt(length, seed=length)
    reference = greedy(lm, ids, 40)
    out, stats = SpeculativeDecoder(lm, dit, DecodeConfig(num_candidates=3, max_new_tokens=12)).generate(ids)
    assert out == reference[:12]  # the untrained drafter: mostly one token per cycle
    oracle = OracleDrafter(lm, dit, DecodeConfig(num_candidates=4, max_new_tokens=40), reference, seed=length)
    out, stats = oracle.generate(ids)
    assert out == reference
    assert stats.tau > 4 and max(stats.accepted) > BLOCK // 2


def test_verifier_reading_is_greedy_and_commits_two_tokens_a_cycle(pair):
    lm, dit = pair
    ids = prompt(65, seed=8)
    cfg = DecodeConfig(num_candidates=3, max_new_tokens=20, reading="verifier")
    out, stats = SpeculativeDecoder(lm, dit, cfg).generate(ids)
    assert out == greedy(lm, ids, 20)
    assert min(stats.accepted[:-1]) >= 2  # each candidate starts with the verifier's own next token
    assert stats.verifier_calls == 3 * len(stats.accepted)


def test_verifier_reading_is_the_verifier_after_each_soft_draft(pair):
    """Candidate n's token j+1 = the argmax of one full forward over [prompt embeddings | drafts_1..j of n]."""
    lm, dit = pair
    ids = prompt(40, seed=9)
    dec = SpeculativeDecoder(lm, dit, DecodeConfig(num_candidates=3, reading="verifier"))
    embed = lm.get_input_embeddings()
    hidden, states = prefix_pass(lm, embed(torch.tensor([ids])), torch.ones(1, len(ids), dtype=torch.bool), grow=True)
    noise_state = dec.generator.get_state()
    tokens = dec.draft(hidden[:, -1:], states.repeat_interleave(3), len(ids), BLOCK)
    dec.generator.set_state(noise_state)
    x0 = torch.randn(3, BLOCK, hidden.shape[-1], generator=dec.generator, dtype=hidden.dtype)
    cond = hidden[:, -1].expand(3, -1)
    drafts = euler_sample(lambda x, t: dit(x, t, cond), x0, 2) * dit.cfg.embed_scale
    for n in range(3):
        full = torch.cat([embed(torch.tensor([ids])), drafts[n: n + 1, :-1]], 1)
        assert lm(inputs_embeds=full).logits[0, len(ids) - 1:].argmax(-1).tolist() == tokens[n].tolist()


@pytest.mark.parametrize("objective", ["tokens", "velocity"])
def test_anchored_drafter_leads_with_the_verifiers_token_and_stays_greedy(pair, objective):
    """flow.anchor: the DiT sees the verifier's own next token, clean, at block position 0 in every Euler step,
    every candidate starts with it (so a cycle commits >= 2 tokens), and exact decoding is still greedy; a
    token-objective drafter is read by its logits (no extra verifier call)."""
    lm, base = pair
    dit = copy.deepcopy(base)
    dit.flow = FlowConfig(anchor=True, objective=objective, euler_steps=2)
    with torch.no_grad():  # outputs that vary with the input, so the reading is not constant
        dit.final.linear.weight.normal_(0, 0.5)
    seen = []
    dit.register_forward_hook(lambda module, args, out: seen.append(args[0][:, 0].clone()))
    ids = prompt(30, seed=5)
    dec = SpeculativeDecoder(lm, dit, DecodeConfig(num_candidates=3, max_new_tokens=16))
    assert dec.reading == ("logits" if objective == "tokens" else "nearest") and dec.given == 1
    assert SpeculativeDecoder(lm, base, DecodeConfig()).given == 0  # no anchor: nothing is given
    assert SpeculativeDecoder(lm, dit, DecodeConfig(acceptance="sampling")).given == 0  # the argmax may be refused
    out, stats = dec.generate(ids)
    assert out == greedy(lm, ids, 16)
    assert min(stats.accepted[:-1]) >= 2 and stats.verifier_calls == 2 * len(stats.accepted)
    first = lm.get_input_embeddings()(torch.tensor([out[0]]))[0] / dit.cfg.embed_scale  # the first cycle's anchor
    assert len(seen) == 2 * len(stats.accepted) and torch.allclose(seen[0], first.expand(3, -1))
    if objective == "velocity":
        with pytest.raises(ConfigError, match="'logits' reads a drafter trained with flow.objective tokens"):
            SpeculativeDecoder(lm, dit, DecodeConfig(reading="logits"))


def test_branch_candidates_are_the_path_and_its_most_probable_single_branches():
    """Worth of branch (i, r) = P(path accepted before i) * p_i(r-th token); the anchor position is never branched,
    and a block with too few branches repeats the path."""
    p = torch.tensor([[0.9, 0.1, 0.0, 0.0],   # anchor: given
                      [0.6, 0.3, 0.1, 0.0],   # reach 1:    branches worth 0.3, 0.1
                      [0.1, 0.5, 0.4, 0.0],   # reach 0.6:  0.24, 0.06
                      [0.0, 0.0, 0.2, 0.8]])  # reach 0.3:  0.06, 0
    rows, pivots = branch_candidates(p.log(), 4, first=1)
    path = [0, 0, 1, 3]
    assert rows[0].tolist() == path
    assert rows[1:].tolist() == [[0, 1, 1, 3], [0, 0, 2, 3], [0, 2, 1, 3]]  # worth 0.3, 0.24, 0.1
    assert pivots.tolist() == [1, 1, 2, 1]  # a branch's position; the path's: that of the best branch
    rows, pivots = branch_candidates(p.log(), 1, first=1)
    assert rows.tolist() == [path] and pivots.tolist() == [1]
    rows, pivots = branch_candidates(p[:1].log(), 3, first=1)  # only the anchor: nothing to branch
    assert rows.tolist() == [[0]] * 3 and pivots.tolist() == [1] * 3


def test_lattice_candidates_branch_one_sampling_and_stay_greedy(pair):
    """decode.candidates lattice: one DiT sampling (the same draws as N = 1), row 0 its argmax path, every other
    row that path with one drafted token changed; exact decoding is still greedy. Only a logits reading has the
    distributions to branch, and only a DiT drafter samples."""
    lm, base = pair
    dit = copy.deepcopy(base)
    dit.flow = FlowConfig(anchor=True, objective="tokens", euler_steps=1)
    with torch.no_grad():
        dit.final.linear.weight.normal_(0, 0.5)
    ids = prompt(30, seed=6)
    hidden, states = prefix_pass(lm, lm.get_input_embeddings()(torch.tensor([ids])),
                                 torch.ones(1, len(ids), dtype=torch.bool), grow=True)
    one = SpeculativeDecoder(lm, dit, DecodeConfig(num_candidates=1)).draft(hidden[:, -1:], states, len(ids), BLOCK)
    dec = SpeculativeDecoder(lm, dit, DecodeConfig(num_candidates=5, candidates="lattice", max_new_tokens=16))
    rows = dec.draft(hidden[:, -1:], states.repeat_interleave(5), len(ids), BLOCK)
    assert rows.shape == (5, BLOCK) and rows[0].tolist() == one[0].tolist()
    changed = (rows[1:] != rows[:1]).sum(1)
    assert changed.tolist() == [1] * 4 and (rows[:, 0] == rows[0, 0]).all()
    out, stats = dec.generate(ids)
    assert out == greedy(lm, ids, 16)
    with pytest.raises(ConfigError, match="decode.candidates.*logits reading.*nearest"):
        SpeculativeDecoder(lm, base, DecodeConfig(candidates="lattice"))


@pytest.mark.parametrize("n", [1, 4])
def test_redraft_drafts_each_candidate_again_after_its_pivot(pair, n):
    """decode.redraft: the lattice's rows (the path and its branches, from one DiT pass) are drafted again after
    their pivots: positions up to the pivot keep the row's tokens, the rest are the argmax of an independent DiT
    pass whose input holds the row's tokens clean up to the pivot and the mask after it; a second pass does the
    same after each row's most likely failure in the first one's new tokens; exact decoding stays greedy. Without
    the lattice there is nothing to redraft."""
    lm, base = pair
    dit = copy.deepcopy(base)
    dit.flow = FlowConfig(anchor=True, objective="tokens", euler_steps=1, source="mask", reveal=0.5)
    with torch.no_grad():  # open the blocks' gates, so a position's output depends on the positions before it
        dit.final.linear.weight.normal_(0, 0.5)
        for name, w in dit.named_parameters():
            if "adaLN" in name:
                w.normal_(0, 1.0)
        dit.pos_emb.normal_(0, 0.02)  # positions told apart, at the embeddings' scale
    ids = prompt(30, seed=8)
    hidden, states = prefix_pass(lm, lm.get_input_embeddings()(torch.tensor([ids])),
                                 torch.ones(1, len(ids), dtype=torch.bool), grow=True)
    E, scale, h = lm.get_input_embeddings().weight, dit.cfg.embed_scale, hidden[:, -1:]

    def dit_tokens(rows, lead):  # the DiT's argmax for rows [m, K] held clean at positions < lead [m]
        x = torch.ones(len(rows), BLOCK, E.shape[1], dtype=E.dtype)
        held = torch.arange(BLOCK)[None] < lead[:, None]
        x[held] = E[rows[held]] / scale
        with torch.no_grad():
            out = dit(x, torch.zeros(len(rows)), h[:, 0].expand(len(rows), -1))
        return lm.lm_head(out)

    own = lm.lm_head(h).argmax(-1)[0]
    rows, pivots = branch_candidates(dit_tokens(own.expand(1, BLOCK), torch.ones(1, dtype=torch.long))[0], n, 1)
    rows[:, 0] = own
    plain = SpeculativeDecoder(lm, dit, DecodeConfig(num_candidates=n, candidates="lattice"))
    assert plain.draft(h, states.repeat_interleave(n), len(ids), BLOCK).tolist() == rows.tolist()
    def redrafted(passes):
        dec = SpeculativeDecoder(lm, dit, DecodeConfig(num_candidates=n, candidates="lattice", redraft=passes,
                                                       max_new_tokens=16))
        return dec, dec.draft(h, states.repeat_interleave(n), len(ids), BLOCK)

    dec, again = redrafted(1)
    logits = dit_tokens(rows, pivots + 1)
    expected = logits.argmax(-1)
    after = torch.arange(BLOCK)[None] > pivots[:, None]
    assert (pivots < BLOCK - 1).all() and after.any()
    assert torch.equal(again[~after], rows[~after]) and torch.equal(again[after], expected[after])
    assert not torch.equal(again, rows)  # the clean lead changed what follows it
    assert dec.generate(ids)[0] == greedy(lm, ids, 16)
    dec, twice = redrafted(2)
    following = torch.stack([branch_candidates(logits[j], 1, int(pivots[j]) + 1)[1][0] for j in range(n)])
    assert (following > pivots).all()
    expected = dit_tokens(again, following + 1).argmax(-1)
    after = torch.arange(BLOCK)[None] > following[:, None]
    assert torch.equal(twice[~after], again[~after]) and torch.equal(twice[after], expected[after])
    assert dec.generate(ids)[0] == greedy(lm, ids, 16)
    with pytest.raises(ConfigError, match="decode.redraft.*decode.candidates lattice"):
        SpeculativeDecoder(lm, dit, DecodeConfig(num_candidates=1, redraft=1))
    with pytest.raises(ConfigError, match="decode.redraft.*>= 0"):
        DecodeConfig(redraft=-1).validate()


def test_mask_source_is_one_fixed_input_and_one_deterministic_draft(pair):
    """flow.source mask: the drafted positions' input is the all-ones vector (DFlash's mask input), so the draft
    does not depend on the decoder's seed; N noise candidates would be one draft repeated and are refused, the
    lattice's N are accepted, and exact decoding stays greedy."""
    lm, base = pair
    dit = copy.deepcopy(base)
    dit.flow = FlowConfig(anchor=True, objective="tokens", euler_steps=1, source="mask")
    with torch.no_grad():
        dit.final.linear.weight.normal_(0, 0.5)
    seen = []
    dit.register_forward_hook(lambda module, args, out: seen.append(args[0].clone()))
    ids = prompt(30, seed=7)
    hidden, states = prefix_pass(lm, lm.get_input_embeddings()(torch.tensor([ids])),
                                 torch.ones(1, len(ids), dtype=torch.bool), grow=True)
    drafts = [SpeculativeDecoder(lm, dit, DecodeConfig(num_candidates=1, seed=seed)).draft(
        hidden[:, -1:], states, len(ids), BLOCK) for seed in (0, 1)]
    assert torch.equal(drafts[0], drafts[1])
    assert all(torch.equal(x[:, 1:], torch.ones_like(x[:, 1:])) for x in seen)  # the anchor at 0, the mask after it
    with pytest.raises(ConfigError, match="noise candidates of a drafter trained with flow.source mask"):
        SpeculativeDecoder(lm, dit, DecodeConfig(num_candidates=4))
    out, _ = SpeculativeDecoder(lm, dit, DecodeConfig(num_candidates=4, candidates="lattice",
                                                      max_new_tokens=16)).generate(ids)
    assert out == greedy(lm, ids, 16)
    seen.clear()  # the same drafter with the seed's source: noise at the drafted positions
    dit.flow = FlowConfig(anchor=True, objective="tokens", euler_steps=1)
    SpeculativeDecoder(lm, dit, DecodeConfig(num_candidates=1)).draft(hidden[:, -1:], states, len(ids), BLOCK)
    assert not torch.equal(seen[0][:, 1:], torch.ones_like(seen[0][:, 1:]))


def test_conditional_acceptance_from_the_committed_histogram():
    """α_i = #(accepted drafts >= i) / #(>= i - 1); a cycle commits the given tokens, the accepted drafts and the
    verifier's token. Which tokens are given: the verifier's own leading token, under the exact rule only."""
    hist = {"2": 2, "3": 1, "5": 1}
    assert conditional_acceptance(hist, 1) == [0.5, 0.5, 1.0]  # accepted drafts 0, 0, 1, 3
    assert conditional_acceptance(hist, 0) == [1.0, 0.5, 0.5, 1.0]  # 1, 1, 2, 4
    assert conditional_acceptance({"1": 3}, 0) == []


def test_static_cache_baseline_is_greedy_decoding(pair):
    lm, _ = pair
    static = StaticGreedy(lm, max_len=140)
    for length in (1, 63, 100):  # one static cache reused across prompts, decoding across the 64-token chunks
        ids = prompt(length, seed=20 + length)
        assert static.generate(ids, 40) == greedy(lm, ids, 40), length
    with pytest.raises(ValueError, match="exceed the static cache's max_len 140"):
        static.generate(prompt(120, seed=0), 21)


def test_adaptive_block_follows_acceptance_and_stays_greedy(pair):
    lm, dit = pair
    ids = prompt(50, seed=12)
    reference = greedy(lm, ids, 60)
    cfg = DecodeConfig(num_candidates=3, max_new_tokens=20, adaptive_block=True, min_block_len=2)
    out, stats = SpeculativeDecoder(lm, dit, cfg).generate(ids)  # untrained: ~nothing accepted
    assert out == reference[:20]
    assert stats.block_len[:5] == [BLOCK, BLOCK, BLOCK // 2, BLOCK // 4, 2] and set(stats.block_len[5:]) == {2}
    cfg = DecodeConfig(num_candidates=4, max_new_tokens=60, adaptive_block=True)
    out, stats = OracleDrafter(lm, dit, cfg, reference, seed=3).generate(ids)  # long acceptances keep k large
    assert out == reference and max(stats.block_len[1:]) == BLOCK and stats.tau > 4


@pytest.mark.parametrize("reading", ["nearest", "verifier"])
def test_one_candidate_of_one_token(pair, reading):
    lm, dit = pair
    ids = prompt(20, seed=1)
    cfg = DecodeConfig(num_candidates=1, block_len=1, max_new_tokens=6, reading=reading)
    decoder = SpeculativeDecoder(lm, dit, cfg)
    out, stats = decoder.generate(ids)
    assert out == greedy(lm, ids, 6) and len(stats.accepted) >= 3


def test_eos_inside_a_block_ends_the_text(pair):
    lm, dit = pair
    ids = prompt(30, seed=2)
    reference = greedy(lm, ids, 30)
    eos = reference[9]
    first = reference.index(eos)
    oracle = OracleDrafter(lm, dit, DecodeConfig(num_candidates=2, max_new_tokens=30), reference, seed=0)
    out, _ = oracle.generate(ids, eos_id=eos)
    assert out == reference[: first + 1]


def test_replicated_state_scores_every_candidate_as_its_own_pass(pair):
    lm, dit = pair
    ids = prompt(70, seed=3)
    dec = SpeculativeDecoder(lm, dit, DecodeConfig(num_candidates=5))
    embed = lm.get_input_embeddings()
    hidden, states = prefix_pass(lm, embed(torch.tensor([ids])), torch.ones(1, len(ids), dtype=torch.bool), grow=True)
    tokens = torch.randint(0, V, (5, BLOCK), generator=torch.Generator().manual_seed(0))
    logits = dec.verify(tokens, states.repeat_interleave(5), len(ids), hidden[:, -1:])
    for n in range(5):
        alone = lm(torch.tensor([ids + tokens[n].tolist()])).logits[0, len(ids) - 1:].float()
        torch.testing.assert_close(logits[n], alone, rtol=1e-6, atol=1e-6)  # float32 logits


def test_state_advance_equals_a_fresh_prefill(pair):
    lm, dit = pair
    ids = prompt(60, seed=4)
    more = prompt(30, seed=5)
    embed = lm.get_input_embeddings()
    dec = SpeculativeDecoder(lm, dit, DecodeConfig())
    _, grown = prefix_pass(lm, embed(torch.tensor([ids])), torch.ones(1, 60, dtype=torch.bool), grow=True)
    dec.advance(more[:7], grown, 60)  # two advances, across the 64-token chunk boundary
    h = dec.advance(more[7:], grown, 67)
    full = ids + more
    hidden, fresh = prefix_pass(lm, embed(torch.tensor([full])), torch.ones(1, len(full), dtype=torch.bool))
    tol = dict(rtol=1e-5, atol=1e-5)  # HF's torch delta rule runs in float32 whatever the model's dtype
    torch.testing.assert_close(h, hidden[:, 67:], **tol)  # every committed position
    for kind in ("keys", "values", "conv", "recurrent"):
        mine, theirs = getattr(grown, kind), getattr(fresh, kind)
        assert mine.keys() == theirs.keys() and mine
        for i in mine:
            torch.testing.assert_close(mine[i], theirs[i], **tol)


def test_sampling_rule_draws_the_verifiers_distribution():
    """A Markov 'verifier' over 3 tokens: candidates sharing a context share its distribution. Decode 3 tokens
    many times with skewed random drafts and compare the frequencies of all 27 texts with the exact probabilities."""
    g = torch.Generator().manual_seed(0)
    P = torch.softmax(torch.randn(3, 3, generator=g, dtype=torch.float64) * 1.5, -1)  # P[prev, next]
    N, K, runs, start = 3, 2, 10000, 0
    skew = torch.tensor([0.7, 0.2, 0.1])  # drafts unlike the verifier: choosing the longest match must not bias
    counts = torch.zeros(3, 3, 3)
    for _ in range(runs):
        text = [start]
        while len(text) < 4:
            tokens = torch.multinomial(skew, N * K, replacement=True, generator=g).view(N, K)
            context = torch.cat([torch.full((N, 1), text[-1]), tokens], 1)  # the token before each position
            logits = P[context].log()
            n, a, nxt = acceptance.sampling(logits, tokens, torch.rand(K + 1, generator=g, dtype=torch.float64),
                                            temperature=1.0, top_p=1.0)
            text += tokens[n, :a].tolist() + [nxt]
        counts[tuple(text[1:4])] += 1
    exact = torch.tensor([[[P[start, a] * P[a, b] * P[b, c] for c in range(3)] for b in range(3)] for a in range(3)])
    chi2 = ((counts - runs * exact) ** 2 / (runs * exact)).sum().item()
    assert chi2 < 55  # 26 degrees of freedom: p < 0.001 beyond 54


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = torch.tensor([[[-1.0, 2.0, 0.0, 1.0]]])  # probabilities 0.032, 0.644, 0.087, 0.237
    kept = {p: (acceptance.sampling_probs(logits, 1.0, p)[0, 0] > 0).tolist() for p in (0.5, 0.9, 1.0)}
    assert kept == {0.5: [False, True, False, False], 0.9: [False, True, True, True], 1.0: [True] * 4}
    probs = acceptance.sampling_probs(logits, 0.5, 0.9)  # temperature first, then the nucleus
    assert (probs[0, 0] > 0).tolist() == [False, True, False, True]
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 1, dtype=torch.float64))


def test_guillotine_cuts_at_the_threshold(pair):
    logits = torch.log(torch.tensor([[[0.5, 0.5], [0.2, 0.8], [0.9, 0.1], [0.6, 0.4]]]))  # N=1, K=3, V=2
    tokens = torch.tensor([[0, 1, 0]])  # verifier probabilities 0.5, 0.8, 0.9
    assert acceptance.guillotine(logits, tokens, 0.0) == (0, 3, 0)
    assert acceptance.guillotine(logits, tokens, 0.6) == (0, 0, 0)
    assert acceptance.guillotine(logits, tokens, 0.5) == (0, 3, 0)
    two = torch.cat([logits, logits]), torch.tensor([[0, 1, 0], [1, 0, 1]])  # mean log-prob picks row 0
    assert acceptance.guillotine(*two, 0.6)[0] == 0
    lm, dit = pair  # threshold 1 accepts nothing: every token is the verifier's own, i.e. greedy
    ids = prompt(12, seed=6)
    out, _ = SpeculativeDecoder(lm, dit, DecodeConfig(num_candidates=2, acceptance="guillotine", threshold=1.0,
                                                      max_new_tokens=5)).generate(ids)
    assert out == greedy(lm, ids, 5)


def test_drafter_of_another_verifier_is_refused(pair):
    lm, _ = pair
    for field, value in (("hidden_size", 128), ("vocab_size", 400)):
        other = Verifier.load(VerifierConfig(random_init={**TINY, field: value}), seed=0)
        with pytest.raises(ConfigError, match=f"{field}={value}.*{field}={TINY[field]}"):
            SpeculativeDecoder(lm, graft(other, DiTConfig(num_layers=2, block_len=BLOCK)), DecodeConfig())


def test_bad_decode_settings_are_named(pair):
    lm, dit = pair
    with pytest.raises(ConfigError, match="decode.block_len"):
        SpeculativeDecoder(lm, dit, DecodeConfig(block_len=BLOCK + 1))
    with pytest.raises(ConfigError, match="decode.num_candidates"):
        SpeculativeDecoder(lm, dit, DecodeConfig(num_candidates=0))
    with pytest.raises(ValueError, match="at least one token"):
        SpeculativeDecoder(lm, dit, DecodeConfig()).generate([])


@pytest.fixture(scope="module")
def exported_drafter(verifier_dir, tmp_path_factory):
    """An untrained drafter grafted from the saved tiny verifier, exported as training would."""
    from clsd_ds.dit import save_dit

    verifier = Verifier.load(VerifierConfig(path=str(verifier_dir)))
    dit = graft(verifier, DiTConfig(num_layers=2, block_len=BLOCK))
    return save_dit(dit.state_dict(), verifier.config, dit.cfg, tmp_path_factory.mktemp("drafter"), dit.flow)


def test_eval_command_measures_and_checks_greedy(verifier_dir, exported_drafter, shards, tmp_path):
    out = tmp_path / "eval"
    proc = run_cli(["eval", f"verifier.path={verifier_dir}", f"drafter={exported_drafter}",
                    f"prompts={shards / 'val'}", "num_prompts=3", "decode.num_candidates=4",
                    "decode.max_new_tokens=10", f"out={out}"], launcher="none")
    result = json.loads((out / "eval.json").read_text())
    assert result["prompts"] == 3 and result["tokens"] == 30 and result["greedy_outputs"] == "3/3"
    assert sum(int(k) * v for k, v in result["tau_histogram"].items()) == 30
    assert result["given_tokens"] == 0 and result["alpha"] == conditional_acceptance(result["tau_histogram"], 0)
    assert result["tau"] == 30 / result["cycles"] and result["speedup"] > 0 and result["baseline_tok_s"] > 0
    assert result["tokens_per_verifier_call"] == 30 / (2 * result["cycles"])  # verification + state advance
    for r in result["per_prompt"]:  # the static-cache baseline's text: equal, or how many leading tokens agree
        assert (r["agrees_for"] == r["tokens"]) == r["same_as_baseline"] and 0 <= r["agrees_for"] <= r["tokens"]
    assert set(result["cycle_ms"]) == {"draft_s", "verify_s", "advance_s"}
    assert all(1 <= r["prompt_tokens"] <= PREFIX for r in result["per_prompt"])  # the samples' prefixes
    assert '"tau"' in proc.stdout and (out / "tau_hist.png").stat().st_size > 1000


def test_generate_command_prints_text(verifier_dir, exported_drafter):
    proc = run_cli(["generate", "--prompt", "Problem: Find the sum of 2 and 3.", f"verifier.path={verifier_dir}",
                    f"drafter={exported_drafter}", "decode.num_candidates=2", "decode.max_new_tokens=8"],
                   launcher="none")
    result = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert isinstance(result["text"], str) and 1 <= result["tokens"] <= 8
    assert sum(result["accepted"]) == result["tokens"]


def test_eval_names_a_missing_drafter(verifier_dir, shards, tmp_path):
    proc = run_cli(["eval", f"verifier.path={verifier_dir}", f"drafter={tmp_path / 'nothing'}",
                    f"prompts={shards / 'val'}"], launcher="none", check=False)
    assert proc.returncode != 0 and f"drafter: '{tmp_path / 'nothing'}' is neither" in proc.stderr
