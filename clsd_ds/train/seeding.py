"""Randomness without state: every draw in a step (noise, timesteps) comes from a generator seeded by
(kind, seed, step, rank, micro-step), so a resumed run draws exactly what an uninterrupted one would and there is
no RNG state to checkpoint."""

from __future__ import annotations

import hashlib

import torch


def step_generator(seed: int, step: int, rank: int, micro: int, device: torch.device, kind: str = "train"):
    digest = hashlib.blake2b(f"{kind}:{seed}:{step}:{rank}:{micro}".encode(), digest_size=8).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
