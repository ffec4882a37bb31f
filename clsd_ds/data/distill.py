"""``clsd-ds distill``: shards whose blocks are the verifier's own continuations of the corpus prefixes.

A drafter is accepted when it proposes what the verifier would say, so it should learn the verifier's
continuations rather than the corpus's (DFlash, EAGLE-3 and SpecForge train on target-regenerated text). For every
sample of ``input`` (a shard directory with token ids, as prepare-data writes it) the prefix is kept and the block
becomes the verifier's continuation of it, K = the shards' block_len tokens:

    greedy   x_{j+1} = argmax_x p(x | prefix, x_1..x_j)
    sample   x_{j+1} ~ softmax(logits / temperature), from a generator seeded by (seed, shard)

for a batch of prefixes at once, from the verifier's state after them (left-aligned prefixes, one pass per new
token: ``verifier_state``). A stored C is kept (it depends on the prefix only); stored block embeddings are dropped.

Many anchors per rollout (``anchors`` A, ``anchor_stride`` s): one continuation r of K + (A - 1)·s tokens gives A
samples, j = 0..A-1,

    prefix_j = prefix + r[:j·s]      block_j = r[j·s : j·s + K]      (keys <key>_a<j>)

each again the verifier's continuation of its own prefix (greedy: the argmax path from prefix_j is r[j·s:]; sample:
r[j·s:] is a draw from the verifier given prefix_j), for one rollout instead of A. A stored C belongs to the
original prefix only, so anchors > 1 drops it (a prefix-state or online-C drafter recomputes it).

Data-parallel under any launcher (the trainer's process-group set-up; one process without one): rank r of W
distills input shards r, r + W, ... into output shards of the same names. Each is written under a temporary name
and renamed when complete, so a rerun (after a preemption) skips the shards already there and produces the same
bytes. Rank 0 writes ``manifest.json`` and ``distill.json`` last, once every rank is done.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
import webdataset as wds

from ..config import ConfigError
from ..verifier import Verifier, VerifierConfig
from ..verifier_state import continue_pass, left_align, prefix_pass
from .format import Manifest, ShardInfo, decode_sample, encode_array, token_dtype
from .reader import collate


@dataclass
class DistillConfig:
    input: str = ""  # a shard directory with token ids (prefix and block)
    out: str = ""
    verifier: VerifierConfig = field(default_factory=VerifierConfig)
    mode: Literal["greedy", "sample"] = "greedy"
    temperature: float = 1.0  # sample
    seed: int = 0  # sample
    max_shards: int = 0  # the first N input shards only; 0: all
    batch_size: int = 64  # prefixes per verifier pass
    anchors: int = 1  # samples per prefix from one longer continuation (the module docstring)
    anchor_stride: int = 1  # tokens between consecutive anchors of one continuation

    def validate(self) -> None:
        if not self.input or not self.out:
            raise ConfigError("fields 'input' and 'out': the input shard directory and the output directory")
        if self.temperature <= 0:
            raise ConfigError(f"field 'temperature': expected a positive number, got {self.temperature}")
        if self.batch_size < 1 or self.max_shards < 0:
            raise ConfigError("fields 'batch_size' (>= 1) and 'max_shards' (>= 0, 0: all)")
        if self.anchors < 1 or self.anchor_stride < 1:
            raise ConfigError(f"fields 'anchors' and 'anchor_stride': expected positive integers, got "
                              f"{self.anchors} and {self.anchor_stride}")


@torch.no_grad()
def continuations(lm, prefix: torch.Tensor, lengths: torch.Tensor, k: int, mode: str = "greedy",
                  temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """The verifier's ``k``-token continuation [B, k] of each right-padded prefix [B, P] of ``lengths``."""
    embed = lm.get_input_embeddings()
    ids, mask = left_align(prefix, lengths)
    hidden, states = prefix_pass(lm, embed(ids), mask, grow=True)
    h, tokens = hidden[:, -1:], []
    for j in range(k):
        logits = lm.lm_head(h[:, -1]).float()
        if mode == "greedy":
            token = logits.argmax(-1)
        else:
            token = torch.multinomial((logits / temperature).softmax(-1), 1, generator=generator)[:, 0]
        tokens.append(token)
        if j + 1 < k:  # the new token at position length + j, after the prefix and the j tokens before it
            h = continue_pass(lm, embed(token[:, None]), mask, lengths.to(h.device) + j, states)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return torch.stack(tokens, 1)


