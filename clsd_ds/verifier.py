"""The frozen Qwen3.5 verifier: loading, embedding lookup and the conditioning vector C.

C is the verifier's final-norm hidden state at the last prefix token, i.e. the vector its LM head reads to predict
the first token of the block: C = norm(h_L[prefix_len - 1]).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import AutoTokenizer, Qwen3_5ForCausalLM, Qwen3_5TextConfig

from .config import ConfigError

SUPPORTED_MODEL_TYPES = ("qwen3_5_text", "qwen3_5")


@dataclass
class VerifierConfig:
    path: str | None = None  # local Hugging Face checkpoint directory (config.json + safetensors); never downloaded
    random_init: dict[str, Any] | None = None  # Qwen3_5TextConfig fields for a random-init verifier (tests only)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: the training precision
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"

    def validate(self) -> None:
        if (self.path is None) == (self.random_init is None):
            raise ConfigError("field 'verifier': set exactly one of 'verifier.path' (a local checkpoint directory) "
                              "or 'verifier.random_init' (a tiny random-init config for tests)")


def check_checkpoint_dir(path: str) -> Path:
    """The checkpoint directory, or a ConfigError saying what is wrong with it (never downloads)."""
    p = Path(path)
    if not p.is_dir():
        hint = ""
        if "/" in path and not path.startswith((".", "/", "~")) and len(path.split("/")) == 2:
            hint = (f" (relative to {Path.cwd()}); if it is a hub id: clsd-ds never downloads weights: fetch it "
                    f"first, e.g. `huggingface-cli download {path} --local-dir ./{path.split('/')[-1]}`, and pass that "
                    f"directory")
        raise ConfigError(f"verifier.path: directory '{path}' does not exist{hint}")
    cfg = p / "config.json"
    if not cfg.is_file():
        raise ConfigError(f"verifier.path: '{path}' has no config.json; expected a Hugging Face checkpoint directory")
    model_type = json.loads(cfg.read_text()).get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(f"verifier.path: '{cfg}' has model_type {model_type!r}; expected one of "
                          f"{', '.join(SUPPORTED_MODEL_TYPES)} (a Qwen3.5 checkpoint)")
    return p


def resolve_dtype(name: str, default: torch.dtype) -> torch.dtype:
    return default if name == "auto" else getattr(torch, name)


class Verifier:
    """A frozen ``Qwen3_5ForCausalLM`` with the two reads the drafter needs: embeddings and C."""

    def __init__(self, lm: Qwen3_5ForCausalLM):
        self.lm = lm.eval().requires_grad_(False)

    @classmethod
    def load(cls, cfg: VerifierConfig, dtype: torch.dtype = torch.float32, seed: int = 0,
             device: torch.device | str = "cpu") -> "Verifier":
        """From ``cfg.path`` (loaded on the CPU), or random-init built directly on ``device`` (fast at 9B scale)."""
        dtype = resolve_dtype(cfg.dtype, dtype)
        if cfg.path is not None:
            path = check_checkpoint_dir(cfg.path)
            lm = Qwen3_5ForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=cfg.attn_implementation)
        else:
            try:
                text_cfg = Qwen3_5TextConfig(**cfg.random_init)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"verifier.random_init: not a valid Qwen3_5TextConfig: {exc}") from None
            text_cfg._attn_implementation = cfg.attn_implementation
            default = torch.get_default_dtype()
            device = torch.device(device)
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed)
                torch.set_default_dtype(dtype)  # build in the target dtype: a 9B-shaped model is 18 GB in bf16
                try:
                    with device:
                        lm = Qwen3_5ForCausalLM(text_cfg)
                finally:
                    torch.set_default_dtype(default)
        return cls(lm)

    @property
    def config(self) -> Qwen3_5TextConfig:
        return self.lm.config

    @property
    def device(self) -> torch.device:
        return self.lm.get_input_embeddings().weight.device

    def to(self, device) -> "Verifier":
        self.lm.to(device)
        return self

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings E[ids] (the frozen input embedding matrix)."""
        return self.lm.get_input_embeddings()(ids)

    def embedding_rms(self) -> float:
        """RMS over all entries of the embedding matrix: the scale that maps embeddings to unit RMS."""
        w = self.lm.get_input_embeddings().weight
        return w.float().pow(2).mean().sqrt().item()

    @torch.no_grad()
    def hidden_states(self, ids: torch.Tensor) -> torch.Tensor:
        """Final-norm hidden states [B, T, d] of a causal pass over ``ids`` (right padding is harmless)."""
        return self.lm.model(input_ids=ids, use_cache=False).last_hidden_state

    @torch.no_grad()
    def conditioning(self, prefix: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """C for right-padded prefixes [B, P] of true lengths [B] (each >= 1): final-norm state at lengths-1."""
        if int(lengths.min()) < 1:
            raise ValueError("conditioning: every prefix needs at least one token (the document-start token)")
        h = self.hidden_states(prefix[:, : int(lengths.max())])
        return h[torch.arange(h.shape[0], device=h.device), lengths.to(h.device) - 1]


def nearest_tokens(x: torch.Tensor, embedding: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """argmin_v ||x - E_v||² for every vector of x [..., d], scanning the vocabulary in chunks."""
    flat = x.reshape(-1, x.shape[-1]).float()
    best = torch.full((flat.shape[0],), float("inf"), device=x.device)
    index = torch.zeros(flat.shape[0], dtype=torch.long, device=x.device)
    for start in range(0, embedding.shape[0], chunk):
        e = embedding[start:start + chunk].float()
        dist = e.pow(2).sum(-1)[None] - 2 * flat @ e.T  # ||x||² is the same for every candidate
        value, arg = dist.min(-1)
        better = value < best
        best, index = torch.where(better, value, best), torch.where(better, arg + start, index)
    return index.view(x.shape[:-1])


def load_tokenizer(path: str):
    """The verifier's tokenizer from a local directory, with a clear error when it is missing."""
    if not Path(path).is_dir():
        raise ConfigError(f"tokenizer: directory '{path}' does not exist (expected the verifier's checkpoint "
                          f"directory, or a directory written by tokenizer.save_pretrained)")
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"tokenizer: cannot load a tokenizer from '{path}': {exc}") from None


def document_start_id(tokenizer) -> int:
    """The token that opens every document: BOS when the tokenizer has one (Qwen has none), else EOS."""
    tid = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if tid is None:
        raise ConfigError("tokenizer: has neither a BOS nor an EOS token; one is needed to open documents")
    return tid


__all__ = ["VerifierConfig", "Verifier", "check_checkpoint_dir", "load_tokenizer", "document_start_id",
           "resolve_dtype"]
