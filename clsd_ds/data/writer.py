"""prepare-data: text -> token ids -> K-token block samples -> webdataset shards (+ optional precomputed C).

Every document becomes ``[start] + tokens + [eos]`` (start = BOS, or EOS for tokenizers without BOS, as Qwen's).
Blocks tile ``doc[1:]`` in steps of K; the last block is padded with EOS, so the drafter also learns to stop.
Block k starts at s = 1 + kK; its prefix is ``doc[max(0, s - prefix_len) : s]`` (at least the start token).
With ``cond: true`` one verifier pass per document gives C for every block at once: the final-norm hidden
state at position s - 1, which has seen the whole document before the block (not only the stored prefix).
Samples are shuffled through a buffer before they are written, so a shard mixes many documents.
"""

from __future__ import annotations

import glob
import json
import random
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import torch
import webdataset as wds

from ..config import ConfigError
from ..verifier import Verifier, VerifierConfig, document_start_id, load_tokenizer
from .format import Manifest, ShardInfo, encode_array, token_dtype


@dataclass
class PrepareConfig:
    input: list[str] = field(default_factory=list)  # files or globs: .jsonl (one JSON object per line) or text
    out: str = ""
    tokenizer: str | None = None  # default: verifier.path
    text_field: str = "text"
    text_template: str | None = None  # e.g. "{problem}\n\n{solution}": fields of a .jsonl record, formatted
    block_len: int = 128
    prefix_len: int = 512
    val_fraction: float = 0.01  # documents routed to out/val (by a hash of their index)
    shard_samples: int = 2000
    compress: bool = True  # .tar.gz (the tar headers and token ids compress well)
    shuffle_buffer: int = 20000
    seed: int = 0
    max_docs: int | None = None
    cond: bool = False  # precompute C with the verifier (needs verifier.path)
    cond_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    cond_batch_tokens: int = 16384  # padded tokens per verifier pass (a longer document runs alone)
    verifier: VerifierConfig = field(default_factory=VerifierConfig)
    device: str = "auto"
    overwrite: bool = False

    def validate(self) -> None:
        if not self.input:
            raise ConfigError("field 'input': list at least one input file (.jsonl or text)")
        if not self.out:
            raise ConfigError("field 'out': the output directory is required")
        for name in ("block_len", "prefix_len", "shard_samples", "cond_batch_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"field '{name}': expected a positive integer, got {getattr(self, name)}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"field 'val_fraction': expected a number in [0, 1), got {self.val_fraction}")
        if self.tokenizer is None and self.verifier.path is None:
            raise ConfigError("field 'tokenizer': give a tokenizer directory or 'verifier.path'")
        if self.cond and self.verifier.path is None:
            raise ConfigError("field 'cond': precomputing C needs 'verifier.path' (a checkpoint directory)")