def distill(cfg: DistillConfig, log=print) -> dict:
    """Distill ``cfg.input`` into ``cfg.out`` (this rank's shards; rank 0 also writes the manifest)."""
    from ..train.distributed import init_distributed

    source = Manifest.read(cfg.input)
    if "prefix" not in source.fields:
        raise ConfigError(f"{cfg.input}: distilling needs the prefixes' token ids, these samples carry none")
    d = init_distributed()
    verifier = Verifier.load(cfg.verifier, dtype=torch.float32, device=d.device)
    source.check_vocab(verifier.config.vocab_size, cfg.input)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    shards = source.shards[: cfg.max_shards or None]
    done = skipped = 0
    for index in range(d.rank, len(shards), d.world_size):
        target = out / shards[index].name
        if target.is_file():  # complete: written by an earlier start
            skipped += 1
            continue
        _distill_shard(cfg, verifier.lm, Path(cfg.input) / shards[index].name, target, source, index, d.device)
        done += 1
        log(f"distill: rank {d.rank} wrote {target} ({done} shards this start, {skipped} already there)")
    if dist.is_initialized():
        dist.barrier()
    summary = {"shards": len(shards), "written_by_rank0": done, "skipped_by_rank0": skipped, "out": str(out)}
    if d.is_main:
        infos = [ShardInfo(s.name, s.samples * cfg.anchors, (out / s.name).stat().st_size) for s in shards]
        dropped = {"emb"} | ({"cond"} if cfg.anchors > 1 else set())
        fields = [f for f in source.fields if f not in dropped] + ([] if "block" in source.fields else ["block"])
        manifest = Manifest(block_len=source.block_len, prefix_len=source.prefix_len + (cfg.anchors - 1) *
                            cfg.anchor_stride, fields=fields,
                            vocab_size=source.vocab_size, hidden_size=source.hidden_size if "cond" in fields else None,
                            tokenizer=source.tokenizer, cond_source=source.cond_source, shards=infos)
        (out / "distill.json").write_text(json.dumps({**asdict(cfg), "samples": manifest.samples}, indent=1))
        manifest.write(out)  # last: the directory is usable once it exists
        summary["samples"] = manifest.samples
    return summary


def _distill_shard(cfg: DistillConfig, lm, path: Path, target: Path, source: Manifest, index: int,
                   device: torch.device) -> None:
    samples = [decode_sample(r) for r in wds.tarfile_samples([{"url": str(path)}], handler=wds.reraise_exception)]
    if len(samples) != source.shards[index].samples:
        raise ConfigError(f"{path}: {len(samples)} samples, the manifest says {source.shards[index].samples}")
    generator = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + index)
    dtype, K, stride = token_dtype(source.vocab_size), source.block_len, cfg.anchor_stride
    tmp = target.with_name(target.name + ".tmp")
    with wds.TarWriter(str(tmp), encoder=False, compress=target.name.endswith(".gz"), mtime=0) as writer:
        for start in range(0, len(samples), cfg.batch_size):
            chunk = samples[start: start + cfg.batch_size]
            batch = collate(chunk)
            rollouts = continuations(lm, batch["prefix"].to(device), batch["prefix_len"],
                                     K + (cfg.anchors - 1) * stride, cfg.mode, cfg.temperature, generator).cpu()
            for sample, rollout in zip(chunk, rollouts):
                for j in range(cfg.anchors):
                    prefix = torch.cat([sample["prefix"], rollout[: j * stride]])
                    arrays = {"prefix": prefix.numpy().astype(dtype),
                              "block": rollout[j * stride: j * stride + K].numpy().astype(dtype)}
                    if "cond" in sample and cfg.anchors == 1:
                        arrays["cond"] = sample["cond"]
                    record = {"__key__": sample["__key__"] + (f"_a{j}" if cfg.anchors > 1 else "")}
                    for name, array in arrays.items():
                        suffix, data = encode_array(name, array)
                        record[suffix] = data
                    writer.write(record)
    tmp.replace(target)
