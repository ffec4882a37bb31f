"""Stage C: align the drafter with the frozen verifier through the verifier itself.

    x0 ~ N(0, I) -> ``euler_steps`` Euler steps of the DiT (with grad through every step) -> x̂1
    draft = x̂1 · embed_scale  (embedding space)
    the verifier reads [prefix | draft]; logits l_j at the position before block token j (the last prefix token,
    then draft_1 .. draft_{K-1}); the last draft position predicts nothing inside the block
    L = CE(l, block) + β(step) · mean ||x̂1 − E[block] / embed_scale||²,   β annealed β_start -> β_end

Gradients flow through the frozen verifier (activations only: its weights stay frozen) into both Euler steps.
The prefix is read once under no_grad, which also gives C when the shards do not carry it; the verifier then runs
only the K − 1 draft positions with grad, from the prefix's per-layer state (``prefix_path: state``), or reruns
[prefix | draft] with grad (``prefix_path: full``, the naive path kept for comparison).

Placement of the verifier: ``replicate`` keeps a frozen copy on every rank outside the engine (no all-gathers);
``zero3`` makes it a frozen sub-module of the engine's module, partitioned by ZeRO-3 like the DiT (needed when
it does not fit one GPU). Either way it gets no optimizer state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import Qwen3_5ForCausalLM

from ..config import ConfigError
from ..data.format import Manifest
from ..dit import CausalDiT, save_dit
from ..flow import FlowConfig, draw_source, euler_sample
from ..verifier import Verifier, nearest_tokens
from ..verifier_state import continue_pass, full_pass, left_align, read_prefixes
from .distributed import DistInfo
from .stage_a import block_flops_per_token


@dataclass
class StageCConfig:
    beta_start: float = 0.1
    beta_end: float = 0.0
    beta_steps: int = 1000  # β goes from beta_start to beta_end over these steps, then stays
    beta_schedule: Literal["linear", "cosine"] = "linear"
    prefix_path: Literal["state", "full"] = "state"
    placement: Literal["replicate", "zero3"] = "replicate"
    verifier_checkpointing: int = 1  # verifier layers per activation-checkpointed segment; 0: none

    def validate(self) -> None:
        if self.beta_steps < 1:
            raise ConfigError(f"field 'stage_c.beta_steps': expected a positive integer, got {self.beta_steps}")
        if self.verifier_checkpointing < 0:
            raise ConfigError(f"field 'stage_c.verifier_checkpointing': expected >= 0, got "
                              f"{self.verifier_checkpointing}")


def beta_at(cfg: StageCConfig, step: int) -> float:
    """β(step): linear or cosine from beta_start (step 0) to beta_end (step >= beta_steps)."""
    x = min(max(step, 0) / cfg.beta_steps, 1.0)
    shape = 1.0 - x if cfg.beta_schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * x))
    return cfg.beta_end + (cfg.beta_start - cfg.beta_end) * shape


class StageCOutput(NamedTuple):
    loss: torch.Tensor  # CE + beta * MSE, to backpropagate
    ce: torch.Tensor  # [B, K] the verifier's CE on the drafts (detached)
    mse: torch.Tensor  # [B, K] squared error of the drafts to the true embeddings (detached)
    verifier_acc: torch.Tensor  # [B, K] the verifier's argmax == the true token
    nearest_acc: torch.Tensor  # [B, K] the draft's nearest embedding row == the true token


class StageCModel(nn.Module):
    """The engine's module: the DiT (trainable) and, when partitioned by ZeRO-3, the frozen verifier."""

    def __init__(self, dit: CausalDiT, lm: Qwen3_5ForCausalLM, cfg: StageCConfig, flow: FlowConfig):
        super().__init__()
        dit.flow = flow  # trained with this flow: its sampler steps are the decoder's (and the export's)
        self.dit, self.cfg = dit, cfg
        lm.eval().requires_grad_(False)
        if cfg.placement == "zero3":
            self.verifier = lm
        else:  # not a sub-module: DeepSpeed neither partitions nor checkpoints it
            self.__dict__["verifier"] = lm
        # Targets, prefix ids and the nearest-token metric read the embedding matrix directly: a plain tensor, not
        # a parameter, so that ZeRO-3 never partitions it (with zero3 a copy: the verifier's own will be).
        weight = lm.get_input_embeddings().weight.detach()
        self.__dict__["embedding"] = weight.clone() if cfg.placement == "zero3" else weight

    def to_device(self, device: torch.device, dtype: torch.dtype) -> None:
        """Frozen parts outside the engine: the replicated verifier and the embedding matrix."""
        if self.cfg.placement == "replicate":
            self.verifier.to(device=device, dtype=dtype)
            self.__dict__["embedding"] = self.verifier.get_input_embeddings().weight.detach()
        else:
            self.__dict__["embedding"] = self.embedding.to(device=device, dtype=dtype)

    def forward(self, prefix, prefix_len, block, cond, x0, beta: float) -> StageCOutput:
        lm, scale, ckpt = self.verifier, self.dit.cfg.embed_scale, self.cfg.verifier_checkpointing
        last, state = read_prefixes(lm, prefix, prefix_len, self.embedding)  # last: C, the final-norm state there
        if cond is None:
            cond = last
        x1_hat = euler_sample(lambda x, t: self.dit(x, t, cond, state if self.dit.cfg.prefix_state else None), x0,
                              self.dit.flow.euler_steps)
        draft = (x1_hat * scale).to(self.embedding.dtype)
        if self.cfg.prefix_path == "state":
            reads = torch.cat([last[:, None], continue_pass(lm, draft[:, :-1], state.mask, state.lengths,
                                                            state.states, ckpt)], 1)
        else:
            ids, mask = left_align(prefix, prefix_len)
            reads = full_pass(lm, F.embedding(ids, self.embedding), mask, draft[:, :-1], ckpt)[:, mask.shape[1] - 1:]
        logits = lm.lm_head(reads).float()
        ce = F.cross_entropy(logits.flatten(0, 1), block.flatten(), reduction="none").view_as(block)
        target = F.embedding(block, self.embedding).float() / scale
        mse = (x1_hat.float() - target).pow(2).mean(-1)
        loss = ce.mean() + beta * mse.mean()
        with torch.no_grad():
            verifier_acc = (logits.argmax(-1) == block).float()
            nearest_acc = (nearest_tokens(draft, self.embedding) == block).float()
        return StageCOutput(loss, ce.detach(), mse.detach(), verifier_acc, nearest_acc)


