"""import-seed: the seed's released embedding shards ([N, 128, 4096] safetensors) -> webdataset shards.

The seed stored embeddings, which are rows of the verifier's frozen embedding matrix E. A row is matched back to
its token id exactly: rows are hashed, a hash hit is confirmed by comparing the bytes with E[id], and when
several ids share one identical row the smallest id is taken (counted as ambiguous; the embedding is the same).

``mode: tokens`` (default) writes compact token shards; a chunk with any unmatched row is not written but listed
in ``<out>/unrecovered.jsonl`` and counted. ``mode: embeddings`` writes every chunk's embeddings as they are
(bf16 ``emb`` field), usable for Stage A. The seed's windows carry no left context, so every sample's prefix is
the single document-start token (C is then the verifier's state at a document start).
"""

from __future__ import annotations

import glob
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from safetensors import safe_open

from ..config import ConfigError
from ..verifier import Verifier, VerifierConfig, document_start_id, load_tokenizer
from .format import Manifest, encode_array, token_dtype
from .writer import ShardSink, fresh_output


@dataclass
class ImportConfig:
    input: list[str] = field(default_factory=list)  # safetensors files or globs
    out: str = ""
    verifier: VerifierConfig = field(default_factory=VerifierConfig)  # its embedding matrix and tokenizer
    key: str | None = None  # tensor name inside each file; default: the file's only tensor
    mode: Literal["tokens", "embeddings"] = "tokens"
    shard_samples: int = 2000
    compress: bool = True
    overwrite: bool = False

    def validate(self) -> None:
        if not self.input:
            raise ConfigError("field 'input': list the seed's .safetensors files")
        if not self.out:
            raise ConfigError("field 'out': the output directory is required")
        if self.verifier.path is None:
            raise ConfigError("field 'verifier.path': the verifier checkpoint is needed (embedding matrix, tokenizer)")


class RowMatcher:
    """Exact embedding-row -> token-id lookup through a 64-bit hash of the row's bits."""

    def __init__(self, embedding: torch.Tensor):
        self.bits = self._bits(embedding)
        self.weights = np.random.default_rng(0).integers(-2**62, 2**62, size=self.bits.shape[1], dtype=np.int64)
        self.table: dict[int, int] = {}
        self.ambiguous_ids = 0
        for token, h in enumerate(self._hash(self.bits).tolist()):
            if h in self.table and np.array_equal(self.bits[self.table[h]], self.bits[token]):
                self.ambiguous_ids += 1
                continue
            self.table.setdefault(h, token)

    @staticmethod
    def _bits(x: torch.Tensor) -> np.ndarray:
        """The raw bit patterns as integers of the same width (no copy wider than the matrix itself)."""
        x = x.detach().cpu().contiguous()
        return x.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()]).numpy()

    def _hash(self, bits: np.ndarray, rows_per_pass: int = 4096) -> np.ndarray:
        out = np.empty(len(bits), dtype=np.int64)
        with np.errstate(over="ignore"):
            for i in range(0, len(bits), rows_per_pass):
                out[i:i + rows_per_pass] = (bits[i:i + rows_per_pass].astype(np.int64) * self.weights).sum(-1)
        return out

    def match(self, rows: torch.Tensor) -> list[int | None]:
        bits = self._bits(rows)
        out = []
        for row, h in zip(bits, self._hash(bits).tolist()):
            token = self.table.get(h)
            out.append(token if token is not None and np.array_equal(self.bits[token], row) else None)
        return out


def _files(patterns: list[str]) -> list[str]:
    files = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern))
        if not matches:
            raise ConfigError(f"input: no such file(s): '{pattern}'")
        files.extend(matches)
    return files


