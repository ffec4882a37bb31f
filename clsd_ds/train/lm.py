"""Next-token pretraining of a small Qwen3.5 verifier on the same shards: the embedded default's fixture.

Each sample is read as the sequence [prefix | block] and every position predicts the next token, so a token is
a target once per sample it appears in (blocks overlap their successors' prefixes).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import Qwen3_5ForCausalLM

from ..config import ConfigError
from ..data.format import Manifest
from ..verifier import load_tokenizer
from .distributed import DistInfo


def place_block(prefix: torch.Tensor, lengths: torch.Tensor, block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded prefixes + blocks -> ids [B, P+K] with each block right after its prefix, and its positions."""
    B, K = block.shape
    ids = torch.cat([prefix, torch.zeros(B, K, dtype=prefix.dtype, device=prefix.device)], dim=1)
    positions = lengths.to(prefix.device)[:, None] + torch.arange(K, device=prefix.device)
    return ids.scatter(1, positions, block), positions


class BlockLM(nn.Module):
    """Wraps the causal LM so that one forward returns the per-token block cross-entropy."""

    def __init__(self, lm: Qwen3_5ForCausalLM):
        super().__init__()
        self.lm = lm

    def forward(self, prefix, lengths, block) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-position next-token CE and correctness over [prefix | block], 0 past each sequence's end."""
        ids, positions = place_block(prefix, lengths, block)
        logits = self.lm(input_ids=ids, use_cache=False).logits[:, :-1].float()
        targets = ids[:, 1:]
        valid = torch.arange(targets.shape[1], device=ids.device)[None] < positions[:, -1:]
        ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)
        return ce * valid, (logits.argmax(-1) == targets) & valid, valid


class LMTask:
    def __init__(self, lm: Qwen3_5ForCausalLM, tokenizer_dir: str | None = None):
        self.module = BlockLM(lm.train().requires_grad_(True))
        self.tokenizer_dir = tokenizer_dir
        self.block_len = self.prefix_len = None

    def check_data(self, manifest: Manifest, where: str) -> None:
        manifest.check_vocab(self.module.lm.config.vocab_size, where, "verifier.random_init.vocab_size is")
        if "block" not in manifest.fields:
            raise ConfigError(f"{where}: language-model pretraining needs block token ids")
        self.tokenizer_dir = self.tokenizer_dir or manifest.tokenizer
        self.block_len, self.prefix_len = manifest.block_len, manifest.prefix_len

    def setup(self, dist_info: DistInfo, dtype: torch.dtype, manifest: Manifest) -> None:
        self.module.to(dist_info.device)

    def loss(self, model, batch: dict, generator: torch.Generator, step: int) -> tuple[torch.Tensor, dict]:
        ce, correct, valid = model(batch["prefix"], batch["prefix_len"], batch["block"])
        n = valid.sum()
        return ce.sum() / n, {"loss": (ce.detach().sum(), n), "accuracy": (correct.sum(), n)}

    def decoder(self, engine, device, cfg) -> None:
        """A verifier trains no drafter: nothing to decode speculatively (no τ)."""
        return None

    def flops_per_token(self) -> float:
        cfg = self.module.lm.config
        params = sum(p.numel() for p in self.module.parameters()) - self.module.lm.get_input_embeddings().weight.numel()
        attn_layers = sum(t == "full_attention" for t in cfg.layer_types)
        seq = self.block_len + self.prefix_len  # at most; short-prefix samples cost less
        per_position = 6.0 * params + 6 * attn_layers * seq * cfg.num_attention_heads * cfg.head_dim
        return per_position * seq / self.block_len  # the loop counts block tokens

    def export(self, state_dict: dict, out_dir: Path) -> None:
        """A Hugging Face checkpoint directory (weights + config + tokenizer): usable as ``verifier.path``."""
        lm = Qwen3_5ForCausalLM(self.module.lm.config)  # a fresh copy: the engine's may be ZeRO-partitioned
        lm.load_state_dict({k.removeprefix("lm."): v for k, v in state_dict.items()})
        lm.save_pretrained(str(out_dir))
        if self.tokenizer_dir:
            load_tokenizer(self.tokenizer_dir).save_pretrained(str(out_dir))
