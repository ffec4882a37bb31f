"""The verifier's per-layer state after a prefix, and passes over the verifier's layers that record or reuse it.

State per layer: keys and values for the attention layers; the causal-conv window and the recurrent matrix for the
Gated DeltaNet layers. ``LayerStates`` speaks the part of Hugging Face's cache protocol that the Qwen3.5 layers
call. A layer with no state yet *records* what a pass writes (the prefix pass, under no_grad); a layer with state is
*read and never written*, so any number of later passes (with grad, recomputed by checkpointing, or one per
candidate) start from the same prefix. HF's own caches update the DeltaNet state in place, which breaks autograd
when a pass with grad starts from a cached state; this one never does.

Prefixes are left-aligned (padding first) so that every row's last prefix token sits at the same index; padded
positions are masked out of attention and zeroed at the DeltaNet's input (HF's padding handling), which leaves the
DeltaNet state exactly as if the padding were not there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers import Qwen3_5ForCausalLM


class LayerStates:
    """Per-layer prefix state; records on first use, read-only afterwards (HF cache protocol subset).

    ``grow=True`` (decoding) makes every pass extend the state instead: keys and values are appended, the conv
    window slides, the recurrent matrix is replaced by the pass's final one. Copies made by ``repeat_interleave``
    (the candidates' shared prefix) are read-only again.
    """

    def __init__(self, grow: bool = False):
        self.grow = grow
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.conv: dict[int, torch.Tensor] = {}
        self.recurrent: dict[int, torch.Tensor] = {}

    # -- attention layers -----------------------------------------------------------------------------
    def update(self, keys: torch.Tensor, values: torch.Tensor, layer_idx: int, *args, **kwargs):
        if layer_idx in self.keys:
            keys = torch.cat([self.keys[layer_idx], keys], dim=2)
            values = torch.cat([self.values[layer_idx], values], dim=2)
        if self.grow or layer_idx not in self.keys:
            self.keys[layer_idx], self.values[layer_idx] = keys, values
        return keys, values

    # -- Gated DeltaNet layers ------------------------------------------------------------------------
    def get_conv_state(self, layer_idx: int, state_idx: int = 0):
        return self.conv.get(layer_idx)

    def get_recurrent_state(self, layer_idx: int, state_idx: int = 0):
        return self.recurrent.get(layer_idx)

    def is_recording_past(self, layer_idx: int) -> bool:
        return True  # keeps HF on its general path for 1-token passes (its 1-token path writes the conv state)

    def update_conv_state(self, conv_input: torch.Tensor, layer_idx: int, conv_kernel_size: int, **kwargs):
        """Return the conv input with the prefix's window in front; record the (new) window when recording."""
        full = torch.cat([self.conv[layer_idx], conv_input], dim=-1) if layer_idx in self.conv else conv_input
        if self.grow or layer_idx not in self.conv:
            window = full[..., -conv_kernel_size:]
            pad = conv_kernel_size - window.shape[-1]
            self.conv[layer_idx] = torch.nn.functional.pad(window, (pad, 0)) if pad > 0 else window
        return full

    def update_recurrent_state(self, state: torch.Tensor, layer_idx: int, **kwargs):
        if self.grow or layer_idx not in self.recurrent:
            self.recurrent[layer_idx] = state
        return state

    def fork(self) -> "LayerStates":
        """A grow-mode copy sharing the tensors: growing it replaces its entries and leaves these untouched."""
        out = LayerStates(grow=True)
        for name in ("keys", "values", "conv", "recurrent"):
            setattr(out, name, dict(getattr(self, name)))
        return out

    def repeat_interleave(self, n: int) -> "LayerStates":
        """The same states for n candidates per row (row b becomes rows b*n .. b*n+n-1)."""
        out = LayerStates()
        for name in ("keys", "values", "conv", "recurrent"):
            setattr(out, name, {i: t.repeat_interleave(n, dim=0) for i, t in getattr(self, name).items()})
        return out

    def rows(self, n: int) -> "LayerStates":
        """The first n rows (views), read-only."""
        out = LayerStates()
        for name in ("keys", "values", "conv", "recurrent"):
            setattr(out, name, {i: t[:n] for i, t in getattr(self, name).items()})
        return out


@dataclass
class Prefix:
    """The verifier's per-layer state after each row's (left-aligned) prefix, for ``prefix_state`` DiTs."""

    states: LayerStates  # recorded by prefix_pass: read-only
    mask: torch.Tensor  # [B, P] real prefix tokens
    lengths: torch.Tensor  # [B] prefix lengths

    def repeat_interleave(self, n: int) -> "Prefix":
        """The same prefixes for n blocks per row."""
        return Prefix(self.states.repeat_interleave(n), self.mask.repeat_interleave(n, dim=0),
                      self.lengths.repeat_interleave(n, dim=0))


def left_align(prefix: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded prefixes [B, P] -> (left-padded ids [B, P], bool mask of real tokens)."""
    P = prefix.shape[1]
    lengths = lengths.to(prefix.device)
    src = torch.arange(P, device=prefix.device)[None] - (P - lengths)[:, None]  # column of the right-padded row
    mask = src >= 0
    return prefix.gather(1, src.clamp(min=0)) * mask, mask


def attention_bias(key_mask: torch.Tensor, queries: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive [B, 1, Q, Kv] mask: the last Q of the Kv keys are the queries, causal, masked keys excluded."""
    kv = key_mask.shape[1]
    q_pos = torch.arange(kv - queries, kv, device=key_mask.device)
    allowed = (torch.arange(kv, device=key_mask.device)[None] <= q_pos[:, None])[None] & key_mask[:, None]
    bias = torch.zeros(allowed.shape, dtype=dtype, device=key_mask.device)
    return bias.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def run_layers(lm: Qwen3_5ForCausalLM, embeds: torch.Tensor, positions: torch.Tensor, key_mask: torch.Tensor,
               states: LayerStates | None, new_mask: torch.Tensor | None = None,
               checkpoint_every: int = 0) -> torch.Tensor:
    """Final-norm hidden states of ``embeds`` [B, T, d] at ``positions`` [B, T], after whatever ``states`` holds
    (None: no prefix, nothing recorded).

    ``key_mask`` [B, Kv] marks the real tokens among all keys (the prefix's, then these T); ``new_mask`` [B, T] marks
    padding among the new positions (None: none). With ``checkpoint_every = k > 0`` and grad enabled, every k
    layers form one activation-checkpointed segment.
    """
    model = lm.model
    B, T, _ = embeds.shape
    position_embeddings = model.rotary_emb(embeds, positions[None].expand(3, B, T))
    bias = attention_bias(key_mask, T, embeds.dtype)
    layers = list(model.layers)

    def segment(h: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        for layer in layers[start:stop]:
            mask = bias if layer.block_type == "full_attention" else new_mask
            h = layer(h, position_embeddings=position_embeddings, attention_mask=mask, position_ids=positions,
                      past_key_values=states)
        return h

    h = embeds
    step = checkpoint_every if checkpoint_every > 0 and torch.is_grad_enabled() else len(layers)
    for start in range(0, len(layers), step):
        if step < len(layers):
            h = checkpoint(segment, h, start, start + step, use_reentrant=False)
        else:
            h = segment(h, start, start + step)
    return model.norm(h)


@torch.no_grad()
def prefix_pass(lm: Qwen3_5ForCausalLM, embeds: torch.Tensor, mask: torch.Tensor,
                grow: bool = False) -> tuple[torch.Tensor, LayerStates]:
    """Left-aligned prefix embeddings [B, P] (mask: real tokens) -> (final-norm hidden [B, P, d], their states)."""
    states = LayerStates(grow)
    positions = (mask.long().cumsum(1) - 1).clamp(min=0)
    hidden = run_layers(lm, embeds, positions, mask, states, new_mask=mask)
    return hidden, states


def continue_pass(lm: Qwen3_5ForCausalLM, embeds: torch.Tensor, prefix_mask: torch.Tensor, lengths: torch.Tensor,
                  states: LayerStates, checkpoint_every: int = 0) -> torch.Tensor:
    """Final-norm hidden states of new positions [B, T] right after each prefix, from its recorded states."""
    T = embeds.shape[1]
    positions = lengths.to(embeds.device)[:, None] + torch.arange(T, device=embeds.device)
    key_mask = torch.cat([prefix_mask, torch.ones_like(prefix_mask[:, :1]).expand(-1, T)], dim=1)
    return run_layers(lm, embeds, positions, key_mask, states, checkpoint_every=checkpoint_every)


def full_pass(lm: Qwen3_5ForCausalLM, prefix_embeds: torch.Tensor, prefix_mask: torch.Tensor, embeds: torch.Tensor,
              checkpoint_every: int = 0) -> torch.Tensor:
    """One pass over [left-aligned prefix | new positions] from scratch (the naive path): hidden [B, P + T, d]."""
    T = embeds.shape[1]
    mask = torch.cat([prefix_mask, torch.ones_like(prefix_mask[:, :1]).expand(-1, T)], dim=1)
    positions = (mask.long().cumsum(1) - 1).clamp(min=0)
    return run_layers(lm, torch.cat([prefix_embeds, embeds], dim=1), positions, mask, None, new_mask=mask,
                      checkpoint_every=checkpoint_every)


@torch.no_grad()
def read_prefixes(lm: Qwen3_5ForCausalLM, prefix: torch.Tensor, lengths: torch.Tensor,
                  embedding: torch.Tensor) -> tuple[torch.Tensor, Prefix]:
    """Right-padded prefixes [B, P] of ``lengths`` -> (C: the final-norm state at each last token [B, d], the
    per-layer state after each prefix), embedding the ids with ``embedding``."""
    ids, mask = left_align(prefix, lengths)
    hidden, states = prefix_pass(lm, F.embedding(ids, embedding), mask)
    return hidden[:, -1], Prefix(states, mask, lengths.to(hidden.device))
