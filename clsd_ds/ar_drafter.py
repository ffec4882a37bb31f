"""An autoregressive drafter in the EAGLE style: the baseline the CLSD drafter is compared against.

Position j reads the verifier's final-norm feature of the token before it and the embedding of its own token:
    u_j  = W [f_{j-1} ; E[x_j]]                    (W: 2d -> d; f_{-1} = 0)
    f̂_j  = Norm(Layer(u_{<=j}))                    (one decoder layer and the final norm, grafted from the verifier)
    p(x_{j+1}) = softmax(lm_head(f̂_j))             (the verifier's own frozen head)
Training on the verifier's features of true text (teacher forcing):
    L = SmoothL1(f̂_j, f_j) + ce_weight · CE(lm_head(f̂_j), x_{j+1})
Drafting after a committed text x_{<L} whose features are known: x_L is the verifier's own next token; f̂_L comes
from (f_{L-1}, x_L), x̂_{L+1} = argmax lm_head(f̂_L), then f̂_{L+1} from (f̂_L, x̂_{L+1}), and so on. N candidates
branch at the first drafted token (its N most likely values), each continued greedily: a one-level tree.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
from transformers import Qwen3_5TextConfig
from transformers.models.qwen3_5.modeling_qwen3_5 import (
    Qwen3_5DecoderLayer,
    Qwen3_5RMSNorm,
    Qwen3_5TextRotaryEmbedding,
)

from .config import ConfigError
from .export import read_export, write_export
from .verifier import Verifier
from .verifier_state import LayerStates, attention_bias

AR_CONFIG = "ar_drafter.json"


@dataclass
class ARDrafterConfig:
    layer: int | None = None  # the verifier layer to graft; default: its last full-attention layer
    block_len: int = 16  # tokens per drafted chain (the verifier's own next token, then the drafter's)
    ce_weight: float = 0.1

    def validate(self) -> None:
        if self.block_len < 1:
            raise ConfigError(f"field 'ar.block_len': expected a positive integer, got {self.block_len}")
        if self.ce_weight < 0:
            raise ConfigError(f"field 'ar.ce_weight': expected >= 0, got {self.ce_weight}")


class ARDrafter(nn.Module):
    def __init__(self, text_config: Qwen3_5TextConfig, cfg: ARDrafterConfig, layer: Qwen3_5DecoderLayer | None = None,
                 norm: Qwen3_5RMSNorm | None = None):
        super().__init__()
        if cfg.layer is None:
            raise ValueError("ARDrafter needs a resolved config (its layer): build it with ar_graft()")
        d = text_config.hidden_size
        self.text_config, self.cfg = text_config, cfg
        self.fc = nn.Linear(2 * d, d)
        self.layer = layer if layer is not None else Qwen3_5DecoderLayer(text_config, cfg.layer)
        self.norm = norm if norm is not None else Qwen3_5RMSNorm(d, eps=text_config.rms_norm_eps)
        self.rotary = Qwen3_5TextRotaryEmbedding(text_config)

    def forward(self, feats: torch.Tensor, embeds: torch.Tensor, positions: torch.Tensor, key_mask: torch.Tensor,
                states: LayerStates | None = None) -> torch.Tensor:
        """f̂ [B, T, d] from the previous tokens' features and these tokens' embeddings [B, T, d] at ``positions``
        [B, T]; ``key_mask`` [B, Kv] marks real keys among the state's and these T (the last T)."""
        u = self.fc(torch.cat([feats, embeds], -1).to(self.fc.weight.dtype))
        B, T, _ = u.shape
        pe = self.rotary(u, positions[None].expand(3, B, T))
        mask = attention_bias(key_mask, T, u.dtype) if self.layer.block_type == "full_attention" else None
        return self.norm(self.layer(u, position_embeddings=pe, attention_mask=mask, position_ids=positions,
                                    past_key_values=states))


def ar_graft(verifier: Verifier, cfg: ARDrafterConfig) -> ARDrafter:
    """A drafter from a copy of one verifier layer (default: the last full-attention one) and its final norm."""
    types = verifier.config.layer_types
    layer = cfg.layer if cfg.layer is not None else max(i for i, t in enumerate(types) if t == "full_attention")
    if not 0 <= layer < len(types):
        raise ConfigError(f"field 'ar.layer': the verifier has layers 0..{len(types) - 1}, got {layer}")
    cfg = ARDrafterConfig(**{**asdict(cfg), "layer": layer})
    model = verifier.lm.model
    drafter = ARDrafter(copy.deepcopy(verifier.config), cfg, copy.deepcopy(model.layers[layer]),
                        copy.deepcopy(model.norm))
    return drafter.to(verifier.lm.dtype).requires_grad_(True)


def save_ar(state_dict: dict[str, torch.Tensor], text_config: Qwen3_5TextConfig, cfg: ARDrafterConfig,
            out_dir: str | Path) -> Path:
    return write_export(out_dir, state_dict, AR_CONFIG, {"format": "clsd-ar-drafter", "version": 1,
                                                         "ar": asdict(cfg)}, text_config)


def load_ar(path: str | Path, dtype: torch.dtype = torch.float32, device="cpu") -> ARDrafter:
    meta, text_config, state = read_export(path, AR_CONFIG, "load_ar")
    drafter = ARDrafter(text_config, ARDrafterConfig(**meta["ar"]))
    drafter.load_state_dict(state, strict=True)
    return drafter.to(device=device, dtype=dtype)