class StageCTask:
    def __init__(self, dit: CausalDiT, verifier: Verifier, flow: FlowConfig, cfg: StageCConfig):
        self.module = StageCModel(dit, verifier.lm, cfg, flow)
        self.cfg = cfg
        self.use_shard_cond = False
        self.prefix_len = None

    def check_data(self, manifest: Manifest, where: str) -> None:
        cfg, vcfg = self.module.dit.cfg, self.module.verifier.config
        if manifest.block_len != cfg.block_len:
            raise ConfigError(f"{where}: shards hold {manifest.block_len}-token blocks but dit.block_len is "
                              f"{cfg.block_len}")
        if "block" not in manifest.fields:
            raise ConfigError(f"{where}: Stage C needs the blocks' token ids (CE targets); embedding-only shards "
                              f"can train Stage A only")
        manifest.check_vocab(vcfg.vocab_size, where)
        self.prefix_len = manifest.prefix_len

    def setup(self, dist_info: DistInfo, dtype: torch.dtype, manifest: Manifest) -> None:
        self.use_shard_cond = "cond" in manifest.fields
        self.module.to_device(dist_info.device, dtype)

    def loss(self, model, batch: dict, generator: torch.Generator, step: int) -> tuple[torch.Tensor, dict]:
        block = batch["block"]
        d = self.module.dit.text_config.hidden_size
        x0 = draw_source(self.module.dit.flow, (*block.shape, d), generator, device=block.device)
        beta = beta_at(self.cfg, step)
        out = model(batch["prefix"], batch["prefix_len"], block, batch["cond"] if self.use_shard_cond else None, x0,
                    beta)
        n, B = out.ce.numel(), block.shape[0]
        return out.loss, {"loss": (out.loss.detach() * B, B), "ce": (out.ce.sum(), n), "mse": (out.mse.sum(), n),
                          "beta": (beta, 1), "verifier_acc": (out.verifier_acc.sum(), n),
                          "nearest_acc": (out.nearest_acc.sum(), n)}

    def decoder(self, engine, device, cfg):
        """The speculative decoder for the τ evaluation (with a plain copy of the embedding matrix under ZeRO-3)."""
        from ..infer.decoder import SpeculativeDecoder

        m = engine.module
        return SpeculativeDecoder(m.verifier, m.dit, cfg, embedding=m.embedding)

    def flops_per_token(self) -> float:
        """Per block token: DiT fwd+bwd per Euler step, verifier fwd + activation-grad bwd (4N), prefix fwd (2N)."""
        dit = self.module.dit
        verifier_params = sum(p.numel() for p in self.module.verifier.parameters()) - self.module.embedding.numel()
        prefix = (self.prefix_len or 0) / dit.cfg.block_len
        return dit.flow.euler_steps * block_flops_per_token(dit, dit.cfg.block_len) + \
            verifier_params * (4.0 + 2.0 * prefix)

    def export(self, state_dict: dict, out_dir: Path) -> None:
        dit = {k.removeprefix("dit."): v for k, v in state_dict.items() if k.startswith("dit.")}
        save_dit(dit, self.module.dit.text_config, self.module.dit.cfg, out_dir, self.module.dit.flow)
