"""The autoregressive baselines that speculative decoding is measured against: greedy decoding by the verifier alone.

``static`` (the default baseline): HF's ``StaticCache`` (fixed-size attention K/V, in-place DeltaNet conv and
recurrent states), one-token steps with fixed shapes, and on a GPU the step captured once in a CUDA graph and
replayed, so that a token costs one graph launch and no host sync until the end. ``generate``: HF's own cached
``generate``, for comparison.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

import torch
from transformers import Qwen3_5ForCausalLM, StaticCache

Baseline = Literal["static", "generate"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StaticGreedy:
    """Greedy decoding with a static cache of ``max_len`` positions; ``cuda_graph`` (default: on a GPU) replays
    the captured one-token step."""

    def __init__(self, lm: Qwen3_5ForCausalLM, max_len: int, cuda_graph: bool | None = None):
        self.lm, self.max_len, self.device = lm.eval(), max_len, lm.device
        self.cache = StaticCache(config=lm.config, max_cache_len=max_len)
        self.use_graph = self.device.type == "cuda" if cuda_graph is None else cuda_graph
        self.graph: torch.cuda.CUDAGraph | None = None

    def _step(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        logits = self.lm(token, past_key_values=self.cache, use_cache=True, cache_position=position).logits
        return logits[:, -1].argmax(-1, keepdim=True)

    def _capture(self) -> None:
        """Record the step on static inputs (after warm-up steps on a side stream, as CUDA graphs require)."""
        self.token = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        self.position = torch.zeros(1, dtype=torch.long, device=self.device)
        self._step(self.token, self.position)  # a first call allocates whatever the cache allocates lazily
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(3):
                self._step(self.token, self.position)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = self._step(self.token, self.position)

    @torch.no_grad()
    def generate(self, prompt: list[int], n: int) -> list[int]:
        """The n greedy tokens after ``prompt``."""
        if len(prompt) + n > self.max_len:
            raise ValueError(f"StaticGreedy: prompt ({len(prompt)}) + new tokens ({n}) exceed the static cache's "
                             f"max_len {self.max_len}")
        if self.use_graph and self.graph is None:
            try:
                self._capture()
            except RuntimeError as err:  # e.g. a kernel that syncs with the host: measure without the graph
                logging.getLogger("clsd_ds").warning("CUDA graph capture failed (%s); stepping without it", err)
                self.use_graph, self.graph = False, None
        self.cache.reset()
        ids = torch.tensor([prompt], device=self.device)
        logits = self.lm(ids, past_key_values=self.cache, use_cache=True,
                         cache_position=torch.arange(len(prompt), device=self.device)).logits
        tokens = [logits[:, -1].argmax(-1, keepdim=True)]
        for i in range(n - 1):
            position = torch.tensor([len(prompt) + i], device=self.device)
            if self.graph is None:
                tokens.append(self._step(tokens[-1], position))
            else:
                self.token.copy_(tokens[-1])
                self.position.copy_(position)
                self.graph.replay()
                tokens.append(self.out.clone())
        return torch.cat(tokens, 1)[0].tolist()


def hf_generate(lm: Qwen3_5ForCausalLM, prompt: list[int], n: int) -> list[int]:
    """HF's cached greedy ``generate``, exactly n tokens."""
    ids = torch.tensor([prompt], device=lm.device)
    out = lm.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0, eos_token_id=None)
    return out[0, len(prompt):].tolist()


class Autoregressive:
    """A baseline by name, timed: ``decode(prompt, n)`` -> (tokens, seconds)."""

    def __init__(self, lm: Qwen3_5ForCausalLM, kind: Baseline, max_len: int):
        self.lm, self.kind = lm, kind
        self.static = StaticGreedy(lm, max_len) if kind == "static" else None

    @torch.no_grad()
    def decode(self, prompt: list[int], n: int) -> tuple[list[int], float]:
        sync(self.lm.device)
        t = time.perf_counter()
        out = self.static.generate(prompt, n) if self.static else hf_generate(self.lm, prompt, n)
        sync(self.lm.device)
        return out, time.perf_counter() - t
