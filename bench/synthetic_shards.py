"""Synthetic shards in the real format (random token ids, random C), for benchmarks at any shape.

Speed and size do not depend on what the ids mean; ids are drawn Zipf-like so that compression sees a
text-like distribution rather than uniform noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from clsd_ds.data.format import Manifest, encode_array, token_dtype
from clsd_ds.data.writer import ShardSink


def write_synthetic_shards(out: Path, samples: int, vocab: int, block_len: int, prefix_len: int,
                           hidden: int | None, compress: bool = True, shard_samples: int = 2000,
                           seed: int = 0) -> Manifest:
    """``samples`` samples of a full prefix + block (+ bf16 C when ``hidden``) in ``out``; returns the manifest."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    dtype = token_dtype(vocab)
    sink = ShardSink(out, shard_samples, compress)
    for i in range(samples):
        ids = (np.minimum(rng.zipf(1.2, prefix_len + block_len), vocab) - 1).astype(dtype)
        arrays = {"prefix": ids[:prefix_len], "block": ids[prefix_len:]}
        if hidden:
            arrays["cond"] = torch.randn(hidden, generator=gen).to(torch.bfloat16)
        sample = {"__key__": f"{i:010d}_00000"}
        for name, array in arrays.items():
            suffix, data = encode_array(name, array)
            sample[suffix] = data
        sink.write(sample)
    manifest = Manifest(block_len=block_len, prefix_len=prefix_len,
                        fields=["prefix", "block"] + (["cond"] if hidden else []), vocab_size=vocab,
                        hidden_size=hidden, shards=sink.close())
    manifest.write(out)
    return manifest
