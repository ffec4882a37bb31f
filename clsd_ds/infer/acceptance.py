"""Which drafted tokens the verifier keeps.

Every rule reads ``logits`` [N, K+1, V], where row n, position i is the verifier's prediction for block token i given
the committed text and candidate n's tokens before i (position K: the token after a fully accepted block), and
``tokens`` [N, K], the candidates. It returns (candidate n, accepted draft length a, the verifier's token at a):
the cycle commits ``tokens[n, :a]`` and then that token, so it always makes progress.

- ``exact``: accept while the candidate equals the verifier's argmax; the output is the verifier's greedy text.
- ``sampling``: one uniform u_i per block position, shared by all candidates, draws the verifier's token at i by
  inverse CDF. Candidates that agree up to i share the verifier's context, hence its distribution and its draw, so
  the committed text is a draw of the verifier's own sampling (fresh uniforms every cycle).
- ``guillotine`` (lossy, the model card's rule): take the candidate with the highest mean verifier log-prob over
  the block and cut it at the first token whose verifier probability is below ``threshold``.
"""

from __future__ import annotations

from collections import Counter

import torch


def accepted_lengths(tokens: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per candidate, the length of the prefix where ``tokens`` [N, K] equals ``target`` [N, K]."""
    return (tokens == target).long().cumprod(1).sum(1)


def _longest(tokens: torch.Tensor, target: torch.Tensor) -> tuple[int, int, int]:
    a = accepted_lengths(tokens, target[:, :-1])
    n = int(a.argmax())  # the first of the longest
    return n, int(a[n]), int(target[n, a[n]])


def exact(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[int, int, int]:
    return _longest(tokens, logits.argmax(-1))


def sampling_probs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """softmax(logits / T), restricted to the smallest most-probable set of mass >= top_p and renormalised."""
    probs = torch.softmax(logits.double() / temperature, -1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        outside = sorted_p.cumsum(-1) - sorted_p >= top_p  # the mass before this token already reaches top_p
        probs = probs.scatter(-1, order, sorted_p.masked_fill(outside, 0.0))
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The token whose CDF interval holds u (u in [0, 1), one per distribution)."""
    cdf = probs.cumsum(-1)
    return (cdf < u[..., None] * cdf[..., -1:]).sum(-1).clamp_(max=probs.shape[-1] - 1)


def sampling(logits: torch.Tensor, tokens: torch.Tensor, u: torch.Tensor, temperature: float,
             top_p: float) -> tuple[int, int, int]:
    """``u`` [K+1]: the cycle's uniforms, one per block position, the same for every candidate."""
    target = inverse_cdf(sampling_probs(logits, temperature, top_p), u[None].expand(logits.shape[0], -1))
    return _longest(tokens, target)


def guillotine(logits: torch.Tensor, tokens: torch.Tensor, threshold: float) -> tuple[int, int, int]:
    K = tokens.shape[1]
    logp = torch.log_softmax(logits[:, :K].double(), -1).gather(-1, tokens[..., None])[..., 0]
    n = int(logp.mean(1).argmax())
    a = int((logp[n].exp() >= threshold).long().cumprod(0).sum())
    return n, a, int(logits[n, a].argmax())


def conditional_acceptance(histogram: dict, given: int) -> list[float]:
    """α_i = P(drafted token i accepted | drafted tokens < i accepted), i = 1, 2, ..., from a histogram {tokens
    committed in a cycle: cycles}, where a cycle commits ``given`` tokens accepted by construction (the verifier's
    own next token leading every candidate, under ``exact``), then the accepted drafted ones, then the verifier's
    token; α_i = #(accepted >= i) / #(accepted >= i - 1), up to the longest accepted run. (A cycle cut short by
    the end of the text counts as a rejection after its last token.)"""
    accepted = Counter()
    for committed, cycles in histogram.items():
        accepted[max(0, int(committed) - 1 - given)] += cycles
    out, reached = [], sum(accepted.values())
    for i in range(1, max(accepted, default=0) + 1):
        nxt = reached - accepted[i - 1]
        out.append(nxt / reached if reached else 0.0)
        reached = nxt
    return out
