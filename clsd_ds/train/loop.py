"""The DeepSpeed training loop shared by every stage (and by the verifier fixture's pretraining).

A *task* supplies the trainable module and the loss; this loop owns everything else: the DeepSpeed engine
(only trainable parameters reach the optimizer), AdamW with warmup + cosine decay (DeepSpeed's WarmupCosineLR),
gradient accumulation, the data stream and its exact position, periodic evaluation, metrics, checkpoints,
automatic resume from the run directory, and the final export.

Randomness in a step (noise, timesteps) comes from a generator seeded by (seed, step, rank, micro-step), so a
resumed run draws exactly what an uninterrupted one would, with no RNG state to carry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import torch
import torch.distributed as dist

from ..config import ConfigError, read_mapping
from ..data.format import Manifest
from ..data.reader import ShardLoader, ShardStream, eval_batches
from ..shipped import resolve
from . import checkpoint, faults, runinfo
from .distributed import DistInfo
from .metrics import Accumulator, MetricsLog, peak_tflops
from .preemption import StopRequest

OWNED_DS_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                 "gradient_clipping", "optimizer", "scheduler")


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


class Task(Protocol):
    """What a training stage provides to the loop."""

    module: torch.nn.Module

    def check_data(self, manifest: Manifest, where: str) -> None: ...

    def setup(self, dist_info: DistInfo, dtype: torch.dtype, manifest: Manifest) -> None: ...

    def loss(self, model, batch: dict, generator: torch.Generator, step: int) -> tuple[torch.Tensor, dict]: ...

    def flops_per_token(self) -> float: ...

    def export(self, state_dict: dict, out_dir: Path) -> None: ...


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


def build_ds_config(path: str, optim: OptimConfig, batch: int, micro: int, accum: int) -> tuple[dict, bool]:
    """The DeepSpeed config: the file's ZeRO/precision settings + batch, clipping (and optimizer) from ours.

    Returns (config, use DeepSpeed's optimizer). Keys this trainer owns must not be set in the file.
    """
    ds = read_ds_config(path)
    clash = [k for k in OWNED_DS_KEYS if k in ds]
    if clash:
        raise ConfigError(f"{path}: {', '.join(clash)} must not be set here; they come from the trainer config "
                          f"(train.batch_size, train.micro_batch_size, optim.*)")
    ds.update(train_batch_size=batch, train_micro_batch_size_per_gpu=micro, gradient_accumulation_steps=accum,
              gradient_clipping=optim.grad_clip)
    zero = ds.get("zero_optimization", {})
    offload = zero.get("offload_optimizer", {}).get("device", "none") not in ("none", None)
    use_ds = optim.backend == "deepspeed" or (optim.backend == "auto" and offload)
    if offload and not use_ds:
        raise ConfigError(f"{path} offloads the optimizer, which needs optim.backend=deepspeed (DeepSpeedCPUAdam)")
    if use_ds:
        ds["optimizer"] = {"type": "AdamW", "params": {"lr": optim.lr, "betas": optim.betas, "eps": optim.eps,
                                                        "weight_decay": optim.weight_decay}}
    return ds, use_ds


def compute_dtype(ds: dict) -> torch.dtype:
    if ds.get("bf16", {}).get("enabled"):
        return torch.bfloat16
    if ds.get("fp16", {}).get("enabled"):
        return torch.float16
    return torch.float32


def step_generator(seed: int, step: int, rank: int, micro: int, device: torch.device, kind: str = "train"):
    digest = hashlib.blake2b(f"{kind}:{seed}:{step}:{rank}:{micro}".encode(), digest_size=8).digest()
    return torch.Generator(device=device).manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


class Trainer:
    """Runs a task to ``train.steps`` under DeepSpeed, resuming from ``<run_dir>/checkpoints`` if present."""

    def __init__(self, task: Task, run_dir: str, seed: int, data_cfg, optim: OptimConfig, train: TrainConfig,
                 log_cfg: LogConfig, dist_info: DistInfo, config_dict: dict, stop: StopRequest):
        self.task, self.seed, self.dist = task, seed, dist_info
        self.data_cfg, self.optim, self.cfg, self.log_cfg = data_cfg, optim, train, log_cfg
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.config_dict = config_dict
        self.stop = stop

    def _engine(self, ds_config: dict, use_ds_optimizer: bool):
        import deepspeed
        from deepspeed.runtime.lr_schedules import WarmupCosineLR
        from transformers.models.qwen3_5.modeling_qwen3_5 import Qwen3_5GatedDeltaNet

        module = self.task.module
        if ds_config.get("zero_optimization", {}).get("stage", 0) == 3:
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

    def _evaluate(self, engine, batches: list[dict], step: int, log: MetricsLog) -> dict:
        """Held-out metrics (the same on every rank), logged; with ``keep_best_tau`` a new best τ is exported."""
        acc = Accumulator()
        engine.eval()
        with torch.no_grad():
            for i, batch in enumerate(batches):
                gen = step_generator(self.seed, i, self.dist.rank, 0, self.dist.device, kind="eval")
                _, metrics = self.task.loss(engine, to_device(batch, self.dist.device), gen, step)
                acc.add(metrics)
            if self.cfg.tau_prompts and hasattr(self.task, "decoder"):
                acc.add({"tau": self._tau(engine, batches, step)})
        engine.train()
        stats = acc.reduce(self.dist.device)
        log.log(step, stats, kind="eval")
        if self.cfg.keep_best_tau and stats.get("tau", -math.inf) > self.best_tau:
            self.best_tau = stats["tau"]
            self._export(engine, self.run_dir / BEST_TAU)
            if self.dist.is_main:  # written last: a crash before it leaves a lower τ on record, never a higher one
                (self.run_dir / BEST_TAU / "best_tau.json").write_text(json.dumps({"tau": stats["tau"], "step": step}))
            dist.barrier()
            log.write(f"new best τ {stats['tau']:.3f} at step {step}: drafter exported to {self.run_dir / BEST_TAU}")
        return stats

    def _tau(self, engine, batches: list[dict], step: int) -> tuple[int, int]:
        """(tokens committed, cycles) of exact speculative decoding from this rank's first held-out prefixes. Every
        rank decodes as many prompts for as many cycles (no EOS stop), so partitioned (ZeRO-3) modules are
        gathered in lockstep."""
        from ..infer.decoder import DecodeConfig

        prompts = [b["prefix"][i, : int(b["prefix_len"][i])].tolist() for b in batches for i in range(len(b["prefix"]))]
        count = torch.tensor([min(len(prompts), self.cfg.tau_prompts)], device=self.dist.device)
        if dist.is_initialized():
            dist.all_reduce(count, op=dist.ReduceOp.MIN)
        cycles = self.cfg.tau_cycles  # bounds the decoding (max_cycles below), not max_new_tokens
        cfg = DecodeConfig(num_candidates=self.cfg.tau_candidates, max_new_tokens=1_000_000, seed=self.seed + step)
        decoder = self.task.decoder(engine, self.dist.device, cfg)
        committed = sum(len(decoder.generate(p, max_cycles=cycles)[0]) for p in prompts[: int(count)])
        return committed, int(count) * cycles

    def run(self) -> dict:
        """Train to ``train.steps``; returns a summary whose ``exit`` is ``finished`` or ``requeue`` (stopped by a
        signal after a checkpoint). Raises FloatingPointError on a non-finite loss under ``on_nonfinite: stop``."""
        d = self.dist
        world = d.world_size
        micro, accum = micro_batching(self.cfg.batch_size, self.cfg.micro_batch_size, world)
        ds_config, use_ds_opt = build_ds_config(self.cfg.ds_config, self.optim, self.cfg.batch_size, micro, accum)
        dtype = compute_dtype(ds_config)
        manifest = Manifest.read(self.data_cfg.train)
        self.task.check_data(manifest, self.data_cfg.train)
        val_manifest = Manifest.read(self.data_cfg.val) if self.data_cfg.val else None
        if val_manifest is not None:
            self.task.check_data(val_manifest, self.data_cfg.val)
        self.task.setup(d, dtype, manifest)
        fpt = self.task.flops_per_token()  # before ZeRO-3 partitions the parameters
        restart = 0
        if d.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(json.dumps(self.config_dict, indent=1))
            restart = runinfo.record_start(self.run_dir, world, d.launcher)
        runinfo.log_to_rank_file(self.run_dir, d.rank)

        tag = checkpoint.latest_tag(self.ckpt_dir)
        load_tag = tag
        if tag is not None and checkpoint.saved_world_size(self.ckpt_dir, tag) not in (None, world):
            load_tag = checkpoint.universal(self.ckpt_dir, tag, d.is_main)
            ds_config["checkpoint"] = {"load_universal": True}
        engine, lr_scheduler = self._engine(ds_config, use_ds_opt)
        step, samples, data_state, note = self._resume(engine, load_tag, micro)
        self.best_tau = best_tau(self.run_dir)  # read by every rank before any rank can write it
        loader = ShardLoader(self.data_cfg, self.data_cfg.train, micro, d.rank, world, state=data_state,
                             pin_memory=d.device.type == "cuda")
        val = eval_batches(self.data_cfg.val, micro, d.rank, world, self.cfg.eval_batches) if val_manifest else []

        log = MetricsLog(self.run_dir, d.is_main, self.cfg.steps, step, self.log_cfg.progress, self.log_cfg,
                         self.config_dict, restart=restart)
        if note:
            log.write(note)
        peak = peak_tflops(self.cfg.peak_tflops)
        summary: dict = {"start_step": step, "restart": restart}
        if val and step == 0:
            summary["eval_start"] = self._evaluate(engine, val, step, log)

        acc = Accumulator()
        tokens_per_step = self.cfg.batch_size * manifest.block_len
        t_last, steps_window, last_save_s, skipped = time.time(), 0, None, 0
        try:
            while step < self.cfg.steps:
                step_start = loader.state_dict()
                m = attempt = 0
                while m < accum:
                    batch = to_device(next(loader), d.device)
                    gen = step_generator(self.seed, step, d.rank, m + 1000 * attempt, d.device)
                    loss, metrics = self.task.loss(engine, batch, gen, step)
                    if m == attempt == 0 and faults.planned("nan_loss", step + 1, d.rank):
                        loss = loss * math.nan
                    if not self._finite_everywhere(loss):
                        self._non_finite(engine, step, samples, step_start, skipped)
                        skipped, attempt = skipped + 1, attempt + 1
                        continue
                    engine.backward(loss)
                    engine.step()
                    acc.add(metrics)
                    m += 1
                grad_norm = engine.get_global_grad_norm()  # the same on every rank, so all stop together
                if grad_norm is not None and not math.isfinite(_float(grad_norm)):
                    raise FloatingPointError(f"non-finite gradient norm at step {step + 1}; the newest checkpoint in "
                                             f"{self.ckpt_dir} is from before it")
                step += 1
                steps_window += 1
                samples += self.cfg.batch_size
                log.advance(step)
                if step % self.cfg.log_every == 0 or step == self.cfg.steps:
                    elapsed = time.time() - t_last
                    stats = acc.reduce(d.device)
                    tok_s = tokens_per_step * steps_window / elapsed
                    stats.update(tok_s=tok_s, step_s=elapsed / steps_window, lr=lr_scheduler.get_last_lr()[0],
                                 grad_norm=_float(grad_norm), samples=samples, skipped_batches=skipped,
                                 skipped_shards=_sum_over_ranks(loader.skipped_shards, d.device))
                    if peak:
                        stats["mfu"] = fpt * tok_s / (peak * 1e12 * world)
                    if d.device.type == "cuda":
                        stats["mem_gib"] = torch.cuda.max_memory_allocated(d.device) / 2**30
                    log.log(step, stats)
                    summary["last"] = stats
                    t_last, steps_window = time.time(), 0
                if val and self.cfg.eval_every and step % self.cfg.eval_every == 0 and step < self.cfg.steps:
                    self._evaluate(engine, val, step, log)
                stopping = self.stop.anywhere(d.device) and step < self.cfg.steps  # at the last step: finish instead
                if stopping or (self.cfg.save_every and (step % self.cfg.save_every == 0 or step == self.cfg.steps)):
                    last_save_s = self._save(engine, step, samples, loader.state_dict())
                    t_last += last_save_s
                if stopping:
                    summary.update(exit="requeue", end_step=step, save_s=last_save_s)
                    if d.is_main:
                        runinfo.write_exit(self.run_dir, "signal", step, signal=self.stop.received or "(another rank)")
                    log.write(f"stop requested ({self.stop.received or 'another rank'}): checkpoint at step {step} "
                              f"saved, exiting for a requeue")
                    log.close()
                    dist.barrier()  # leave together: the first rank to exit makes srun signal the others
                    return summary
        finally:
            loader.close()
        summary.update(exit="finished", end_step=step, save_s=last_save_s)
        if val:
            summary["eval_end"] = self._evaluate(engine, val, step, log)
        if self.cfg.export:
            self._export(engine, self.run_dir / "export")
            summary["export"] = str(self.run_dir / "export")
        if d.is_main:
            runinfo.write_exit(self.run_dir, "finished", step)
        log.close()
        return summary

    def _resume(self, engine, tag: str | None, micro: int) -> tuple[int, int, dict | None, str | None]:
        """(step, samples seen, this rank's data position or None, a message) from checkpoint ``tag``."""
        if tag is None:
            return 0, 0, None, None
        # Checkpoints leave frozen parameters out (a ZeRO-3 verifier comes from its own files), so a module that
        # has some cannot be matched strictly; its trainable weights come from the optimizer partitions.
        frozen = any(not p.requires_grad for p in engine.module.parameters())
        _, client = engine.load_checkpoint(str(self.ckpt_dir), tag=tag, load_module_strict=not frozen)
        step, samples, d = client["step"], client["samples"], self.dist
        saved = client["data"][0]
        note = f"resumed from {self.ckpt_dir / tag} at step {step}"
        if (saved["world_size"], saved["num_workers"]) == (d.world_size, max(1, self.data_cfg.num_workers)):
            return step, samples, client["data"][d.rank], note
        stream = ShardStream(self.data_cfg.train, micro, d.rank, d.world_size, self.data_cfg.num_workers,
                             self.data_cfg.seed, self.data_cfg.shuffle)
        note += (f" on a new layout ({saved['world_size']} -> {d.world_size} ranks, {saved['num_workers']} -> "
                 f"{stream.workers} workers per rank): the data stream continues from sample {samples}, each worker "
                 f"as far into that epoch as its share of it")
        return step, samples, stream.position_after(samples), note

    def _save(self, engine, step: int, samples: int, data_state: dict) -> float:
        states = [None] * self.dist.world_size
        dist.all_gather_object(states, data_state)
        client = {"step": step, "samples": samples, "world_size": self.dist.world_size, "data": states,
                  "seed": self.seed}
        return checkpoint.save(engine, self.ckpt_dir, step, client, self.cfg.keep_last, self.dist.is_main)

    def _finite_everywhere(self, loss: torch.Tensor) -> bool:
        flag = torch.isfinite(loss.detach()).to(torch.int32).reshape(1)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def _non_finite(self, engine, step: int, samples: int, step_start: dict, skipped: int) -> None:
        """A micro-batch gave a non-finite loss on some rank: stop with a checkpoint of the last good state, or
        (``on_nonfinite: skip``) let the caller draw another micro-batch, up to ``max_skipped_batches``."""
        if self.cfg.on_nonfinite == "skip" and skipped < self.cfg.max_skipped_batches:
            logging.getLogger("clsd_ds").warning("non-finite loss at step %d: micro-batch skipped (%d so far)",
                                                 step + 1, skipped + 1)
            return
        if checkpoint.latest_tag(self.ckpt_dir) != checkpoint.tag_for(step):
            self._save(engine, step, samples, step_start)  # no update was applied: this is the last good state
        if self.dist.is_main:
            runinfo.write_exit(self.run_dir, "nonfinite", step)
        raise FloatingPointError(
            f"non-finite loss in step {step + 1} (after {skipped} skipped micro-batches); the state before it is "
            f"saved in {self.ckpt_dir / checkpoint.tag_for(step)} (set train.on_nonfinite=skip to skip such batches)")

    def _export(self, engine, out_dir: Path) -> None:
        if engine.zero_optimization_partition_weights():
            # gathers layer by layer onto rank 0; frozen parameters (a ZeRO-3 verifier) are not exported
            state = engine._zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=True)
        else:
            state = engine.module.state_dict() if self.dist.is_main else None
        if self.dist.is_main:
            self.task.export(state, out_dir)
        dist.barrier()


BEST_TAU = "best_tau"


def best_tau(run_dir: Path) -> float:
    """τ of the drafter kept in ``<run_dir>/best_tau`` (-inf when none is)."""
    record = Path(run_dir) / BEST_TAU / "best_tau.json"
    return json.loads(record.read_text())["tau"] if record.is_file() else -math.inf


def _sum_over_ranks(value: int, device) -> int:
    total = torch.tensor([value], device=device, dtype=torch.long)
    dist.all_reduce(total)
    return int(total.item())


def _float(x) -> float:
    if x is None:
        return math.nan
    return float(x.item() if torch.is_tensor(x) else x)
