"""Training metrics: reduction across ranks, the JSONL log, tqdm progress and wandb (all on rank 0).

Metrics are accumulated as (sum, count) pairs so that means are exact across ranks and micro-batches.
MFU = (model FLOPs per token x tokens/s) / (peak FLOP/s x devices), with the peak taken from ``train.peak_tflops``
or the device name (dense bf16); on a CPU no peak is known and MFU is not reported.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.distributed as dist

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "GH200": 989.0, "B200": 2250.0, "B100": 1750.0,
                    "GB200": 2500.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0}


def peak_tflops(override: float | None) -> float | None:
    if override is not None:
        return override
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    for key in sorted(PEAK_BF16_TFLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_BF16_TFLOPS[key]
    return None


class Accumulator:
    """Sums and counts of named metrics, reduced over all ranks on ``reduce``."""

    def __init__(self):
        self.sums: dict[str, float | torch.Tensor] = defaultdict(float)
        self.counts: dict[str, float | torch.Tensor] = defaultdict(float)

    def add(self, metrics: dict[str, tuple]) -> None:
        for name, (total, count) in metrics.items():
            self.sums[name] = self.sums[name] + (total.detach().float() if torch.is_tensor(total) else total)
            self.counts[name] = self.counts[name] + count

    def reduce(self, device) -> dict[str, float]:
        names = sorted(self.sums)
        if not names:
            return {}
        packed = torch.tensor([[float(self.sums[n]), float(self.counts[n])] for n in names], device=device,
                              dtype=torch.float64)
        if dist.is_initialized():
            dist.all_reduce(packed)
        self.sums.clear()
        self.counts.clear()
        return {n: (s / c if c else None) for n, (s, c) in zip(names, packed.tolist())}


class MetricsLog:
    """Rank 0 writes ``metrics.jsonl`` (appending across restarts, each record with its ``restart`` number),
    shows tqdm and logs to wandb (a requeued job continues the same wandb run)."""

    def __init__(self, run_dir: Path, enabled: bool, total_steps: int, start_step: int, progress: bool,
                 wandb_cfg=None, config: dict | None = None, restart: int = 0):
        self.enabled = enabled
        self.restart = restart
        self.bar = None
        self.wandb = None
        if not enabled:
            return
        self.path = Path(run_dir) / "metrics.jsonl"
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True)
        if wandb_cfg is not None and wandb_cfg.wandb:
            self.wandb = _start_wandb(Path(run_dir), wandb_cfg, config)

    def log(self, step: int, metrics: dict, kind: str = "train") -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), "restart": self.restart, **metrics}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        self._to_wandb("log", {f"{kind}/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))},
                       step=step)
        if self.bar is not None and kind == "train":
            shown = {k: metrics[k] for k in ("loss", "tok_s") if k in metrics}
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)

    def advance(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def write(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self._to_wandb("finish")

    def _to_wandb(self, method: str, *args, **kwargs) -> None:
        """wandb's service process may be gone: Slurm's SIGTERM reaches every process of a job step and wandb-core
        exits on it (wandb/wandb#9963). The run then goes on to its checkpoint with wandb off until the restart,
        which continues the same wandb run; ``metrics.jsonl`` keeps every record."""
        if self.wandb is None:
            return
        try:
            getattr(self.wandb, method)(*args, **kwargs)
        except Exception as e:
            self.wandb = None
            self.write(f"wandb logging stopped for this launch ({type(e).__name__}: {e}); metrics.jsonl goes on")


def _start_wandb(run_dir: Path, cfg, config: dict | None):
    """Start (or continue, after a restart) this run's wandb run; its id is kept in the run directory."""
    import wandb

    id_file = run_dir / "wandb_id"
    run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(8)
    id_file.write_text(run_id)
    return wandb.init(project=cfg.project, entity=cfg.entity, name=cfg.name or run_dir.name, id=run_id,
                      resume="allow", dir=str(run_dir), config=config, mode=os.environ.get("WANDB_MODE"))
