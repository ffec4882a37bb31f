"""Speculative decoding with the CLSD drafter: draft N blocks, verify them in one batched pass, keep the best prefix.

One cycle, with the verifier's state S after the committed text and h its final-norm hidden at the last token:
    C = h;  x0^(n) ~ N(0, I) [K, d];  x̂1^(n) = Euler_steps(DiT(·, t, C), x0^(n))        (n = 1..N, one batch)
    tokens^(n) = nearest rows of E to x̂1^(n) · embed_scale                       (reading: nearest)
              or [argmax lm_head(h) | argmax lm_head(verifier(x̂1^(n)_{<K} · embed_scale | S))]   (reading: verifier)
              or argmax of the DiT's logits at the last step                   (reading: logits; flow.objective tokens)
    with flow.anchor, position 0 of every block is a = argmax lm_head(h), the verifier's own next token, pinned clean
    through the sampling (flow.py), and tokens^(n)_0 = a
    with candidates: lattice (logits reading), one sampling instead of N: tokens^(1) its argmax path, tokens^(2..N)
    the path's most probable single-token branches (lattice.py); with redraft R, R more batched DiT passes: each
    drafts every candidate again after its pivot p (first a branch's position, or the path's most likely failure;
    then the most likely failure after the last pivot) from the same source, positions 0..p held clean at the
    candidate's tokens (a drafter trained with flow.reveal has seen such leads): tokens^(n)_{>p} = that pass's argmax
    logits^(n) = lm_head([h | verifier(E[tokens^(n)] | S)])   (S replicated N times: one forward for all)
    (n, a, next) = acceptance rule;  commit tokens^(n)[:a] + [next];  S, h <- verifier(committed | S)
The state advance recomputes the committed tokens from S (one verifier pass of a + 1 tokens), which is exact for
both layer kinds; DeltaNet states cannot be cropped like attention keys. The ``verifier`` reading turns drafts into
tokens the way Stage C trains them to be read (the verifier's prediction after the soft draft), at the price of a
second verifier pass per cycle; its first token is the verifier's own next token. With ``adaptive_block`` the block
length of the next cycle follows acceptance: k = clip(2^ceil(log2(2·ā)), min_block_len, K), ā an exponential average
(weight 1/2) of the draft tokens accepted per cycle, starting from K — drafting and verifying cost ∝ N·k.

With a ``policy`` (the shadow loop, ``shadow/policy.py``) the DiT samples stochastically — Gaussian Euler steps and,
for a token-objective drafter, tokens drawn from its logits at the policy's temperature — and, when ``trace`` is a
list, every cycle appends what the trainer needs to recompute the chosen block's log-probability: the prefix length,
the block's states and tokens, how many of its tokens were accepted, how many leading positions its log-probability
scores (the policy's ``credit``) and that log-probability.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from transformers import Qwen3_5ForCausalLM

from ..config import ConfigError
from ..dit import CausalDiT
from ..flow import Readout, draw_source, pin_lead, sample_block
from ..shadow.policy import sample as policy_sample
from ..verifier import nearest_tokens
from ..verifier_state import LayerStates, Prefix, continue_pass, prefix_pass
from . import acceptance
from .lattice import branch_candidates


@dataclass
class DecodeConfig:
    num_candidates: int = 32
    # noise: N samplings from N noises; lattice: one sampling, its argmax path and N - 1 branches (logits reading)
    candidates: Literal["noise", "lattice"] = "noise"
    redraft: int = 0  # lattice: passes drafting each candidate again after its pivot, its tokens up to it held clean
    block_len: int | None = None  # tokens drafted per candidate; None: the DiT's block_len
    euler_steps: int | None = None  # sampler steps; None: the drafter's trained flow.euler_steps
    # drafted vectors -> tokens (module docstring); auto: logits for a drafter trained with flow.objective tokens,
    # else nearest
    reading: Literal["auto", "nearest", "verifier", "logits"] = "auto"
    adaptive_block: bool = False  # each cycle drafts k = clip(2^ceil(log2(2·EMA of accepted)), min_block_len, K)
    min_block_len: int = 4
    acceptance: Literal["exact", "sampling", "guillotine"] = "exact"
    temperature: float = 1.0  # sampling
    top_p: float = 1.0  # sampling
    threshold: float = 0.1  # guillotine: cut at the first token the verifier gives less than this probability
    max_new_tokens: int = 256
    seed: int = 0  # drafting noise and sampling uniforms

    def validate(self) -> None:
        if self.redraft < 0:
            raise ConfigError(f"field 'decode.redraft': expected a number of passes >= 0, got {self.redraft}")
        for name in ("num_candidates", "euler_steps", "max_new_tokens", "min_block_len"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"field 'decode.{name}': expected a positive integer, got {getattr(self, name)}")
        if self.block_len is not None and self.block_len < 1:
            raise ConfigError(f"field 'decode.block_len': expected a positive integer, got {self.block_len}")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ConfigError(f"fields 'decode.temperature' / 'decode.top_p': expected T > 0 and 0 < top_p <= 1, "
                              f"got {self.temperature} / {self.top_p}")
        if not 0 <= self.threshold <= 1:
            raise ConfigError(f"field 'decode.threshold': expected a probability, got {self.threshold}")


@dataclass
class DecodeStats:
    """Per cycle: tokens committed (τ's samples) and the seconds spent drafting, verifying and advancing."""

    accepted: list[int] = field(default_factory=list)
    draft_s: list[float] = field(default_factory=list)
    verify_s: list[float] = field(default_factory=list)
    advance_s: list[float] = field(default_factory=list)
    block_len: list[int] = field(default_factory=list)  # tokens drafted per candidate
    prefill_s: float = 0.0
    verifier_calls: int = 0  # after the prefill: verification, state advance and (reading: verifier) reading

    @property
    def tau(self) -> float:
        """Mean tokens committed per cycle (accepted draft tokens + the verifier's own one)."""
        return sum(self.accepted) / max(len(self.accepted), 1)

    def add(self, other: "DecodeStats") -> None:
        """Append another decode's cycles and counts to these."""
        for name in ("accepted", "draft_s", "verify_s", "advance_s", "block_len"):
            getattr(self, name).extend(getattr(other, name))
        self.prefill_s += other.prefill_s
        self.verifier_calls += other.verifier_calls

    def summary(self) -> dict:
        cycles = len(self.accepted)
        total = self.prefill_s + sum(self.draft_s) + sum(self.verify_s) + sum(self.advance_s)
        return {"cycles": cycles, "tokens": sum(self.accepted), "tau": self.tau,
                "tokens_per_verifier_call": sum(self.accepted) / max(self.verifier_calls, 1),
                "prefill_s": self.prefill_s, "draft_s": sum(self.draft_s), "verify_s": sum(self.verify_s),
                "advance_s": sum(self.advance_s), "mean_block_len": sum(self.block_len) / max(cycles, 1),
                "tok_s": sum(self.accepted) / total if total else 0.0}


def check_pair(dit: CausalDiT, lm: Qwen3_5ForCausalLM) -> None:
    """The drafter must work in this verifier's embedding space and vocabulary."""
    made_for, v = dit.text_config, lm.config
    for name in ("hidden_size", "vocab_size"):
        if getattr(made_for, name) != getattr(v, name):
            raise ConfigError(f"the drafter was built for a verifier with {name}={getattr(made_for, name)}, this "
                              f"verifier has {name}={getattr(v, name)}")


class SpeculativeDecoder:
    """Decodes one prompt at a time with a frozen verifier and a CLSD drafter (both in eval mode, no grad).
    Subclasses draft differently (``draft``) and may follow the text (``start`` after the prefill, ``commit``
    after each cycle)."""

    def __init__(self, lm: Qwen3_5ForCausalLM, drafter: CausalDiT, cfg: DecodeConfig,
                 embedding: torch.Tensor | None = None, policy=None):
        """``embedding``: the verifier's embedding matrix, when the verifier's own is partitioned (ZeRO-3);
        ``policy``: a ``shadow.policy.PolicyConfig`` to sample the DiT stochastically (module docstring)."""
        cfg.validate()
        self.policy, self.trace, self._block = policy, None, None
        if policy is not None and (cfg.candidates != "noise" or not isinstance(drafter, CausalDiT)):
            raise ConfigError("a decoding policy samples a DiT's blocks; it needs decode.candidates noise")
        check_pair(drafter, lm)
        self.lm, self.drafter, self.cfg = lm.eval(), drafter.eval(), cfg
        self.K = cfg.block_len or drafter.cfg.block_len
        self.euler_steps = self.reading = None  # the DiT's sampler and reading (an AR drafter has neither)
        if isinstance(drafter, CausalDiT):
            if self.K > drafter.cfg.block_len:
                raise ConfigError(f"field 'decode.block_len': {self.K} is longer than the drafter's block "
                                  f"({drafter.cfg.block_len})")
            self.euler_steps = cfg.euler_steps or drafter.flow.euler_steps  # by default the sampler it trained with
            tokens = drafter.flow.objective == "tokens"
            self.reading = ("logits" if tokens else "nearest") if cfg.reading == "auto" else cfg.reading
            if self.reading == "logits" and not tokens:
                raise ConfigError("field 'decode.reading': 'logits' reads a drafter trained with flow.objective "
                                  "tokens; this one regresses velocities (use nearest or verifier)")
            if cfg.redraft and (cfg.candidates != "lattice" or not drafter.flow.anchor):
                raise ConfigError("field 'decode.redraft': drafting again after a pivot continues the lattice's "
                                  "candidates from a clean lead; it needs decode.candidates lattice and a drafter "
                                  "trained with flow.anchor (and flow.reveal, to have seen such leads)")
            if cfg.candidates == "lattice" and self.reading != "logits":
                raise ConfigError(f"field 'decode.candidates': 'lattice' branches the drafter's own distributions, "
                                  f"which the logits reading has; this decoder reads by {self.reading}")
            if cfg.candidates == "noise" and cfg.num_candidates > 1 and drafter.flow.source == "mask" and \
                    policy is None:  # (a policy samples every candidate's tokens)
                raise ConfigError(f"field 'decode.num_candidates': {cfg.num_candidates} noise candidates of a drafter "
                                  f"trained with flow.source mask are one draft repeated; use decode.candidates "
                                  f"lattice (or num_candidates 1)")
        elif cfg.candidates == "lattice":
            raise ConfigError("field 'decode.candidates': 'lattice' is for DiT drafters; the AR drafter's N chains "
                              "already branch at its first drafted token")
        self.embedding = lm.get_input_embeddings().weight if embedding is None else embedding
        self.generator = torch.Generator(device=self.embedding.device).manual_seed(cfg.seed)

    @property
    def given(self) -> int:
        """Leading tokens of every candidate accepted by construction: under ``exact``, the verifier's own next token
        where it leads the candidates (an anchored DiT, the verifier reading, the AR drafter's chains)."""
        if self.cfg.acceptance != "exact":
            return 0
        return 1 if self.reading is None else int(self.drafter.flow.anchor or self.reading == "verifier")

    def _pass(self, embeds: torch.Tensor, states: LayerStates, length: int) -> torch.Tensor:
        """Final-norm hidden of ``embeds`` [B, T, d] right after a committed text of ``length`` tokens in ``states``."""
        B = embeds.shape[0]
        mask = torch.ones(B, length, dtype=torch.bool, device=embeds.device)
        lengths = torch.full((B,), length, device=embeds.device)
        return continue_pass(self.lm, embeds, mask, lengths, states)

    def _prefix(self, shared: LayerStates, rows: int, length: int) -> Prefix | None:
        """What a prefix-state DiT reads for ``rows`` candidates: the first rows of ``shared`` after ``length``
        committed tokens (None for a DiT conditioned on C alone)."""
        if not self.drafter.cfg.prefix_state:
            return None
        device = self.embedding.device
        return Prefix(shared.rows(rows), torch.ones(rows, length, dtype=torch.bool, device=device),
                      torch.full((rows,), length, device=device))

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm.get_input_embeddings()(ids)

    def draft(self, h: torch.Tensor, shared: LayerStates, length: int, k: int) -> torch.Tensor:
        """N candidate blocks [N, k] of token ids from one batched DiT sampling conditioned on C = h [1, 1, d] (and,
        for a prefix-state DiT, on ``shared``: the state replicated N times). The DiT is causal: its first k
        positions are the same whether it drafts k or more."""
        N, d = self.cfg.num_candidates, h.shape[-1]
        lattice = self.cfg.candidates == "lattice"
        rows = 1 if lattice else N  # samplings
        cond = h[:, 0].expand(rows, -1)
        dit = self.drafter
        scale = dit.cfg.embed_scale
        prefix = self._prefix(shared, rows, length)
        own = anchor = None  # the verifier's own next token: the anchor, or what a verifier reading starts with
        if dit.flow.anchor or self.reading == "verifier":
            own = self.lm.lm_head(h).argmax(-1).expand(N, 1)
        if dit.flow.anchor:
            anchor = F.embedding(own[:rows, 0], self.embedding) / scale
        readout = Readout(self.lm.lm_head, self.embedding, scale) if dit.flow.objective == "tokens" else None
        x0 = draw_source(dit.flow, (rows, k, d), self.generator, device=h.device, dtype=self.embedding.dtype)
        if self.policy is not None:
            self._block = policy_sample(lambda x, t: dit(x, t, cond, prefix), x0, dit.flow, self.euler_steps,
                                        self.policy, anchor, readout, self.generator,
                                        lambda x: nearest_tokens(x.to(self.embedding.dtype) * scale, self.embedding))
            tokens = self._block.tokens
            return torch.cat([own, tokens[:, 1:]], 1) if dit.flow.anchor else tokens
        x1, logits = sample_block(lambda x, t: dit(x, t, cond, prefix), x0, dit.flow, self.euler_steps, anchor,
                                  readout)
        drafts = x1.to(self.embedding.dtype) * scale
        if self.reading == "logits" and lattice:
            tokens, pivots = branch_candidates(logits[0], N, int(dit.flow.anchor))
            if dit.flow.anchor:
                tokens[:, 0] = own[:, 0]
            for _ in range(self.cfg.redraft):
                tokens, pivots = self.redraft(tokens, pivots, x0, cond, shared, length, readout)
            return tokens
        if self.reading == "logits":
            tokens = logits.argmax(-1)
        elif self.reading == "nearest":
            tokens = nearest_tokens(drafts, self.embedding)
        else:  # the verifier reads the drafts; its own next token leads every candidate
            if k == 1:
                return own
            read = self._pass(drafts[:, :-1], shared, length)
            return torch.cat([own, self.lm.lm_head(read).argmax(-1)], 1)
        return torch.cat([own, tokens[:, 1:]], 1) if dit.flow.anchor else tokens

    def redraft(self, tokens: torch.Tensor, pivots: torch.Tensor, x0: torch.Tensor, cond: torch.Tensor,
                shared: LayerStates, length: int, readout: Readout) -> tuple[torch.Tensor, torch.Tensor]:
        """``tokens`` [N, k] with every row that has positions after its pivot drafted again there, in one batched
        sampling from the same source x0 with the row's positions 0..pivot held clean; and each row's next pivot,
        the most likely failure of its new tokens (k where there is none)."""
        dit, k = self.drafter, tokens.shape[1]
        again = (pivots < k - 1).nonzero().flatten()
        following = torch.full_like(pivots, k)
        if again.numel() == 0:
            return tokens, following
        m, lead = again.numel(), pivots[again] + 1
        clean = F.embedding(tokens[again], self.embedding).float() / dit.cfg.embed_scale
        prefix = self._prefix(shared, m, length)
        _, logits = sample_block(lambda x, t: dit(pin_lead(x, clean, lead), t, cond[:1].expand(m, -1), prefix),
                                 x0[:1].expand(m, -1, -1), dit.flow, self.euler_steps, None, readout)
        after = torch.arange(k, device=tokens.device)[None] >= lead[:, None]
        tokens[again] = torch.where(after, logits.argmax(-1), tokens[again])
        for j, row in enumerate(again.tolist()):
            following[row] = branch_candidates(logits[j], 1, int(lead[j]))[1][0]
        return tokens, following

    def verify(self, tokens: torch.Tensor, shared: LayerStates, length: int, h: torch.Tensor) -> torch.Tensor:
        """Verifier logits [N, K+1, V] for all candidates in one forward from the state replicated N times."""
        N = tokens.shape[0]
        hidden = self._pass(self._embed(tokens), shared, length)
        return self.lm.lm_head(torch.cat([h.expand(N, 1, -1), hidden], 1)).float()

    def advance(self, new: list[int], states: LayerStates, length: int) -> torch.Tensor:
        """Grow ``states`` by the committed tokens ``new``; their final-norm hidden states [1, len(new), d]."""
        return self._pass(self._embed(torch.tensor([new], device=self.embedding.device)), states, length)

    def start(self, ids: torch.Tensor, hidden: torch.Tensor) -> None:
        """After the prefill of ``ids`` [1, L] (final-norm hidden [1, L, d]); the DiT keeps nothing."""

    def commit(self, new: list[int], hidden: torch.Tensor, h: torch.Tensor, length: int) -> None:
        """After ``new`` was committed at positions ``length``.. (hidden [1, len(new), d]; h: the one before)."""

    def accept(self, logits: torch.Tensor, tokens: torch.Tensor) -> tuple[int, int, int]:
        cfg = self.cfg
        if cfg.acceptance == "exact":
            return acceptance.exact(logits, tokens)
        if cfg.acceptance == "sampling":
            u = torch.rand(logits.shape[1], generator=self.generator, device=logits.device, dtype=torch.float64)
            return acceptance.sampling(logits, tokens, u, cfg.temperature, cfg.top_p)
        return acceptance.guillotine(logits, tokens, cfg.threshold)

    def _traced(self, n: int, a: int, length: int, tokens: list[int]) -> dict:
        """What the trainer needs of the cycle's chosen block (module docstring): its log-probability over the
        ``scored`` positions the policy's credit gives (``shadow/policy.py``)."""
        block, K = self._block, len(tokens)
        scored = min(a + 1, K) if self.policy.credit == "decided" and self.cfg.num_candidates == 1 else K
        logp = block.logp[n] - block.token_logp[n, scored:].sum()
        return {"length": length, "states": block.states[:, n], "tokens": tokens, "logp": float(logp),
                "accepted": a, "scored": scored}

    @torch.no_grad()
    def generate(self, prompt: list[int], eos_id: int | None = None,
                 max_cycles: int | None = None) -> tuple[list[int], DecodeStats]:
        """The new tokens after ``prompt`` (ending at EOS, included, at max_new_tokens, or after ``max_cycles``
        cycles) and the cycle stats."""
        if not prompt:
            raise ValueError("generate: the prompt needs at least one token (e.g. the document-start token)")
        stats, device = DecodeStats(), self.embedding.device
        t = time.perf_counter()
        ids = torch.tensor([prompt], device=device)
        hidden, states = prefix_pass(self.lm, self._embed(ids), torch.ones_like(ids, dtype=bool),
                                     grow=True)
        self.start(ids, hidden)
        h, length, out, k, recent = hidden[:, -1:], len(prompt), [], self.K, float(self.K)
        stats.prefill_s = time.perf_counter() - t
        while len(out) < self.cfg.max_new_tokens and (eos_id is None or not out or out[-1] != eos_id) and \
                (max_cycles is None or len(stats.accepted) < max_cycles):
            t0 = time.perf_counter()
            shared = states.repeat_interleave(self.cfg.num_candidates)  # read-only copies for the candidates
            tokens = self.draft(h, shared, length, k)
            t1 = time.perf_counter()
            n, a, nxt = self.accept(self.verify(tokens, shared, length, h), tokens)
            t2 = time.perf_counter()
            if self.trace is not None and self._block is not None:
                self.trace.append(self._traced(n, a, length, tokens[n].tolist()))
            new = tokens[n, :a].tolist() + [nxt]
            if eos_id is not None and eos_id in new:
                new = new[: new.index(eos_id) + 1]
            new = new[: self.cfg.max_new_tokens - len(out)]
            hidden = self.advance(new, states, length)
            self.commit(new, hidden, h, length)
            h = hidden[:, -1:]
            length += len(new)
            out += new
            stats.accepted.append(len(new))
            stats.block_len.append(k)
            if self.cfg.adaptive_block:
                recent = 0.5 * recent + 0.5 * a
                k = min(self.K, max(self.cfg.min_block_len, 2 ** math.ceil(math.log2(max(2 * recent, 1)))))
            stats.verifier_calls += 2 + (self.reading == "verifier")
            stats.draft_s.append(t1 - t0)
            stats.verify_s.append(t2 - t1)
            stats.advance_s.append(time.perf_counter() - t2)
        return out, stats