def iter_documents(patterns: list[str], text_field: str, template: str | None = None) -> Iterator[str]:
    """Texts from .jsonl files (``text_field``, or ``template`` filled from the record) or whole text files."""
    files: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
        if not matches or not all(Path(m).is_file() for m in matches):
            raise ConfigError(f"input: no such file(s): '{pattern}'")
        files.extend(matches)
    for name in files:
        if name.endswith(".jsonl"):
            with open(name, encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise ConfigError(f"{name}:{lineno}: not valid JSON: {exc}") from None
                    keys = list(record) if isinstance(record, dict) else type(record).__name__
                    if template is not None:
                        try:
                            yield template.format(**record)
                        except (KeyError, TypeError) as exc:
                            raise ConfigError(f"{name}:{lineno}: text_template needs field {exc}, the record has "
                                              f"{keys}") from None
                        continue
                    if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                        raise ConfigError(f"{name}:{lineno}: expected a string field '{text_field}' "
                                          f"(text_field), found {keys}")
                    yield record[text_field]
        else:
            yield Path(name).read_text(encoding="utf-8", errors="replace")


def document_blocks(doc: list[int], block_len: int, prefix_len: int, pad_id: int):
    """(start position, prefix, block) for every block of a document ``[start] + tokens + [eos]``."""
    for s in range(1, len(doc), block_len):
        block = doc[s:s + block_len]
        block = block + [pad_id] * (block_len - len(block))
        yield s, doc[max(0, s - prefix_len):s], block


class ShardSink:
    """Writes samples into ``<dir>/shard-NNNNNN.tar[.gz]`` files of ``shard_samples`` each, atomically."""

    def __init__(self, directory: Path, shard_samples: int, compress: bool):
        self.dir, self.per_shard, self.compress = directory, shard_samples, compress
        self.dir.mkdir(parents=True, exist_ok=True)
        self.shards: list[ShardInfo] = []
        self.writer = None
        self.count = 0

    def _path(self, index: int) -> Path:
        return self.dir / f"shard-{index:06d}.tar{'.gz' if self.compress else ''}"

    def _close(self) -> None:
        if self.writer is None:
            return
        self.writer.close()
        final = self._path(len(self.shards))
        tmp = final.with_name(final.name + ".tmp")
        tmp.replace(final)
        self.shards.append(ShardInfo(final.name, self.count, final.stat().st_size))
        self.writer, self.count = None, 0

    def write(self, sample: dict) -> None:
        if self.writer is None:
            tmp = self._path(len(self.shards))
            self.writer = wds.TarWriter(str(tmp.with_name(tmp.name + ".tmp")), encoder=False,
                                        compress=self.compress, mtime=0)
        self.writer.write(sample)
        self.count += 1
        if self.count >= self.per_shard:
            self._close()

    def close(self) -> list[ShardInfo]:
        self._close()
        return self.shards


class ShuffleBuffer:
    """Holds up to ``size`` samples and emits a uniformly random one when full (and all on flush)."""

    def __init__(self, size: int, seed: int, sink: ShardSink):
        self.size, self.rng, self.sink, self.items = max(1, size), random.Random(seed), sink, []

    def add(self, item: dict) -> None:
        self.items.append(item)
        if len(self.items) >= self.size:
            self._emit()

    def _emit(self) -> None:
        i = self.rng.randrange(len(self.items))
        self.items[i], self.items[-1] = self.items[-1], self.items[i]
        self.sink.write(self.items.pop())

    def flush(self) -> None:
        while self.items:
            self._emit()


def document_conditioning(verifier: Verifier, docs: list[list[int]], positions: list[list[int]],
                          pad_id: int) -> list[torch.Tensor]:
    """C at ``positions`` (block start - 1) of each document, from one right-padded causal pass."""
    device = verifier.device
    width = max(len(d) for d in docs)
    ids = torch.full((len(docs), width), pad_id, dtype=torch.long)
    for i, d in enumerate(docs):
        ids[i, :len(d)] = torch.tensor(d)
    hidden = verifier.hidden_states(ids.to(device))
    return [hidden[i, torch.tensor(p, device=device)].cpu() for i, p in enumerate(positions)]


def _auto_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@contextmanager
def fresh_output(out: Path, overwrite: bool) -> Iterator[Path]:
    """A hidden sibling directory to write into; it replaces ``out`` only if the body succeeds."""
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"out: '{out}' already exists and is not empty; choose a new directory or pass "
                          f"overwrite=true to replace it")
    work = out.with_name(f".{out.name}.partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        yield work
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    work.rename(out)


def prepare_data(cfg: PrepareConfig, log=print) -> dict:
    """Tokenize ``cfg.input`` into ``cfg.out/{train,val}`` shard directories; returns a summary dict.

    Nothing appears at ``cfg.out`` unless the whole run succeeds (an existing ``out`` is replaced only then)."""
    with fresh_output(Path(cfg.out), cfg.overwrite) as work:
        summary = _write_shards(cfg, work)
    summary["out"] = cfg.out
    log(f"prepare-data: {summary['documents']} documents, {summary['tokens']} tokens -> " + ", ".join(
        f"{s}: {summary[s]['samples']} samples in {summary[s]['shards']} shards, "
        f"{summary[s]['bytes_per_sample']} bytes/sample" for s in ("train", "val") if s in summary)
        + f" ({summary['seconds']} s)")
    return summary


def _write_shards(cfg: PrepareConfig, out: Path) -> dict:
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.verifier.path)
    start_id, eos_id = document_start_id(tokenizer), tokenizer.eos_token_id
    if eos_id is None:
        raise ConfigError("tokenizer: has no EOS token; it is needed to end documents and pad the last block")
    vocab = len(tokenizer)
    tok_dtype = token_dtype(vocab)

    verifier = None
    hidden_size = None
    if cfg.cond:
        cond_dtype = getattr(torch, cfg.cond_dtype)
        verifier = Verifier.load(cfg.verifier, dtype=torch.bfloat16 if cfg.cond_dtype == "bfloat16" else
                                 torch.float32).to(_auto_device(cfg.device))
        hidden_size = verifier.config.hidden_size
        if verifier.config.vocab_size < vocab:
            raise ConfigError(f"tokenizer has {vocab} tokens but the verifier's vocab_size is "
                              f"{verifier.config.vocab_size}")

    fields = ["prefix", "block"] + (["cond"] if cfg.cond else [])
    sinks = {split: ShardSink(out / split, cfg.shard_samples, cfg.compress) for split in ("train", "val")}
    buffers = {split: ShuffleBuffer(cfg.shuffle_buffer, cfg.seed + i, sinks[split])
               for i, split in enumerate(("train", "val"))}
    stats = {"documents": 0, "tokens": 0, "samples": {"train": 0, "val": 0}}
    t0 = time.time()
    pending: list[tuple[int, list[int]]] = []

    def emit(doc_index: int, doc: list[int], conds: torch.Tensor | None) -> None:
        split = "val" if random.Random(f"{cfg.seed}:{doc_index}").random() < cfg.val_fraction else "train"
        for k, (_, prefix, block) in enumerate(document_blocks(doc, cfg.block_len, cfg.prefix_len, eos_id)):
            sample = {"__key__": f"{doc_index:010d}_{k:05d}"}
            arrays = {"prefix": np.asarray(prefix, dtype=tok_dtype), "block": np.asarray(block, dtype=tok_dtype)}
            if conds is not None:
                arrays["cond"] = conds[k].to(cond_dtype)
            for name, array in arrays.items():
                suffix, data = encode_array(name, array)
                sample[suffix] = data
            buffers[split].add(sample)
            stats["samples"][split] += 1

    def flush_pending() -> None:
        """Run the verifier over the pending documents, sorted by length to waste little on padding."""
        pending.sort(key=lambda item: len(item[1]))
        while pending:
            n = 1
            while n < len(pending) and (n + 1) * len(pending[n][1]) <= cfg.cond_batch_tokens:
                n += 1
            batch = pending[:n]
            del pending[:n]
            docs = [d for _, d in batch]
            positions = [[s - 1 for s, _, _ in document_blocks(d, cfg.block_len, cfg.prefix_len, eos_id)]
                         for d in docs]
            for (index, doc), c in zip(batch, document_conditioning(verifier, docs, positions, eos_id)):
                emit(index, doc, c)

    batch_texts: list[str] = []
    pending_tokens = 0

    def tokenize_batch() -> None:
        nonlocal pending_tokens
        for ids in tokenizer(batch_texts, add_special_tokens=False)["input_ids"]:
            doc = [start_id] + list(ids) + [eos_id]
            index = stats["documents"]
            stats["documents"] += 1
            stats["tokens"] += len(ids)
            if verifier is None:
                emit(index, doc, None)
                continue
            pending.append((index, doc))
            pending_tokens += len(doc)
            if pending_tokens >= 8 * cfg.cond_batch_tokens:
                flush_pending()
                pending_tokens = 0
        batch_texts.clear()

    for n, text in enumerate(iter_documents(cfg.input, cfg.text_field, cfg.text_template)):
        if cfg.max_docs is not None and n >= cfg.max_docs:
            break
        batch_texts.append(text)
        if len(batch_texts) >= 256:
            tokenize_batch()
    tokenize_batch()
    flush_pending()

    if stats["documents"] == 0:
        raise ConfigError(f"input: no documents found in {cfg.input}")
    summary = {"documents": stats["documents"], "tokens": stats["tokens"], "seconds": round(time.time() - t0, 2)}
    for split in ("train", "val"):
        buffers[split].flush()
        shards = sinks[split].close()
        if not shards:
            (out / split).rmdir()
            continue
        manifest = Manifest(block_len=cfg.block_len, prefix_len=cfg.prefix_len, fields=fields, vocab_size=vocab,
                            hidden_size=hidden_size, tokenizer=str(Path(cfg.tokenizer or cfg.verifier.path).resolve()),
                            cond_source=str(Path(cfg.verifier.path).resolve()) if cfg.cond else None, shards=shards)
        manifest.write(out / split)
        summary[split] = {"samples": manifest.samples, "shards": len(shards), "bytes": manifest.bytes,
                          "bytes_per_sample": round(manifest.bytes_per_sample, 1)}
    return summary
