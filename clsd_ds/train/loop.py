"""The DeepSpeed training loop shared by every stage (and by the verifier fixture's pretraining).

A *task* (``stages.Task``) supplies the trainable module and the loss; this loop owns everything else: the
DeepSpeed engine (only trainable parameters reach the optimizer), AdamW with warmup + cosine decay (DeepSpeed's
WarmupCosineLR), gradient accumulation, the data stream and its exact position, periodic evaluation
(``evaluation.py``), metrics, checkpoints, automatic resume from the run directory, and the final export.

``Trainer.run`` is a loop over named steps:

    set-up                 engine, resume, data, logs                                 (_setup)
    while step < steps:
        train step         accumulate micro-batches; a non-finite loss stops or is    (_train_step)
                           skipped (train.on_nonfinite), a non-finite gradient norm stops
        log                every train.log_every steps and at the last                (_log)
        evaluate           every train.eval_every steps                               (_evaluate_due)
        save / stop        every train.save_every steps; a stop signal on any rank    (_save_or_stop)
                           saves and leaves for a requeue
    finish                 final evaluation, export, exit.json                        (_finish)

A task may bring its own batches (``task.batch_source``, the shadow loop's Redis stream) instead of shards: then
the source's ``state_dict`` is what a checkpoint records, its ``saved(step, export)`` runs after every checkpoint
(to acknowledge what the checkpoint now covers and publish a version), and a stop signal that arrives while it waits
for data (it raises ``StopWaiting``) checkpoints and leaves as at a step boundary.

Randomness in a step comes from ``seeding.step_generator`` (seed, step, rank, micro-step): a resumed run draws
exactly what an uninterrupted one would, with no RNG state to carry.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import torch
import torch.distributed as dist

from ..config import ConfigError
from ..data.format import Manifest
from ..data.reader import DataConfig, ShardLoader, ShardStream, eval_batches, to_device
from . import checkpoint, faults, runinfo
from .distributed import DistInfo
from .ds_config import build_ds_config, compute_dtype, is_zero3, micro_batching
from .evaluation import Evaluator
from .metrics import Accumulator, MetricsLog, peak_tflops
from .preemption import StopRequest
from .seeding import step_generator
from .stages import Task


@dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 500
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at train.steps
    grad_clip: float = 1.0
    backend: Literal["auto", "torch", "deepspeed"] = "auto"  # auto: DeepSpeed's AdamW when offloading, else torch's

    def validate(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"field 'optim.lr': expected a positive number, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"field 'optim.betas': expected two numbers in [0, 1), got {self.betas}")
        if self.warmup_steps < 0:
            raise ConfigError(f"field 'optim.warmup_steps': expected >= 0, got {self.warmup_steps}")


@dataclass
class TrainConfig:
    steps: int = 50000
    batch_size: int = 32  # global blocks per optimizer step
    micro_batch_size: int | None = None  # per rank and forward; default batch_size / world size
    ds_config: str = "ds_configs/zero3_bf16.json"
    log_every: int = 10
    save_every: int = 1000  # also saved after the last step; 0: no checkpoints at all (benchmarks)
    keep_last: int = 3
    eval_every: int = 0  # 0: evaluate only before the first and after the last step (needs data.val)
    eval_batches: int = 8
    tau_prompts: int = 0  # drafter stages, per rank, at every evaluation: held-out prompts decoded (exact) -> τ
    tau_cycles: int = 4  # decoding cycles per prompt
    tau_candidates: int = 8  # drafted blocks per cycle
    keep_best_tau: bool = False  # export the drafter to <run_dir>/best_tau whenever an evaluation's τ is a new best
    export: bool = True  # write <run_dir>/export after the last step
    peak_tflops: float | None = None  # per device, for MFU; default from the device name
    on_nonfinite: Literal["stop", "skip"] = "stop"  # a NaN/inf loss: stop with a checkpoint, or skip the batch
    max_skipped_batches: int = 100  # skip: stop anyway after this many in one start of the run

    def validate(self) -> None:
        if self.save_every < 0:
            raise ConfigError(f"field 'train.save_every': expected >= 0, got {self.save_every}")
        for name in ("steps", "batch_size", "log_every", "keep_last", "eval_batches", "tau_cycles", "tau_candidates"):
            if getattr(self, name) < 1:
                raise ConfigError(f"field 'train.{name}': expected a positive integer, got {getattr(self, name)}")
        if self.tau_prompts < 0:
            raise ConfigError(f"field 'train.tau_prompts': expected >= 0, got {self.tau_prompts}")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ConfigError(f"field 'train.micro_batch_size': expected a positive integer, "
                              f"got {self.micro_batch_size}")


@dataclass
class LogConfig:
    wandb: bool = False
    project: str = "clsd-ds"
    entity: str | None = None
    name: str | None = None
    progress: bool = True  # tqdm bar on rank 0


class StopWaiting(Exception):
    """Raised by a task's own batch source when a stop was requested while it waited for data."""


