"""The shard format: webdataset tar shards of token-id samples, plus a manifest.

One sample is one K-token block with its left context:

    <key>.prefix.npy          int  [P']    up to prefix_len tokens before the block (>= 1: the document-start token)
    <key>.block.npy           int  [K]     the block's token ids (absent only in embedding shards whose ids
                                           could not be recovered)
    <key>.cond.npy | .cond.bf16.npy        [d]      optional: C precomputed by the verifier
    <key>.emb.npy  | .emb.bf16.npy         [K, d]   optional: the block's embeddings (embedding shards)

Token ids are uint16 when the vocabulary fits, else int32. bfloat16 arrays are stored as their uint16 bit
patterns under a ``.bf16.npy`` name (numpy has no bfloat16). Only ``.npy`` is ever decoded, with
``allow_pickle=False``. ``manifest.json`` lists every shard with its sample count, so a truncated shard is
detected even when it ends on a member boundary.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import ConfigError

MANIFEST = "manifest.json"
FORMAT_NAME = "clsd-shards"
FORMAT_VERSION = 1
TENSOR_FIELDS = ("prefix", "block", "cond", "emb")


class ShardError(RuntimeError):
    """A shard is unreadable, truncated or does not match its manifest."""


@dataclass
class ShardInfo:
    name: str
    samples: int
    bytes: int


@dataclass
class Manifest:
    block_len: int
    prefix_len: int
    fields: list[str]  # which of TENSOR_FIELDS every sample has
    vocab_size: int
    hidden_size: int | None = None  # set when cond or emb are stored
    tokenizer: str | None = None
    cond_source: str | None = None  # verifier that computed C
    shards: list[ShardInfo] = field(default_factory=list)
    format: str = FORMAT_NAME
    version: int = FORMAT_VERSION

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.shards)

    @property
    def bytes_per_sample(self) -> float:
        return self.bytes / max(1, self.samples)

    def check_vocab(self, vocab: int, where: str, model: str = "the verifier has") -> None:
        """A clear error when the shards' token ids can exceed the model's vocabulary of ``vocab``."""
        if self.vocab_size > vocab:
            raise ConfigError(f"{where}: shards use a vocabulary of {self.vocab_size} tokens, {model} {vocab}")

    def write(self, directory: str | Path) -> None:
        data = asdict(self)
        data["samples"], data["bytes_per_sample"] = self.samples, round(self.bytes_per_sample, 1)
        tmp = Path(directory) / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(Path(directory) / MANIFEST)

    @classmethod
    def read(cls, directory: str | Path) -> "Manifest":
        directory = Path(directory)
        path = directory / MANIFEST
        if not directory.is_dir():
            raise ConfigError(f"shard directory '{directory}' does not exist")
        if not path.is_file():
            tars = sorted(p.name for p in directory.glob("*.tar*"))
            what = f"it holds {len(tars)} tar files but" if tars else "it is empty or"
            raise ConfigError(f"shard directory '{directory}': {what} has no {MANIFEST}; write shards with "
                              f"`python -m clsd_ds prepare-data` (or `import-seed`)")
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT_NAME or data.get("version") != FORMAT_VERSION:
            raise ConfigError(f"'{path}': not a {FORMAT_NAME} v{FORMAT_VERSION} manifest")
        data.pop("samples", None)
        data.pop("bytes_per_sample", None)
        data["shards"] = [ShardInfo(**s) for s in data["shards"]]
        manifest = cls(**data)
        if not manifest.shards or manifest.samples == 0:
            raise ConfigError(f"shard directory '{directory}': the manifest lists no samples")
        missing = [s.name for s in manifest.shards if not (directory / s.name).is_file()]
        if missing:
            raise ConfigError(f"shard directory '{directory}': shards listed in {MANIFEST} are missing: "
                              f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        return manifest


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.int32)


def encode_array(name: str, array: np.ndarray | torch.Tensor) -> tuple[str, bytes]:
    """(member suffix, bytes) for one field; bf16 tensors become ``<name>.bf16.npy`` of uint16 bits."""
    suffix = f"{name}.npy"
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu()
        if array.dtype == torch.bfloat16:
            array, suffix = array.view(torch.uint16), f"{name}.bf16.npy"
        array = array.numpy()
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return suffix, buf.getvalue()


def decode_sample(raw: dict) -> dict:
    """Decode a webdataset raw sample into tensors; anything but .npy members is an error."""
    out = {"__key__": raw["__key__"]}
    for suffix, data in raw.items():
        if suffix.startswith("__"):
            continue
        if not suffix.endswith(".npy"):
            raise ShardError(f"sample '{raw['__key__']}': unexpected member '.{suffix}' (only .npy is decoded)")
        name = suffix.split(".")[0]
        if name not in TENSOR_FIELDS:
            raise ShardError(f"sample '{raw['__key__']}': unknown field '{name}'")
        array = np.load(io.BytesIO(data), allow_pickle=False)
        tensor = torch.from_numpy(array)
        if suffix.endswith(".bf16.npy"):
            tensor = tensor.view(torch.bfloat16)
        elif name in ("prefix", "block"):
            tensor = tensor.long()
        out[name] = tensor
    return out
