"""Training step time through the project's own trainer (DeepSpeed engine, optimizer step included).

    python bench/train_step.py --shape tiny                       # Stage A on the CPU, the quickstart's shapes
    python bench/train_step.py --shape 9b --ds-config ds_configs/single_gpu_bf16.json --batch 32      # one GPU
    python bench/train_step.py --stage c --shape 9b --batch 8 --prefix-len 256 --placement replicate \
        --prefix-path state --ds-config ds_configs/single_gpu_bf16.json

The 9b shape is Qwen3.5-9B's text config with random weights (speed does not depend on them); shards are
synthetic. Stage A reads C from them, so only the verifier's embedding matrix sits on the device, as in a real
run; Stage C computes C and the prefix state itself. Writes a JSON with the median step time over the logged
windows after the first, block tokens/s, MFU and peak memory.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path


import torch

from synthetic_shards import write_synthetic_shards
from clsd_ds.data.reader import DataConfig
from clsd_ds.dit import DiTConfig
from clsd_ds.tiny import MINI
from clsd_ds.train.loop import LogConfig, OptimConfig, TrainConfig
from clsd_ds.train.run import RunConfig, run
from clsd_ds.train.stage_c import StageCConfig
from clsd_ds.verifier import VerifierConfig

SHAPES = {  # verifier architecture, DiT layers, block length, default prefix length
    "tiny": ({**MINI, "vocab_size": 512}, 4, 32, 96),  # the quickstart's shapes
    "9b": ({}, 12, 128, 512),
}


def main(argv: list[str] | None = None) -> dict | None:
    """Measure one configuration; the result (rank 0; None elsewhere), also printed and written to ``--out``."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=["a", "c"], default="a")
    p.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    p.add_argument("--prefix-len", type=int, default=None)
    p.add_argument("--placement", choices=["replicate", "zero3"], default="replicate")
    p.add_argument("--prefix-path", choices=["state", "full"], default="state")
    p.add_argument("--ds-config", default="ds_configs/cpu_zero3.json")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--micro", type=int, default=None)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--log-every", type=int, default=5)
    p.add_argument("--no-checkpointing", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    arch, layers, block_len, prefix_len = SHAPES[args.shape]
    prefix_len = args.prefix_len or prefix_len
    vocab = arch.get("vocab_size", 248320)
    hidden = arch.get("hidden_size", 4096)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        write_synthetic_shards(Path(tmp) / "shards", (args.steps + 2) * args.batch, vocab, block_len, prefix_len,
                               hidden if args.stage == "a" else None)
        shards_s = time.time() - t0
        cfg = RunConfig(
            run_dir=str(Path(tmp) / "run"), stage=args.stage, verifier=VerifierConfig(random_init=arch),
            stage_c=StageCConfig(placement=args.placement, prefix_path=args.prefix_path),
            dit=DiTConfig(num_layers=layers, block_len=block_len, checkpointing=not args.no_checkpointing),
            data=DataConfig(train=str(Path(tmp) / "shards"), num_workers=2),
            optim=OptimConfig(warmup_steps=args.steps),
            train=TrainConfig(steps=args.steps, batch_size=args.batch, micro_batch_size=args.micro,
                              ds_config=args.ds_config, log_every=args.log_every, save_every=0, export=False),
            log=LogConfig(progress=False))
        run(cfg)
        records = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").open()]
    if torch.distributed.get_rank() != 0:
        return None
    windows = [r for r in records if r["kind"] == "train"][1:] or [r for r in records if r["kind"] == "train"]
    step_s = statistics.median(r["step_s"] for r in windows)
    result = {
        "stage": args.stage, "shape": args.shape, "ds_config": args.ds_config, "batch": args.batch,
        "micro": args.micro, "block_len": block_len, "prefix_len": prefix_len,
        **({"placement": args.placement, "prefix_path": args.prefix_path} if args.stage == "c" else {}),
        "checkpointing": not args.no_checkpointing, "steps": args.steps,
        "step_s_median": round(step_s, 4), "block_tok_s": round(args.batch * block_len / step_s, 1),
        "mfu": windows[-1].get("mfu"), "mem_gib": windows[-1].get("mem_gib"),
        "loss_first": records[[r["kind"] for r in records].index("train")]["loss"], "loss_last": windows[-1]["loss"],
        "synthetic_shards_s": round(shards_s, 1),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        "torch": torch.__version__, "host": platform.node(), "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