class Resumed(NamedTuple):
    """Where a start of the run begins: from scratch, or from a checkpoint."""

    step: int
    samples: int
    data_state: dict | None  # this rank's data position; None: from the start
    note: str | None  # what to log about it


@dataclass
class Progress:
    """The loop's running state between steps."""

    step: int
    samples: int
    summary: dict
    acc: Accumulator = field(default_factory=Accumulator)
    skipped: int = 0  # micro-batches skipped for a non-finite loss in this start
    window_start: float = field(default_factory=time.time)
    window_steps: int = 0
    last_save_s: float | None = None


class Trainer:
    """Runs a task to ``train.steps`` under DeepSpeed, resuming from ``<run_dir>/checkpoints`` if present."""

    def __init__(self, task: Task, run_dir: str, seed: int, data_cfg: DataConfig, optim: OptimConfig,
                 train: TrainConfig, log_cfg: LogConfig, dist_info: DistInfo, config_dict: dict, stop: StopRequest):
        self.task, self.seed, self.dist = task, seed, dist_info
        self.data_cfg, self.optim, self.cfg, self.log_cfg = data_cfg, optim, train, log_cfg
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.config_dict = config_dict
        self.stop = stop

    def run(self) -> dict:
        """Train to ``train.steps``; returns a summary whose ``exit`` is ``finished`` or ``requeue`` (stopped by a
        signal after a checkpoint). Raises FloatingPointError on a non-finite loss under ``on_nonfinite: stop``."""
        p = self._setup()
        try:
            while p.step < self.cfg.steps:
                grad_norm = self._train_step(p)
                if grad_norm is None:  # stopped while waiting for data: nothing applied, checkpoint and leave
                    self._save_or_stop(p)
                    return p.summary
                self._log(p, grad_norm)
                self._evaluate_due(p)
                if self._save_or_stop(p):
                    return p.summary
        finally:
            self.loader.close()
        return self._finish(p)

    # -- set-up ---------------------------------------------------------------------------------------------
    def _setup(self) -> Progress:
        d = self.dist
        self.micro, self.accum = micro_batching(self.cfg.batch_size, self.cfg.micro_batch_size, d.world_size)
        ds_config, use_ds_opt = build_ds_config(self.cfg.ds_config, self.optim, self.cfg.batch_size, self.micro,
                                                self.accum)
        source = getattr(self.task, "batch_source", None)  # a task that brings its own batches (the shadow loop)
        manifest = val_manifest = None
        if source is None:
            manifest = Manifest.read(self.data_cfg.train)
            self.task.check_data(manifest, self.data_cfg.train)
            val_manifest = Manifest.read(self.data_cfg.val) if self.data_cfg.val else None
            if val_manifest is not None:
                self.task.check_data(val_manifest, self.data_cfg.val)
        self.task.setup(d, compute_dtype(ds_config), manifest)
        self.flops_per_token = self.task.flops_per_token()  # before ZeRO-3 partitions the parameters
        self.tokens_per_step = self.cfg.batch_size * (manifest.block_len if manifest else self.task.block_len)
        restart = 0
        if d.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(json.dumps(self.config_dict, indent=1))
            restart = runinfo.record_start(self.run_dir, d.world_size, d.launcher)
        runinfo.log_to_rank_file(self.run_dir, d.rank)

        tag = checkpoint.latest_tag(self.ckpt_dir)
        if tag is not None and checkpoint.saved_world_size(self.ckpt_dir, tag) not in (None, d.world_size):
            tag = checkpoint.universal(self.ckpt_dir, tag, d.is_main)
            ds_config["checkpoint"] = {"load_universal": True}
        self.engine, self.lr_scheduler = self._engine(ds_config, use_ds_opt)
        resumed = self._resume(tag)
        val = eval_batches(self.data_cfg.val, self.micro, d.rank, d.world_size, self.cfg.eval_batches) \
            if val_manifest else []
        self.evaluator = Evaluator(self.task, val, self.cfg, self.seed, d, self.run_dir, self._export) if val else None
        self.loader = ShardLoader(self.data_cfg, self.data_cfg.train, self.micro, d.rank, d.world_size,
                                  state=resumed.data_state, pin_memory=d.device.type == "cuda") if source is None \
            else source(self.micro, d, resumed.data_state, self.stop, self.run_dir)
        self.log = MetricsLog(self.run_dir, d.is_main, self.cfg.steps, resumed.step, self.log_cfg.progress,
                              self.log_cfg, self.config_dict, restart=restart)
        if resumed.note:
            self.log.write(resumed.note)
        self.peak = peak_tflops(self.cfg.peak_tflops)
        p = Progress(resumed.step, resumed.samples, {"start_step": resumed.step, "restart": restart})
        if self.evaluator and p.step == 0:
            p.summary["eval_start"] = self.evaluator(self.engine, p.step, self.log)
        p.window_start = time.time()
        return p

    def _engine(self, ds_config: dict, use_ds_optimizer: bool):
        import deepspeed
        from deepspeed.runtime.lr_schedules import WarmupCosineLR
        from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5GatedDeltaNet

        module = self.task.module
        if is_zero3(ds_config):
            # HF's Gated DeltaNet reads conv1d.weight without calling conv1d, so ZeRO-3 would never gather it:
            # declare it a parameter of the DeltaNet module itself. (Making the DeltaNet a ZeRO-3 "leaf" instead
            # breaks when a module runs twice in one step, as the DiT does over Euler steps, and when HF calls it
            # with keyword arguments only.)
            for m in module.modules():
                if isinstance(m, Qwen3_5GatedDeltaNet):
                    deepspeed.zero.register_external_parameter(m, m.conv1d.weight)
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = None
        if not use_ds_optimizer:
            optimizer = torch.optim.AdamW(params, lr=self.optim.lr, betas=tuple(self.optim.betas), eps=self.optim.eps,
                                          weight_decay=self.optim.weight_decay,
                                          fused=self.dist.device.type == "cuda")

        def scheduler(opt):
            return WarmupCosineLR(opt, total_num_steps=self.cfg.steps, warmup_min_ratio=0.0,
                                  warmup_num_steps=max(1, self.optim.warmup_steps),
                                  cos_min_ratio=self.optim.min_lr_ratio, warmup_type="linear")

        engine, _, _, lr_scheduler = deepspeed.initialize(model=module, model_parameters=params, optimizer=optimizer,
                                                          lr_scheduler=scheduler, config=ds_config)
        return engine, lr_scheduler

    def _resume(self, tag: str | None) -> Resumed:
        """Where this start begins: step, samples seen and this rank's data position from checkpoint ``tag``."""
        if tag is None:
            return Resumed(0, 0, None, None)
        # Checkpoints leave frozen parameters out (a ZeRO-3 verifier comes from its own files), so a module that
        # has some cannot be matched strictly; its trainable weights come from the optimizer partitions.
        frozen = any(not p.requires_grad for p in self.engine.module.parameters())
        _, client = self.engine.load_checkpoint(str(self.ckpt_dir), tag=tag, load_module_strict=not frozen)
        step, samples, d = client["step"], client["samples"], self.dist
        saved = client["data"][0]
        note = f"resumed from {self.ckpt_dir / tag} at step {step}"
        if getattr(self.task, "batch_source", None) is not None:  # the task's own source restores itself
            return Resumed(step, samples, client["data"][d.rank] if client["world_size"] == d.world_size else None,
                           note)
        if (saved["world_size"], saved["num_workers"]) == (d.world_size, max(1, self.data_cfg.num_workers)):
            return Resumed(step, samples, client["data"][d.rank], note)
        stream = ShardStream(self.data_cfg.train, self.micro, d.rank, d.world_size, self.data_cfg.num_workers,
                             self.data_cfg.seed, self.data_cfg.shuffle)
        note += (f" on a new layout ({saved['world_size']} -> {d.world_size} ranks, {saved['num_workers']} -> "
                 f"{stream.workers} workers per rank): the data stream continues from sample {samples}, each worker "
                 f"as far into that epoch as its share of it")
        return Resumed(step, samples, stream.position_after(samples), note)

    # -- one optimizer step ---------------------------------------------------------------------------------
    def _train_step(self, p: Progress) -> float | None:
        """``accum`` micro-batches and the optimizer step; returns the global gradient norm (the same on every
        rank), or None when a task's own source was stopped (a signal) while it waited for the step's first batch.
        A non-finite loss on any rank: stop with a checkpoint, or draw another micro-batch (``skip``)."""
        d, engine = self.dist, self.engine
        step_start = self.loader.state_dict()
        m = attempt = 0
        while m < self.accum:
            try:
                batch = to_device(next(self.loader), d.device)
            except StopWaiting:
                if m == 0:
                    return None
                raise
            gen = step_generator(self.seed, p.step, d.rank, m + 1000 * attempt, d.device)
            loss, metrics = self.task.loss(engine, batch, gen, p.step)
            if m == attempt == 0 and faults.planned("nan_loss", p.step + 1, d.rank):
                loss = loss * math.nan
            if not self._finite_everywhere(loss):
                self._non_finite(p, step_start)
                p.skipped, attempt = p.skipped + 1, attempt + 1
                continue
            engine.backward(loss)
            engine.step()
            p.acc.add(metrics)
            m += 1
        raw_norm = engine.get_global_grad_norm()
        grad_norm = _float(raw_norm)
        if raw_norm is not None and not math.isfinite(grad_norm):
            raise FloatingPointError(f"non-finite gradient norm at step {p.step + 1}; the newest checkpoint in "
                                     f"{self.ckpt_dir} is from before it")
        p.step += 1
        p.window_steps += 1
        p.samples += self.cfg.batch_size
        self.log.advance(p.step)
        return grad_norm

    def _finite_everywhere(self, loss: torch.Tensor) -> bool:
        flag = torch.isfinite(loss.detach()).to(torch.int32).reshape(1)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def _non_finite(self, p: Progress, step_start: dict) -> None:
        """A micro-batch gave a non-finite loss on some rank: stop with a checkpoint of the last good state, or
        (``on_nonfinite: skip``) let the caller draw another micro-batch, up to ``max_skipped_batches``."""
        if self.cfg.on_nonfinite == "skip" and p.skipped < self.cfg.max_skipped_batches:
            logging.getLogger("clsd_ds").warning("non-finite loss at step %d: micro-batch skipped (%d so far)",
                                                 p.step + 1, p.skipped + 1)
            return
        if checkpoint.latest_tag(self.ckpt_dir) != checkpoint.tag_for(p.step):
            self._save(p.step, p.samples, step_start)  # no update was applied: this is the last good state
        if self.dist.is_main:
            runinfo.write_exit(self.run_dir, "nonfinite", p.step)
        raise FloatingPointError(
            f"non-finite loss in step {p.step + 1} (after {p.skipped} skipped micro-batches); the state before it is "
            f"saved in {self.ckpt_dir / checkpoint.tag_for(p.step)} (set train.on_nonfinite=skip to skip such "
            f"batches)")

    # -- decisions after a step -----------------------------------------------------------------------------
    def _log(self, p: Progress, grad_norm: float) -> None:
        if p.step % self.cfg.log_every and p.step != self.cfg.steps:
            return
        d = self.dist
        elapsed = time.time() - p.window_start
        stats = p.acc.reduce(d.device)
        tok_s = self.tokens_per_step * p.window_steps / elapsed
        stats.update(tok_s=tok_s, step_s=elapsed / p.window_steps, lr=self.lr_scheduler.get_last_lr()[0],
                     grad_norm=grad_norm, samples=p.samples, skipped_batches=p.skipped,
                     skipped_shards=_sum_over_ranks(self.loader.skipped_shards, d.device))
        if self.peak:
            stats["mfu"] = self.flops_per_token * tok_s / (self.peak * 1e12 * d.world_size)
        if d.device.type == "cuda":
            stats["mem_gib"] = torch.cuda.max_memory_allocated(d.device) / 2**30
        self.log.log(p.step, stats)
        p.summary["last"] = stats
        p.window_start, p.window_steps = time.time(), 0

    def _evaluate_due(self, p: Progress) -> None:
        if self.evaluator and self.cfg.eval_every and p.step % self.cfg.eval_every == 0 and p.step < self.cfg.steps:
            self.evaluator(self.engine, p.step, self.log)

    def _save_or_stop(self, p: Progress) -> bool:
        """Checkpoint when due or when any rank was signalled; True when the run stops here for a requeue."""
        stopping = self.stop.anywhere(self.dist.device) and p.step < self.cfg.steps  # at the last step: finish
        due = self.cfg.save_every and (p.step % self.cfg.save_every == 0 or p.step == self.cfg.steps)
        if stopping or due:
            p.last_save_s = self._save(p.step, p.samples, self.loader.state_dict())
            p.window_start += p.last_save_s
            saved = getattr(self.loader, "saved", None)  # a task's own source: what the checkpoint now covers
            if saved is not None:
                saved(p.step, lambda out_dir: self._export(self.engine, out_dir))
        if not stopping:
            return False
        p.summary.update(exit="requeue", end_step=p.step, save_s=p.last_save_s)
        if self.dist.is_main:
            runinfo.write_exit(self.run_dir, "signal", p.step, signal=self.stop.received or "(another rank)")
        self.log.write(f"stop requested ({self.stop.received or 'another rank'}): checkpoint at step {p.step} saved, "
                       f"exiting for a requeue")
        self.log.close()
        dist.barrier()  # leave together: the first rank to exit makes srun signal the others
        return True

    def _finish(self, p: Progress) -> dict:
        p.summary.update(exit="finished", end_step=p.step, save_s=p.last_save_s)
        if self.evaluator:
            p.summary["eval_end"] = self.evaluator(self.engine, p.step, self.log)
        if self.cfg.export:
            self._export(self.engine, self.run_dir / "export")
            p.summary["export"] = str(self.run_dir / "export")
        if self.dist.is_main:
            runinfo.write_exit(self.run_dir, "finished", p.step)
        self.log.close()
        return p.summary

    # -- state on disk --------------------------------------------------------------------------------------
    def _save(self, step: int, samples: int, data_state: dict) -> float:
        states = [None] * self.dist.world_size
        dist.all_gather_object(states, data_state)
        client = {"step": step, "samples": samples, "world_size": self.dist.world_size, "data": states,
                  "seed": self.seed}
        return checkpoint.save(self.engine, self.ckpt_dir, step, client, self.cfg.keep_last, self.dist.is_main)

    def _export(self, engine, out_dir: Path) -> None:
        if engine.zero_optimization_partition_weights():
            # gathers layer by layer onto rank 0; frozen parameters (a ZeRO-3 verifier) are not exported
            state = engine._zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=True)
        else:
            state = engine.module.state_dict() if self.dist.is_main else None
        if self.dist.is_main:
            self.task.export(state, out_dir)
        dist.barrier()


def _sum_over_ranks(value: int, device) -> int:
    total = torch.tensor([value], device=device, dtype=torch.long)
    dist.all_reduce(total)
    return int(total.item())


def _float(x) -> float:
    if x is None:
        return math.nan
    return float(x.item() if torch.is_tensor(x) else x)
