"""Per-GPU memory of Stage C at the real sizes, for each verifier placement and ZeRO stage (a model, not a run).

    python bench/memory_table.py [--batch 8 --prefix 512 --out bench/results/memory_table]

Parameter counts are exact: the 9B verifier and the grafted DiT are built on PyTorch's meta device. Bytes:
  DiT weights bf16 2N and grads bf16 2N (partitioned over G GPUs by ZeRO-3 / ZeRO-2 and up);
  optimizer: fp32 master 4N + Adam moments 8N + the fp32 gradient partition DeepSpeed's bf16 optimizer keeps 4N,
  partitioned by ZeRO-1 and up, in CPU memory with optimizer offload;
  verifier bf16 2M, replicated or /G (ZeRO-3, plus two gathered decoder layers in flight), plus the plain
  embedding copy Stage C keeps for targets with a ZeRO-3 verifier;
  activations (estimate, activation checkpointing on, one micro-batch of B blocks per GPU): checkpoint inputs
  2·B·K·d per DiT block per Euler step and per verifier layer, one layer's recompute (34·B·K·d bytes, the usual
  transformer rule of thumb), the prefix state (attention K/V in bf16, DeltaNet matrices in fp32) and the
  fp32 logits of the block plus their gradient (2 · 4·B·K·V).
The same model for Stage A (no verifier, batch 32, one Euler step) is printed for comparison with the
measured single-GPU peaks in bench/results.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path


import torch

from clsd_ds.dit import DiTConfig
from clsd_ds.graft import graft
from clsd_ds.verifier import Verifier, VerifierConfig

GIB = 2**30
DEVICES = {"H200": 141e9, "B200": 183e9, "H100": 80e9}


@dataclass
class Setting:
    name: str
    device: str
    gpus: int
    zero: int
    placement: str  # replicate | zero3 | none (Stage A)
    offload: bool = False
    stage: str = "c"


SETTINGS = [
    Setting("8xH200, ZeRO-3, verifier replicated", "H200", 8, 3, "replicate"),
    Setting("8xH200, ZeRO-3, verifier ZeRO-3", "H200", 8, 3, "zero3"),
    Setting("8xH200, ZeRO-2, verifier replicated", "H200", 8, 2, "replicate"),
    Setting("8xH200, ZeRO-1, verifier replicated", "H200", 8, 1, "replicate"),
    Setting("1xB200, ZeRO-1, verifier on the GPU", "B200", 1, 1, "replicate"),
    Setting("1xH200, ZeRO-1, verifier on the GPU", "H200", 1, 1, "replicate"),
    Setting("1xH100, ZeRO-2 + optimizer offload", "H100", 1, 2, "replicate", offload=True),
    Setting("Stage A, 1xH200, ZeRO-1 (measured 81.6 GiB)", "H200", 1, 1, "none", stage="a"),
    Setting("Stage A, 1xH100, ZeRO-2 + offload (measured 16.4 GiB)", "H100", 1, 2, "none", offload=True, stage="a"),
]


def counts() -> dict:
    """Exact parameter counts of the 9B verifier and the seed's 12-layer DiT (meta device: no memory)."""
    with torch.device("meta"):
        verifier = Verifier.load(VerifierConfig(random_init={}), dtype=torch.bfloat16, device="meta")
        dit = graft(verifier, DiTConfig(embed_scale=1.0))
    cfg = verifier.config
    layer_params = max(sum(p.numel() for p in layer.parameters()) for layer in verifier.lm.model.layers)
    return {"verifier": sum(p.numel() for p in verifier.lm.parameters()),
            "dit": sum(p.numel() for p in dit.parameters()), "dit_blocks": len(dit.blocks), "max_layer": layer_params,
            "cfg": cfg}


def estimate(s: Setting, n: dict, batch: int, prefix: int, block: int = 128) -> dict:
    cfg = n["cfg"]
    d, V, G, N, M = cfg.hidden_size, cfg.vocab_size, s.gpus, n["dit"], n["verifier"]
    if s.stage == "a":
        batch, prefix = 32, 0
    share = {k: (1 / G if s.zero >= k else 1.0) for k in (1, 2, 3)}
    out = {"dit_weights": 2 * N * share[3], "dit_grads": 2 * N * share[2],
           "optimizer": 0.0 if s.offload else 16 * N * share[1]}
    if s.placement == "replicate":
        out["verifier"] = 2 * M
    elif s.placement == "zero3":
        out["verifier"] = 2 * M / G + 2 * 2 * n["max_layer"] + 2 * V * d
    else:  # Stage A with C in the shards: only the embedding matrix
        out["verifier"] = 2 * V * d
    steps = 2 if s.stage == "c" else 1
    tokens = batch * block
    act = steps * n["dit_blocks"] * 2 * tokens * d + 34 * tokens * d
    if s.stage == "c":
        attn = sum(t == "full_attention" for t in cfg.layer_types)
        linear = cfg.num_hidden_layers - attn
        kv = attn * batch * prefix * cfg.num_key_value_heads * cfg.head_dim * 2 * 2
        delta = linear * batch * cfg.linear_num_value_heads * cfg.linear_key_head_dim * cfg.linear_value_head_dim * 4
        act += cfg.num_hidden_layers * 2 * tokens * d + kv + delta + 2 * 4 * tokens * V
    out["activations"] = act
    out["total"] = sum(out.values())
    out["fits"] = out["total"] < 0.95 * DEVICES[s.device]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8, help="Stage C blocks per GPU per micro-batch")
    p.add_argument("--prefix", type=int, default=512)
    p.add_argument("--out", default="bench/results/memory_table")
    args = p.parse_args()
    n = counts()
    rows = [{"setting": s.name, **estimate(s, n, args.batch, args.prefix)} for s in SETTINGS]
    cols = ["dit_weights", "dit_grads", "optimizer", "verifier", "activations", "total"]
    lines = [f"Stage C per-GPU memory, GiB (DiT {n['dit'] / 1e9:.2f} B params, verifier {n['verifier'] / 1e9:.2f} B, "
             f"block 128, prefix {args.prefix}, {args.batch} blocks per GPU; Stage A rows: batch 32)", "",
             "| setting | " + " | ".join(c.replace("_", " ") for c in cols) + " | fits |",
             "|---" * (len(cols) + 2) + "|"]
    for r in rows:
        lines.append(f"| {r['setting']} | " + " | ".join(f"{r[c] / GIB:.1f}" for c in cols) +
                     f" | {'yes' if r['fits'] else 'no'} |")
    table = "\n".join(lines)
    print(table)
    Path(args.out + ".md").write_text(table + "\n")
    Path(args.out + ".json").write_text(json.dumps({"params": {k: v for k, v in n.items() if k != "cfg"},
                                                    "batch": args.batch, "prefix": args.prefix, "rows": rows},
                                                   indent=1))


if __name__ == "__main__":
    main()
