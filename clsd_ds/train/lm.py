"""Next-token pretraining of a small Qwen3.5 verifier on the same shards: the embedded default's fixture.

Each sample is read as the sequence [prefix | block]; the loss is the cross-entropy of the block's tokens given
everything before them, so every token of a document is a target exactly once per epoch.
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

    def forward(self, prefix, lengths, block) -> tuple[torch.Tensor, torch.Tensor]:
        ids, positions = place_block(prefix, lengths, block)
        hidden = self.lm.model(input_ids=ids, use_cache=False).last_hidden_state
        reads = hidden.gather(1, (positions - 1)[..., None].expand(-1, -1, hidden.shape[-1]))
        logits = self.lm.lm_head(reads).float()
        ce = F.cross_entropy(logits.flatten(0, 1), block.flatten(), reduction="none").view_as(block)
        return ce, (logits.argmax(-1) == block)


class LMTask:
    def __init__(self, lm: Qwen3_5ForCausalLM, tokenizer_dir: str | None = None):
        self.module = BlockLM(lm.train().requires_grad_(True))
        self.tokenizer_dir = tokenizer_dir
        self.block_len = None

    def check_data(self, manifest: Manifest, where: str) -> None:
        vocab = self.module.lm.config.vocab_size
        if manifest.vocab_size > vocab:
            raise ConfigError(f"{where}: shards use a vocabulary of {manifest.vocab_size} tokens, "
                              f"verifier.random_init.vocab_size is {vocab}")
        if "block" not in manifest.fields:
            raise ConfigError(f"{where}: language-model pretraining needs block token ids")
        self.tokenizer_dir = self.tokenizer_dir or manifest.tokenizer
        self.block_len = manifest.block_len

    def setup(self, dist_info: DistInfo, dtype: torch.dtype, manifest: Manifest) -> None:
        self.module.to(dist_info.device)

    def loss(self, model, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        ce, correct = model(batch["prefix"], batch["prefix_len"], batch["block"])
        n = ce.numel()
        return ce.mean(), {"loss": (ce.detach().sum(), n), "accuracy": (correct.sum(), n)}

    def flops_per_token(self) -> float:
        cfg = self.module.lm.config
        params = sum(p.numel() for p in self.module.parameters()) - self.module.lm.get_input_embeddings().weight.numel()
        attn_layers = sum(t == "full_attention" for t in cfg.layer_types)
        return 6.0 * params + 6 * attn_layers * self.block_len * cfg.num_attention_heads * cfg.head_dim

    def export(self, state_dict: dict, out_dir: Path) -> None:
        """A Hugging Face checkpoint directory (weights + config + tokenizer): usable as ``verifier.path``."""
        lm = Qwen3_5ForCausalLM(self.module.lm.config)  # a fresh copy: the engine's may be ZeRO-partitioned
        lm.load_state_dict({k.removeprefix("lm."): v for k, v in state_dict.items()})
        lm.save_pretrained(str(out_dir))
        if self.tokenizer_dir:
            load_tokenizer(self.tokenizer_dir).save_pretrained(str(out_dir))
