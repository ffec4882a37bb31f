"""What the primary sends and the trainer checks: one task's group of rollouts as a JSON object.

    {"format": "clsd-trajectory", "version": 2, "task": id, "drafter_version": v, "prompt": [ids],
     "rollouts": [{"completion": [ids], "text": str, "verdict": status, "reason": str, "reward": r,
                   "cycles": [{"length": L, "states": tensor [S + 1, K, d], "tokens": [K ids], "logp": log π_old,
                               "accepted": a, "scored": s}, ...]}, ...]}

A cycle's block was drafted after the first L tokens of prompt + completion (L counts the prompt); its recorded
states and tokens are what ``policy.log_prob`` needs, ``logp`` is its log-probability under the version that
drafted it, over its first s positions' draws (``policy.py``: the credit). Version 1 (every position scored, no
``scored``) is refused. Tensors travel as {"shape": [...], "float32": base64 of the little-endian bytes}.
``problem()`` says what is wrong with a trajectory (None: nothing), so the trainer can refuse it with a reason.
"""

from __future__ import annotations

import base64
import math

import numpy as np
import torch

FORMAT, VERSION = "clsd-trajectory", 2


def encode(t: torch.Tensor) -> dict:
    array = t.detach().to("cpu", torch.float32).contiguous().numpy().astype("<f4")
    return {"shape": list(array.shape), "float32": base64.b64encode(array.tobytes()).decode()}


def decode(d: dict) -> torch.Tensor:
    raw = base64.b64decode(d["float32"], validate=True)
    shape = [int(s) for s in d["shape"]]
    if len(raw) != 4 * math.prod(shape):
        raise ValueError(f"tensor of shape {shape} needs {4 * math.prod(shape)} bytes, got {len(raw)}")
    return torch.from_numpy(np.frombuffer(raw, dtype="<f4").copy()).reshape(shape)


def problem(traj, versions: set[int], steps: int, block_len: int, hidden: int, vocab: int) -> str | None:
    """Why ``traj`` cannot train a DiT of ``steps`` Euler steps, ``block_len``, ``hidden``, ``vocab`` whose known
    versions are ``versions``: a short reason (the stats key), or None."""
    if not isinstance(traj, dict) or traj.get("format") != FORMAT or traj.get("version") != VERSION:
        return "not_a_trajectory"
    if traj.get("drafter_version") not in versions:
        return "unknown_drafter_version"
    prompt, rollouts = traj.get("prompt"), traj.get("rollouts")
    if not isinstance(prompt, list) or not prompt or not isinstance(rollouts, list) or len(rollouts) < 2:
        return "truncated"
    for r in rollouts:
        try:
            completion, cycles, reward = r["completion"], r["cycles"], float(r["reward"])
        except (KeyError, TypeError, ValueError):
            return "truncated"
        if not math.isfinite(reward) or not isinstance(cycles, list) or not cycles:
            return "truncated"
        total = len(prompt) + len(completion)
        for c in cycles:
            try:
                states, tokens, length = decode(c["states"]), c["tokens"], int(c["length"])
                logp, scored = float(c["logp"]), c["scored"]
            except (KeyError, TypeError, ValueError):
                return "truncated"
            K = len(tokens)
            if states.shape != (steps + 1, K, hidden) or not 1 <= K <= block_len:
                return "wrong_shape"
            if not isinstance(scored, int) or not 1 <= scored <= K:
                return "wrong_shape"
            if not all(isinstance(x, int) and 0 <= x < vocab for x in tokens) or not len(prompt) <= length <= total:
                return "wrong_shape"
            if not (math.isfinite(logp) and torch.isfinite(states).all()):
                return "non_finite"
    return None
