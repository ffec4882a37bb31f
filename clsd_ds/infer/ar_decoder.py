"""Speculative decoding with the autoregressive (EAGLE-style) drafter: the same cycle, verification and acceptance
as the CLSD decoder, with candidates drafted token by token (``ar_drafter.py``).

The drafter keeps its own keys/values over the committed text (one per position j, from the verifier's feature of
token j-1 and the embedding of token j), extended after every cycle with the committed tokens' true features.
Drafting grows forks of that state (``LayerStates.fork``), which leaves the committed state untouched.
"""

from __future__ import annotations

import torch

from ..verifier_state import LayerStates
from .decoder import SpeculativeDecoder


class ARSpeculativeDecoder(SpeculativeDecoder):
    """``SpeculativeDecoder(lm, ARDrafter, DecodeConfig)``: K defaults to the drafter's ``block_len``."""

    def _step(self, feats: torch.Tensor, ids: torch.Tensor, first: int, states: LayerStates,
              past: int) -> torch.Tensor:
        """Drafter features [B, T, d] for tokens ``ids`` [B, T] at positions first.. after ``past`` keys in
        ``states`` (``feats``: the features of the tokens before them)."""
        B, T = ids.shape
        positions = first + torch.arange(T, device=ids.device)[None].expand(B, T)
        key_mask = torch.ones(B, past + T, dtype=torch.bool, device=ids.device)
        return self.drafter(feats, self._embed(ids), positions, key_mask, states)

    def start(self, ids: torch.Tensor, hidden: torch.Tensor) -> None:
        """One drafter pass over the prompt, whatever its length (ZeRO-3 ranks must call the drafter alike)."""
        self.state, self.keys = LayerStates(grow=True), ids.shape[1]
        self._step(torch.cat([torch.zeros_like(hidden[:, :1]), hidden[:, :-1]], 1), ids, 0, self.state, 0)

    def commit(self, new: list[int], hidden: torch.Tensor, h: torch.Tensor, length: int) -> None:
        self._step(torch.cat([h, hidden[:, :-1]], 1), torch.tensor([new], device=h.device), length, self.state,
                   self.keys)
        self.keys += len(new)

    def draft(self, h: torch.Tensor, shared: LayerStates, length: int, k: int) -> torch.Tensor:
        return self.chains(h, length, k)[0]

    def chains(self, h: torch.Tensor, length: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """N chains [N, k]: the verifier's own next token, then the drafter's N most likely next tokens, each
        continued greedily; and the drafter's features behind the drafted tokens [N, k - 1, d]."""
        N, head = self.cfg.num_candidates, self.lm.lm_head
        first = head(h).argmax(-1)  # [1, 1]: x_L
        if k == 1:
            return first.expand(N, 1), h.new_zeros(N, 0, h.shape[-1])
        states = self.state.fork()
        f = self._step(h, first, length, states, self.keys)  # f̂_L
        chains = [first.expand(N, 1), head(f[:, -1]).float().topk(N, dim=-1).indices.view(N, 1)]
        states, f = states.repeat_interleave(N), f.expand(N, -1, -1)
        states.grow, feats = True, [f]
        for i in range(2, k):
            f = self._step(f, chains[-1], length + i - 1, states, self.keys + i - 1)
            feats.append(f)
            chains.append(head(f[:, -1]).argmax(-1, keepdim=True))
        return torch.cat(chains, 1), torch.cat(feats, 1)
