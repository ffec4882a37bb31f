"""Training of the autoregressive (EAGLE-style) baseline drafter on the same shards as the DiT.

Each sample is read as [prefix | block] (left-aligned); the frozen verifier gives the final-norm features f of every
position under no_grad; the drafter predicts f_j from (f_{j-1}, E[x_j]) for every real position j (f_{-1} = 0) with
one teacher-forced pass (``ar_drafter.py``):
    L = mean_j SmoothL1(f̂_j, f_j) + ce_weight · mean_j CE(lm_head(f̂_j), x_{j+1})
The verifier is replicated on every rank outside the engine (frozen, no optimizer state).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ar_drafter import ARDrafter, save_ar
from ..config import ConfigError
from ..data.format import Manifest
from ..verifier import Verifier
from ..verifier_state import full_pass, left_align
from .distributed import DistInfo


class AROutput(NamedTuple):
    loss: torch.Tensor  # SmoothL1 + ce_weight * CE, to backpropagate
    reg_sum: torch.Tensor  # summed SmoothL1 over real positions (detached: metric)
    positions: torch.Tensor  # real positions
    ce_sum: torch.Tensor  # summed next-token CE over positions with a real next token
    correct: torch.Tensor  # of those, how many the drafter's argmax predicts
    predicted: torch.Tensor  # positions with a real next token


class ARModel(nn.Module):
    """The engine's module: the drafter; the verifier is held outside it (not a sub-module)."""

    def __init__(self, drafter: ARDrafter, verifier: Verifier):
        super().__init__()
        self.drafter = drafter
        self.__dict__["verifier"] = verifier.lm.eval().requires_grad_(False)

    def forward(self, prefix, prefix_len, block):
        lm, ce_weight = self.verifier, self.drafter.cfg.ce_weight
        ids, mask = left_align(prefix, prefix_len)
        ids = torch.cat([ids, block], 1)
        mask = torch.cat([mask, torch.ones_like(block, dtype=torch.bool)], 1)
        embeds = lm.get_input_embeddings()(ids)
        with torch.no_grad():
            P = prefix.shape[1]
            feats = full_pass(lm, embeds[:, :P], mask[:, :P], embeds[:, P:])
        positions = (mask.long().cumsum(1) - 1).clamp(min=0)
        before = torch.cat([torch.zeros_like(mask[:, :1]), mask[:, :-1]], 1)  # the position before is a real token
        prev = torch.cat([torch.zeros_like(feats[:, :1]), feats[:, :-1]], 1) * before[..., None]
        pred = self.drafter(prev, embeds, positions, mask)
        valid = mask.float()
        reg = F.smooth_l1_loss(pred.float(), feats.float(), reduction="none").mean(-1)
        logits = lm.lm_head(pred[:, :-1]).float()
        next_valid = (mask[:, :-1] & mask[:, 1:]).float()
        ce = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten(), reduction="none").view_as(next_valid)
        loss = (reg * valid).sum() / valid.sum() + ce_weight * (ce * next_valid).sum() / next_valid.sum()
        with torch.no_grad():
            correct = (logits.argmax(-1) == ids[:, 1:]).float() * next_valid
        return AROutput(loss, (reg * valid).sum().detach(), valid.sum(), (ce * next_valid).sum().detach(),
                        correct.sum(), next_valid.sum())


class ARTask:
    def __init__(self, drafter: ARDrafter, verifier: Verifier):
        self.module = ARModel(drafter, verifier)
        self.seq_len = self.block_len = None

    def check_data(self, manifest: Manifest, where: str) -> None:
        if "block" not in manifest.fields or "prefix" not in manifest.fields:
            raise ConfigError(f"{where}: the AR drafter trains on token ids (prefix and block)")
        manifest.check_vocab(self.module.verifier.config.vocab_size, where)
        self.seq_len, self.block_len = manifest.prefix_len + manifest.block_len, manifest.block_len

    def setup(self, dist_info: DistInfo, dtype: torch.dtype, manifest: Manifest) -> None:
        self.module.verifier.to(device=dist_info.device, dtype=dtype)

    def loss(self, model, batch: dict, generator: torch.Generator, step: int) -> tuple[torch.Tensor, dict]:
        out = model(batch["prefix"], batch["prefix_len"], batch["block"])
        B = batch["block"].shape[0]
        return out.loss, {"loss": (out.loss.detach() * B, B), "reg": (out.reg_sum, out.positions),
                          "ce": (out.ce_sum, out.predicted), "accuracy": (out.correct, out.predicted)}

    def decoder(self, engine, device, cfg):
        from ..infer.ar_decoder import ARSpeculativeDecoder

        return ARSpeculativeDecoder(self.module.verifier, engine.module.drafter, cfg)

    def flops_per_token(self) -> float:
        """Per block token: the drafter's fwd+bwd over every position of [prefix | block] (6N each), and the
        verifier's forward (2N each)."""
        drafter = sum(p.numel() for p in self.module.drafter.parameters())
        lm = self.module.verifier
        verifier = sum(p.numel() for p in lm.parameters()) - lm.get_input_embeddings().weight.numel()
        return (6.0 * drafter + 2.0 * verifier) * self.seq_len / self.block_len

    def export(self, state_dict: dict, out_dir: Path) -> None:
        drafter = {k.removeprefix("drafter."): v for k, v in state_dict.items() if k.startswith("drafter.")}
        save_ar(drafter, self.module.drafter.text_config, self.module.drafter.cfg, out_dir)
