"""Stage A: rectified-flow training of the DiT on true blocks.

For a batch of blocks: x1 = E[block] / embed_scale (or the stored embeddings), C from the shards or from the frozen
verifier under no_grad, x0 ~ N(0, I) (``flow.source: mask``: x0 = 1), t ~ FlowConfig.t_sampling, x_t = (1 - t) x0 + t x1
(with ``flow.anchor`` position 0 pinned to x1's; with ``flow.reveal`` a fraction of the blocks pin a longer lead of
positions 0..r-1, ``flow.lead_lengths``), o = DiT(x_t, t, C); per position k, with the weights w_k of
``flow.position_weights`` (0 on the clean lead):

    objective velocity:  L = mean_k w_k · mean_d (o - (x1 - x0))^2          (the seed's rectified flow)
    objective tokens:    L = mean_k w_k · CE(head(o)_k, block_k)            (head: the verifier's frozen LM head)

With ``flow.train_inputs: sampler`` there is no sampled t: the DiT runs every step i of its Euler sampler from
x^(0) = x0, on the input the sampler builds from its own previous estimate (flow.py), and L averages the steps' CE.

Only the DiT trains. When every sample carries C and the block (ids or embeddings), the verifier's layers are
not needed: only its embedding matrix is kept on the device. A ``dit.prefix_state`` DiT also reads the verifier's
per-layer state after each prefix, so the verifier then runs every prefix (under no_grad), and C comes from the
same pass.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import ConfigError
from ..data.format import Manifest
from ..dit import CausalDiT, save_dit
from ..flow import (FlowConfig, Readout, draw_source, interpolate, lead_lengths, loss_by_t_bin, pin_lead,
                    position_weights, sample_t, towards, velocity_target)
from ..verifier import Verifier
from ..verifier_state import read_prefixes
from .distributed import DistInfo


def block_flops_per_token(dit: CausalDiT, block_len: int) -> float:
    """Training FLOPs per block token: 6 x (per-token weights + per-sample weights / K) + causal attention."""
    per_sample = sum(p.numel() for name, p in dit.named_parameters()
                     if name.startswith(("t_embed", "cond_proj")) or "adaLN" in name)
    per_token = sum(p.numel() for p in dit.parameters()) - per_sample - dit.pos_emb.numel()
    cfg = dit.text_config
    attn_layers = sum(t == "full_attention" for t in dit.layer_types)
    attention = 6 * attn_layers * block_len * cfg.num_attention_heads * cfg.head_dim  # QK^T and AV, causal half
    return 6.0 * (per_token + per_sample / block_len) + attention


class StageATask:
    def __init__(self, dit: CausalDiT, verifier: Verifier, flow: FlowConfig):
        dit.flow = flow  # trained with this flow: its sampler steps are the decoder's (and the export's)
        self.module = dit
        self.verifier = verifier
        self.embedding = None
        self.online_cond = True

    def check_data(self, manifest: Manifest, where: str) -> None:
        cfg, vcfg = self.module.cfg, self.verifier.config
        if manifest.block_len != cfg.block_len:
            raise ConfigError(f"{where}: shards hold {manifest.block_len}-token blocks but dit.block_len is "
                              f"{cfg.block_len}")
        manifest.check_vocab(vcfg.vocab_size, where)
        if manifest.hidden_size not in (None, vcfg.hidden_size):
            raise ConfigError(f"{where}: shards store {manifest.hidden_size}-d vectors, the verifier is "
                              f"{vcfg.hidden_size}-d")
        if "block" not in manifest.fields and "emb" not in manifest.fields:
            raise ConfigError(f"{where}: samples carry neither block ids nor embeddings")
        if cfg.prefix_state and "prefix" not in manifest.fields:
            raise ConfigError(f"{where}: dit.prefix_state needs the prefixes' token ids, these samples carry none")
        if self.module.flow.objective == "tokens" and "block" not in manifest.fields:
            raise ConfigError(f"{where}: flow.objective=tokens trains on the blocks' token ids, these samples carry "
                              f"only embeddings")

    def setup(self, dist_info: DistInfo, dtype: torch.dtype, manifest: Manifest) -> None:
        self.online_cond = "cond" not in manifest.fields or self.module.cfg.prefix_state
        lm = self.verifier.lm.to(dtype).to(dist_info.device if self.online_cond else "cpu")
        self.embedding = lm.get_input_embeddings().to(dist_info.device)
        if self.module.flow.objective == "tokens":  # it reads the DiT's output through the verifier's head
            lm.lm_head.to(dist_info.device)

    def readout(self) -> Readout:
        return Readout(self.verifier.lm.lm_head, self.embedding.weight, self.module.cfg.embed_scale)

    def decoder(self, engine, device, cfg):
        """The speculative decoder for the τ evaluation; the verifier moves to ``device`` if it stayed on the CPU
        (C precomputed in the shards)."""
        from ..infer.decoder import SpeculativeDecoder

        return SpeculativeDecoder(self.verifier.lm.to(device), engine.module, cfg)

    def targets(self, batch: dict) -> torch.Tensor:
        """x1: the block's embeddings in the unit-RMS space, fp32."""
        emb = batch["emb"] if "emb" in batch else self.embedding(batch["block"])
        return emb.float() / self.module.cfg.embed_scale

    def cond(self, batch: dict) -> torch.Tensor:
        if "cond" in batch:
            return batch["cond"]
        return self.verifier.conditioning(batch["prefix"], batch["prefix_len"])

    def loss(self, model, batch: dict, generator: torch.Generator, step: int) -> tuple[torch.Tensor, dict]:
        x1 = self.targets(batch)
        flow, B = self.module.flow, x1.shape[0]
        x0 = draw_source(flow, x1.shape, generator, device=x1.device)
        lead = lead_lengths(flow, B, x1.shape[1], generator, device=x1.device)  # clean positions per block, or None
        if self.module.cfg.prefix_state:
            context = read_prefixes(self.verifier.lm, batch["prefix"], batch["prefix_len"], self.embedding.weight)
        else:
            context = (self.cond(batch),)
        if flow.train_inputs == "sampler":  # every step of the sampler, from pure noise (t = 0: x_0 = x0)
            times = [torch.full((B,), i / flow.euler_steps, device=x1.device) for i in range(flow.euler_steps)]
        else:
            times = [sample_t(flow, B, generator, device=x1.device)]
        weights = position_weights(flow, x1.shape[1], x1.device, lead)
        readout = self.readout() if flow.objective == "tokens" else None
        x, losses, metrics = interpolate(x0, x1, times[0]), [], {}
        for i, t in enumerate(times):
            out = model(pin_lead(x, x1, lead), t, *context)
            if flow.objective == "velocity":
                per_position = (out.float() - velocity_target(x0, x1)).pow(2).mean(-1)
            else:
                logits = readout.head(out).float()
                per_position = F.cross_entropy(logits.flatten(0, 1), batch["block"].flatten(),
                                               reduction="none").view(B, -1)
                if i + 1 < len(times):  # the sampler's next input, from this step's estimate
                    x = (x + towards(readout.clean_estimate(logits), x, t) / len(times)).detach()
            losses.append((per_position * weights).mean(1))
        if flow.objective == "tokens":  # of the last step's logits: what decoding reads
            correct = (logits.argmax(-1) == batch["block"]).float()  # at the drafted positions, the first of them
            first = torch.zeros(B, dtype=torch.long, device=x1.device) if lead is None else lead
            drafted = torch.arange(correct.shape[1], device=x1.device)[None] >= first[:, None]
            metrics.update(accuracy=((correct * drafted).sum(), drafted.sum()),
                           accuracy_first=(correct.gather(1, first[:, None].clamp(max=correct.shape[1] - 1)).sum(), B))
        losses, t = torch.cat(losses), torch.cat(times)
        sums, counts = loss_by_t_bin(losses, t, flow.t_bins)
        metrics["loss"] = (losses.detach().sum(), losses.numel())
        metrics.update({f"loss_t{i}": (sums[i], counts[i]) for i in range(flow.t_bins)})
        return losses.mean(), metrics

    def flops_per_token(self) -> float:
        """Per block token of a training step: one DiT pass, or one per Euler step with train_inputs sampler."""
        flow = self.module.flow
        passes = flow.euler_steps if flow.train_inputs == "sampler" else 1
        return passes * block_flops_per_token(self.module, self.module.cfg.block_len)

    def export(self, state_dict: dict, out_dir: Path) -> None:
        save_dit(state_dict, self.module.text_config, self.module.cfg, out_dir, self.module.flow)
