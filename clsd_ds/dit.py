"""The hybrid causal DiT: grafted Qwen3.5 decoder layers wrapped with adaLN modulation.

Input/output live in the rescaled embedding space of ``flow.py`` (embeddings / embed_scale). For a block of K
noisy embeddings x_t, timestep t and conditioning vector C:

    h_0 = x_t * embed_scale + P[:K]                                   (P: learned positions, zero-init)
    c   = MLP(sinusoid(t)) + W_c C                                    (W_c: optional linear projection of C)
    per block, with (shift, scale, gate) x 2 = Linear(SiLU(c)) (zero-init):
        h = h + g_1 * Mixer(RMSNorm_1(h) * (1 + scale_1) + shift_1)   (Mixer: the HF Gated DeltaNet or attention)
        h = h + g_2 * MLP(RMSNorm_2(h) * (1 + scale_2) + shift_2)
    v = Linear(RMSNorm_f(h) * (1 + scale_f) + shift_f)               (zero-init output: v = 0 at init)

With ``prefix_state`` (after Orthrus) every block's mixer also continues from the verifier's state after the prefix
for the layer it was grafted from — attention attends to that layer's prefix keys/values, the Gated DeltaNet starts
from its conv window and recurrent matrix — and positions continue after the prefix, so the drafter reads the whole
prefix, not only C. The state is read, never written (``verifier_state.LayerStates``).

``gate_init: zero`` (adaLN-Zero, the seed) uses g = gate, so every block is the identity at init;
``gate_init: one`` uses g = 1 + gate, so every block computes exactly its source Qwen layer at init.
Why project C: C is a final-norm state whose scale is set by the verifier's norm weights, not by the timestep
MLP; a learned d x d map lets the model balance the two before they share the modulation (``cond_proj: false``
sums C as-is, like the seed).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint
from transformers import Qwen3_5TextConfig
from transformers.masking_utils import create_causal_mask
from transformers.models.qwen3_5.modeling_qwen3_5 import (
    Qwen3_5DecoderLayer,
    Qwen3_5RMSNorm,
    Qwen3_5TextRotaryEmbedding,
)

from .config import ConfigError
from .export import read_export, write_export
from .flow import FlowConfig
from .verifier_state import Prefix, attention_bias

EXPORT_CONFIG = "dit_config.json"


@dataclass
class DiTConfig:
    num_layers: int = 12
    layers: list[int] | None = None  # source verifier layers; default: STRIDE_INDICES (32 layers) or an even spread
    block_len: int = 128
    gate_init: Literal["zero", "one"] = "zero"
    cond_proj: bool = True
    freq_dim: int = 256  # sinusoidal timestep features
    embed_scale: float | None = None  # None: RMS of the verifier's embedding matrix
    checkpointing: bool = False  # activation checkpointing per block
    prefix_state: bool = False  # blocks continue from the verifier's prefix state of their source layers

    def validate(self) -> None:
        for name in ("num_layers", "block_len", "freq_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"field 'dit.{name}': expected a positive integer, got {getattr(self, name)}")
        if self.freq_dim % 2:
            raise ConfigError(f"field 'dit.freq_dim': expected an even number, got {self.freq_dim}")
        if self.embed_scale is not None and self.embed_scale <= 0:
            raise ConfigError(f"field 'dit.embed_scale': expected a positive number, got {self.embed_scale}")


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    """t in [0, 1] -> sinusoidal features of 1000 t (as DiT's integer timesteps) -> 2-layer MLP."""

    def __init__(self, hidden: int, freq_dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        for lin in (self.mlp[0], self.mlp[2]):
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = 1000.0 * t.float()[:, None] * freqs[None]
        feats = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(feats.to(self.mlp[0].weight.dtype))


class DiTBlock(nn.Module):
    """One grafted Qwen3.5 decoder layer (used as-is: its norms, mixer and MLP) under adaLN modulation."""

    def __init__(self, layer: Qwen3_5DecoderLayer, hidden: int, gate_one: bool):
        super().__init__()
        self.layer = layer
        self.gate_one = gate_one
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))
        nn.init.zeros_(self.adaLN[1].weight)
        nn.init.zeros_(self.adaLN[1].bias)

    def forward(self, h, c, position_embeddings, attention_mask, states=None):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN(c)[:, None].chunk(6, dim=-1)
        if self.gate_one:
            gate1, gate2 = 1 + gate1, 1 + gate2
        layer = self.layer
        x = modulate(layer.input_layernorm(h), shift1, scale1)
        # Positional arguments: ZeRO-3's hooks see only positional inputs (they release parameters after backward).
        if layer.block_type == "linear_attention":
            mixed = layer.linear_attn(x, states)
        else:
            mixed, _ = layer.self_attn(x, position_embeddings, attention_mask, states)
        h = h + gate1 * mixed
        x = modulate(layer.post_attention_layernorm(h), shift2, scale2)
        return h + gate2 * layer.mlp(x)