def _chunks(path: str, key: str | None, hidden: int) -> torch.Tensor:
    with safe_open(path, framework="pt") as f:
        keys = list(f.keys())
        if key is None:
            if len(keys) != 1:
                raise ConfigError(f"{path}: holds tensors {keys}; say which one with key=NAME")
            key = keys[0]
        if key not in keys:
            raise ConfigError(f"{path}: no tensor '{key}' (has {keys})")
        chunks = f.get_tensor(key)
    if chunks.dim() != 3 or chunks.shape[-1] != hidden:
        raise ConfigError(f"{path}: tensor '{key}' has shape {list(chunks.shape)}; expected [N, block_len, {hidden}]")
    return chunks


def import_seed(cfg: ImportConfig, log=print) -> dict:
    """Convert ``cfg.input`` into one shard directory ``cfg.out`` (written whole, or not at all)."""
    files = _files(cfg.input)
    with fresh_output(Path(cfg.out), cfg.overwrite) as work:
        stats = _convert(cfg, files, work)
    stats["out"] = cfg.out
    log(f"import-seed: {stats['written']}/{stats['chunks']} chunks written to {cfg.out} "
        f"({stats['unrecovered']} with unmatched rows, listed in unrecovered.jsonl)")
    return stats


def _convert(cfg: ImportConfig, files: list[str], out: Path) -> dict:
    verifier = Verifier.load(cfg.verifier, dtype=torch.bfloat16)
    tokenizer = load_tokenizer(cfg.verifier.path)
    start = np.asarray([document_start_id(tokenizer)], dtype=token_dtype(verifier.config.vocab_size))
    hidden = verifier.config.hidden_size
    weight = verifier.lm.get_input_embeddings().weight.detach()
    matchers: dict[torch.dtype, RowMatcher] = {}
    sink = ShardSink(out, cfg.shard_samples, cfg.compress)
    stats = {"files": len(files), "chunks": 0, "written": 0, "unrecovered": 0}
    block_len = None
    with open(out / "unrecovered.jsonl", "w") as report:
        for path in files:
            chunks = _chunks(path, cfg.key, hidden)
            if block_len not in (None, chunks.shape[1]):
                raise ConfigError(f"{path}: blocks of {chunks.shape[1]} tokens, earlier files had {block_len}")
            block_len = chunks.shape[1]
            if cfg.mode == "tokens" and chunks.dtype not in matchers:
                matchers[chunks.dtype] = RowMatcher(weight.to(chunks.dtype))
            for i, chunk in enumerate(chunks):
                stats["chunks"] += 1
                sample = {"__key__": f"{stats['chunks'] - 1:012d}"}
                arrays = {"prefix": start}
                if cfg.mode == "embeddings":
                    arrays["emb"] = chunk.to(torch.bfloat16)
                else:
                    ids = matchers[chunks.dtype].match(chunk)
                    missing = [p for p, t in enumerate(ids) if t is None]
                    if missing:
                        stats["unrecovered"] += 1
                        report.write(json.dumps({"file": path, "index": i, "unmatched_rows": missing[:16],
                                                 "unmatched": len(missing)}) + "\n")
                        continue
                    arrays["block"] = np.asarray(ids, dtype=start.dtype)
                for name, array in arrays.items():
                    suffix, data = encode_array(name, array)
                    sample[suffix] = data
                sink.write(sample)
                stats["written"] += 1
    shards = sink.close()
    if not shards:
        raise ConfigError(f"import-seed: no chunk of {files} could be written: every chunk has rows that are not "
                          f"rows of the verifier's embedding matrix (wrong verifier?); try mode=embeddings")
    fields = ["prefix", "emb"] if cfg.mode == "embeddings" else ["prefix", "block"]
    manifest = Manifest(block_len=block_len, prefix_len=1, fields=fields, vocab_size=verifier.config.vocab_size,
                        hidden_size=hidden if cfg.mode == "embeddings" else None,
                        tokenizer=str(Path(cfg.verifier.path).resolve()), shards=shards)
    manifest.write(out)
    stats.update(ambiguous_ids=sum(m.ambiguous_ids for m in matchers.values()), shards=len(shards),
                 bytes_per_sample=round(manifest.bytes_per_sample, 1))
    return stats
