"""N candidate blocks from one draft's per-position distributions: the argmax path and its best single branches.

With p_i the drafter's distribution at block position i, the path a_i = argmax p_i reaches position i (every token
before it accepted) with probability R_i = prod_{first <= j < i} p_j(a_j), were the positions independent. A
branch (i, r) is the path with a_i replaced by the r-th most probable token at i; it adds acceptance only where
the path fails at i, so it is worth R_i * p_i(r-th). The candidates are the path and the N - 1 branches of highest
worth; positions after a branch keep the path's tokens. (DiffuSpec searches the same top-k lattice for whole
paths; a one-step drafter's later positions do not depend on the branch, so single branches are what it can
offer.) Positions before ``first`` (the anchor) are given and never branched.

A drafter trained with ``flow.reveal`` can do better than keep the path after a branch: ``decode.redraft`` drafts
each candidate again with its tokens up to its pivot held clean — a branch's pivot is its position, the path's is
the position of the best branch (its most likely failure) — so what follows depends on the branch.
"""

from __future__ import annotations

import torch


def branch_candidates(logits: torch.Tensor, n: int, first: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """[n, K] token ids from logits [K, V]: row 0 the argmax path, rows 1.. its branches by descending worth (the
    path again when the block has fewer than n - 1 branches); and each row's pivot [n] (K where it has none)."""
    K, V = logits.shape
    probs = logits.float().softmax(-1)
    top_p, top_i = probs.topk(min(max(n, 2), V), dim=-1)  # [K, r]: at least the 2nd token, for the path's pivot
    path = top_i[:, 0]
    rows, pivots = path.repeat(n, 1), torch.full((n,), K, dtype=torch.long, device=logits.device)
    if K <= first or top_p.shape[1] == 1:
        return rows, pivots
    reach = torch.ones(K, device=logits.device)
    reach[first + 1:] = top_p[first:-1, 0].cumprod(0)
    worth = (reach[:, None] * top_p[:, 1:])[first:]  # [K - first, r - 1]: branches to the 2nd.. r-th token
    picks = worth.flatten().topk(min(max(n - 1, 1), worth.numel())).indices
    pivots[0] = first + picks[0] // worth.shape[1]
    for row, flat in enumerate(picks.tolist()[: n - 1], start=1):
        i, r = divmod(flat, worth.shape[1])
        rows[row, first + i] = top_i[first + i, r + 1]
        pivots[row] = first + i
    return rows, pivots
