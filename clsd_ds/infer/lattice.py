"""N candidate blocks from one draft's per-position distributions: the draft tree of highest expected acceptance.

With p_i the drafter's distribution at block position i, taken as independent, the verifier's greedy tokens y
agree with a candidate c on its first j positions with probability prod_{first <= l < j} p_l(c_l). A set S of
candidates commits, beyond the positions before ``first`` (the anchor, given and never branched),

    E[max_{c in S} accepted(c)] = sum over the distinct prefixes u of the rows of S of  prod_{l in u} p_l(u_l),

the total probability of the nodes of S's prefix tree. The rows are chosen greedily on that sum: row 0 is the argmax
path a; each next row leaves an existing row x at position i for another of p_i's top tokens t (a node not yet in
the tree) and then follows the argmax path, which adds

    gain(x, i, t) = prod_{first <= l < i} p_l(x_l) · p_i(t) · (1 + sum_{j > i} prod_{i < l <= j} p_l(a_l)),

the new node and its argmax continuation. Rows may so leave a branch again (a tree, not only single branches).
DiffuSpec searches the same top-k lattice for whole paths; a one-step drafter's later positions do not depend on
the branch, so the argmax continuation is the best a row can do after it.
"""

from __future__ import annotations

import torch


def tree_mass(rows: torch.Tensor, probs: torch.Tensor, first: int = 0) -> float:
    """The expected committed drafted positions of candidate ``rows`` [n, K] under per-position ``probs`` [K, V]:
    the summed probability of the distinct prefixes (positions ``first``..) of the rows."""
    seen, total = set(), 0.0
    for row in rows.tolist():
        mass = 1.0
        for i in range(first, len(row)):
            mass *= float(probs[i, row[i]])
            node = tuple(row[first:i + 1])
            if node not in seen:
                seen.add(node)
                total += mass
    return total


def branch_candidates(logits: torch.Tensor, n: int, first: int = 0) -> torch.Tensor:
    """[n, K] token ids from logits [K, V]: row 0 the argmax path, rows 1.. by descending gain (the path again when
    nothing is left to add: a block with fewer than n - 1 possible branches)."""
    K, V = logits.shape
    probs = logits.float().softmax(-1)
    top_p, top_i = probs.topk(min(n, V), dim=-1)  # [K, R]: a tree of n rows uses at most n tokens at a position
    path = top_i[:, 0]
    rows = path.repeat(n, 1)
    if n == 1 or K <= first or top_p.shape[1] == 1:
        return rows
    tail = torch.zeros(K, device=logits.device)  # tail_i = sum_{j > i} prod_{i < l <= j} a_l
    for i in range(K - 2, -1, -1):
        tail[i] = top_p[i + 1, 0] * (1 + tail[i + 1])
    positions = torch.arange(K, device=logits.device)
    for m in range(1, n):
        tree = rows[:m]  # [m, K]
        p_rows = probs[positions, tree]  # [m, K]: p_l(x_l)
        p_rows[:, :first] = 1
        before = torch.cat([torch.ones(m, 1, device=logits.device), p_rows[:, :-1].cumprod(1)], 1)  # prod_{l < i}
        same = (tree[:, None] == tree[None]).float()  # [m, m, K]: rows x and y agree at l
        same[:, :, :first] = 1
        shared = torch.cat([torch.ones(m, m, 1, device=logits.device), same[:, :, :-1].cumprod(2)], 2).bool()
        taken = tree[:, :, None] == top_i[None]  # [m, K, R]: row y holds top token r at i
        exists = (shared[:, :, :, None] & taken[None]).any(1)  # [m, K, R]: node (x[:i], t_r) already in the tree
        gain = before[:, :, None] * top_p[None] * (1 + tail)[None, :, None]
        gain = gain.masked_fill(exists, 0)
        gain[:, :first] = 0
        best = int(gain.flatten().argmax())
        if float(gain.flatten()[best]) <= 0:
            break
        x, rest = divmod(best, K * top_p.shape[1])
        i, r = divmod(rest, top_p.shape[1])
        rows[m, :i] = tree[x, :i]
        rows[m, i] = top_i[i, r]
    return rows
