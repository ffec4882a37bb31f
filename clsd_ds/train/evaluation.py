"""Evaluation during training: held-out loss metrics and, for drafter stages, τ of speculative decoding.

At every evaluation the task's loss metrics are averaged over the same held-out batches (noise drawn from
(seed, batch index, rank), so evaluations are comparable across steps and restarts). With ``train.tau_prompts: P``
and a task that trains a drafter, each rank also decodes its first P held-out prefixes in ``exact`` mode for
``train.tau_cycles`` cycles of ``train.tau_candidates`` candidates:

    τ = tokens committed / cycles        (summed over the ranks' prompts)

with the sampler the drafter is trained with (its ``flow.euler_steps``: ``DecodeConfig.euler_steps`` is left unset).
A DiT with a fixed source (``flow.source: mask``, tokens objective) has one draft: its candidates are the lattice of
that draft (``decode.candidates: lattice``), drafted again after their pivots twice (``decode.redraft: 2``) when it
trains with ``flow.reveal`` — as it is best decoded (docs/inference.md, "Which drafter?").
With ``train.keep_best_tau`` an evaluation whose τ beats every earlier one (across restarts too) exports the drafter
to ``<run_dir>/best_tau/``; ``best_tau.json`` (τ, step) is written last.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from .distributed import DistInfo
from .metrics import Accumulator, MetricsLog
from ..data.reader import to_device
from .seeding import step_generator

BEST_TAU = "best_tau"


def best_tau(run_dir: Path) -> float:
    """τ of the drafter kept in ``<run_dir>/best_tau`` (-inf when none is)."""
    record = Path(run_dir) / BEST_TAU / "best_tau.json"
    return json.loads(record.read_text())["tau"] if record.is_file() else -math.inf


class Evaluator:
    """Evaluates a task on fixed held-out batches; ``export(engine, out_dir)`` writes the drafter (keep_best_tau)."""

    def __init__(self, task, batches: list[dict], train_cfg, seed: int, dist_info: DistInfo, run_dir: Path,
                 export: Callable):
        self.task, self.batches, self.cfg, self.seed, self.dist = task, batches, train_cfg, seed, dist_info
        self.run_dir, self.export = Path(run_dir), export
        self.best = best_tau(run_dir)  # read by every rank before any rank can write it

    def __call__(self, engine, step: int, log: MetricsLog) -> dict:
        """Held-out metrics (the same on every rank), logged; a new best τ is exported with ``keep_best_tau``."""
        acc = Accumulator()
        engine.eval()
        with torch.no_grad():
            for i, batch in enumerate(self.batches):
                gen = step_generator(self.seed, i, self.dist.rank, 0, self.dist.device, kind="eval")
                _, metrics = self.task.loss(engine, to_device(batch, self.dist.device), gen, step)
                acc.add(metrics)
            if self.cfg.tau_prompts:
                acc.add({"tau": self.tau(engine, step)})
        engine.train()
        stats = acc.reduce(self.dist.device)
        log.log(step, stats, kind="eval")
        if self.cfg.keep_best_tau and stats.get("tau", -math.inf) > self.best:
            self.best = stats["tau"]
            self.export(engine, self.run_dir / BEST_TAU)
            if self.dist.is_main:  # written last: a crash before it leaves a lower τ on record, never a higher one
                (self.run_dir / BEST_TAU / "best_tau.json").write_text(json.dumps({"tau": stats["tau"], "step": step}))
            dist.barrier()
            log.write(f"new best τ {stats['tau']:.3f} at step {step}: drafter exported to {self.run_dir / BEST_TAU}")
        return stats

    def tau(self, engine, step: int) -> tuple[int, int]:
        """(tokens committed, cycles) of exact speculative decoding from this rank's first held-out prefixes. Every
        rank decodes as many prompts for as many cycles (no EOS stop), so partitioned (ZeRO-3) modules are
        gathered in lockstep."""
        from ..infer.decoder import DecodeConfig

        prompts = [b["prefix"][i, : int(b["prefix_len"][i])].tolist() for b in self.batches
                   for i in range(len(b["prefix"]))]
        count = torch.tensor([min(len(prompts), self.cfg.tau_prompts)], device=self.dist.device)
        if dist.is_initialized():
            dist.all_reduce(count, op=dist.ReduceOp.MIN)
        cycles = self.cfg.tau_cycles  # bounds the decoding (max_cycles below), not max_new_tokens
        flow = getattr(self.task.module, "flow", None)  # a DiT's (Stage A); Stage C's velocity DiT and AR: noise
        lattice = flow is not None and flow.source == "mask" and flow.objective == "tokens"
        cfg = DecodeConfig(num_candidates=self.cfg.tau_candidates, candidates="lattice" if lattice else "noise",
                           redraft=2 if lattice and flow.reveal > 0 else 0, max_new_tokens=1_000_000,
                           seed=self.seed + step)
        decoder = self.task.decoder(engine, self.dist.device, cfg)
        committed = sum(len(decoder.generate(p, max_cycles=cycles)[0]) for p in prompts[: int(count)])
        return committed, int(count) * cycles