class FinalLayer(nn.Module):
    """RMSNorm (the verifier's final norm) -> adaLN shift/scale -> zero-init linear to the velocity."""

    def __init__(self, norm: Qwen3_5RMSNorm, hidden: int):
        super().__init__()
        self.norm = norm
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.linear = nn.Linear(hidden, hidden)
        for lin in (self.adaLN[1], self.linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, h, c):
        shift, scale = self.adaLN(c)[:, None].chunk(2, dim=-1)
        return self.linear(modulate(self.norm(h), shift, scale))


class CausalDiT(nn.Module):
    """v_theta(x_t, t, C): the velocity of a K-token block in the rescaled embedding space.

    ``flow`` is the flow the drafter is trained with (set by the training stage, recorded in its export): the
    decoder samples with its ``euler_steps`` unless told otherwise, so drafting uses the trained sampler."""

    def __init__(self, text_config: Qwen3_5TextConfig, cfg: DiTConfig, layers: list[nn.Module] | None = None,
                 final_norm: Qwen3_5RMSNorm | None = None, flow: FlowConfig | None = None):
        super().__init__()
        if cfg.layers is None or cfg.embed_scale is None:
            raise ValueError("CausalDiT needs a resolved config (layers and embed_scale): build it with graft()")
        d = text_config.hidden_size
        self.text_config = text_config
        self.cfg = cfg
        self.flow = flow or FlowConfig()
        if layers is None:
            layers = [Qwen3_5DecoderLayer(text_config, i) for i in cfg.layers]
        if final_norm is None:
            final_norm = Qwen3_5RMSNorm(d, eps=text_config.rms_norm_eps)
        self.pos_emb = nn.Parameter(torch.zeros(1, cfg.block_len, d))
        self.t_embed = TimestepEmbedder(d, cfg.freq_dim)
        self.cond_proj = nn.Linear(d, d) if cfg.cond_proj else nn.Identity()
        self.blocks = nn.ModuleList([DiTBlock(layer, d, cfg.gate_init == "one") for layer in layers])
        self.rotary = Qwen3_5TextRotaryEmbedding(text_config)
        self.final = FinalLayer(final_norm, d)

    @property
    def layer_types(self) -> list[str]:
        return [b.layer.block_type for b in self.blocks]

    def conditioning(self, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """c = MLP(sinusoid(t)) + W_c C, the vector every adaLN reads."""
        dtype = self.pos_emb.dtype
        return self.t_embed(t) + self.cond_proj(cond.to(dtype))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                prefix: Prefix | None = None) -> torch.Tensor:
        B, K, _ = x_t.shape
        if K > self.cfg.block_len:
            raise ValueError(f"block of {K} tokens is longer than dit.block_len={self.cfg.block_len}")
        if self.cfg.prefix_state != (prefix is not None):
            raise ValueError("the DiT was built with dit.prefix_state=true: pass the verifier's prefix state"
                             if self.cfg.prefix_state else "a prefix state was passed to a DiT built without "
                             "dit.prefix_state")
        h = x_t.to(self.pos_emb.dtype) * self.cfg.embed_scale + self.pos_emb[:, :K]
        c = self.conditioning(t, cond)
        offsets = torch.arange(K, device=h.device)[None]
        if prefix is None:
            position_ids = offsets.expand(B, K)
            mask = create_causal_mask(config=self.text_config, inputs_embeds=h, attention_mask=None,
                                      past_key_values=None, position_ids=position_ids)
            states = None
        else:  # the block continues each prefix: positions after it, its keys visible, the DeltaNet state carried
            position_ids = prefix.lengths.to(h.device)[:, None] + offsets
            mask = attention_bias(torch.cat([prefix.mask, prefix.mask.new_ones(B, K)], 1), K, h.dtype)
            states = prefix.states
        position_embeddings = self.rotary(h, position_ids[None].expand(3, B, K))  # Qwen3.5's rotary: (3, B, T)
        for block in self.blocks:
            if self.cfg.checkpointing and self.training and torch.is_grad_enabled():
                h = checkpoint(block, h, c, position_embeddings, mask, states, use_reentrant=False)
            else:
                h = block(h, c, position_embeddings, mask, states)
        return self.final(h, c)


def save_dit(state_dict: dict[str, torch.Tensor], text_config: Qwen3_5TextConfig, cfg: DiTConfig,
             out_dir: str | Path, flow: FlowConfig) -> Path:
    """Write ``model.safetensors`` + ``dit_config.json`` (architecture, the trained flow, the verifier config):
    everything ``load_dit`` needs, no DeepSpeed."""
    meta = {"format": "clsd-dit", "version": 1, "dit": asdict(cfg), "flow": asdict(flow)}
    return write_export(out_dir, state_dict, EXPORT_CONFIG, meta, text_config)


def exported_flow(meta: dict) -> FlowConfig:
    """The flow an export was trained with; exports written before it was recorded get the defaults."""
    return FlowConfig(**meta.get("flow", {}))


def load_dit(path: str | Path, dtype: torch.dtype = torch.float32, device="cpu") -> CausalDiT:
    """Rebuild an exported DiT from its directory (strict: every weight must be present and used)."""
    meta, text_config, state = read_export(path, EXPORT_CONFIG, "load_dit")
    dit = CausalDiT(text_config, DiTConfig(**meta["dit"]), flow=exported_flow(meta))
    dit.load_state_dict(state, strict=True)
    return dit.to(device=device, dtype=dtype)
