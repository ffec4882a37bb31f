"""The DeepSpeed config a run hands to ``deepspeed.initialize``: the file's ZeRO and precision settings, plus the
batch sizes, clipping and (when DeepSpeed's own optimizer is needed) the optimizer from the trainer's config.

A DeepSpeed JSON is named as given or as shipped (``ds_configs/NAME.json``, ``shipped.py``). The keys this trainer
owns (``OWNED_DS_KEYS``) must not be set in the file, so there is one place for each setting.
"""

from __future__ import annotations

import torch

from ..config import ConfigError, read_mapping
from ..shipped import resolve

OWNED_DS_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                 "gradient_clipping", "optimizer", "scheduler")


def micro_batching(batch_size: int, micro: int | None, world: int) -> tuple[int, int]:
    """(micro batch per rank, accumulation steps) so that micro * accum * world == batch_size."""
    micro = micro or max(1, batch_size // world)
    if batch_size % (micro * world):
        raise ConfigError(f"train.batch_size={batch_size} is not a multiple of train.micro_batch_size={micro} "
                          f"x world size {world}")
    return micro, batch_size // (micro * world)


def read_ds_config(path: str) -> dict:
    """A DeepSpeed JSON file, looked up as given, then among the shipped ones (``ds_configs/NAME.json``)."""
    return read_mapping(resolve(path, "train.ds_config"))


def build_ds_config(path: str, optim, batch: int, micro: int, accum: int) -> tuple[dict, bool]:
    """The DeepSpeed config: the file's ZeRO/precision settings + batch, clipping (and optimizer) from ``optim``
    (an ``OptimConfig``). Returns (config, use DeepSpeed's optimizer)."""
    ds = read_ds_config(path)
    clash = [k for k in OWNED_DS_KEYS if k in ds]
    if clash:
        raise ConfigError(f"{path}: {', '.join(clash)} must not be set here; they come from the trainer config "
                          f"(train.batch_size, train.micro_batch_size, optim.*)")
    ds.update(train_batch_size=batch, train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=accum,
              gradient_clipping=optim.grad_clip)
    use_ds = optim.backend == "deepspeed" or (optim.backend == "auto" and offloads_optimizer(ds))
    if offloads_optimizer(ds) and not use_ds:
        raise ConfigError(f"{path} offloads the optimizer, which needs optim.backend=deepspeed (DeepSpeedCPUAdam)")
    if use_ds:
        ds["optimizer"] = {"type": "AdamW", "params": {"lr": optim.lr, "betas": optim.betas, "eps": optim.eps,
                                                        "weight_decay": optim.weight_decay}}
    return ds, use_ds


def offloads_optimizer(ds: dict) -> bool:
    """Whether a DeepSpeed config keeps the optimizer states in CPU (or NVMe) memory: DeepSpeed's CPU Adam then."""
    return ds.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none") not in ("none", None)


def compute_dtype(ds: dict) -> torch.dtype:
    """The dtype the engine computes in: bf16 or fp16 when the config enables them, else fp32."""
    if ds.get("bf16", {}).get("enabled"):
        return torch.bfloat16
    if ds.get("fp16", {}).get("enabled"):
        return torch.float16
    return torch.float32


def is_zero3(ds: dict) -> bool:
    return ds.get("zero_optimization", {}).get("stage", 0) == 3
