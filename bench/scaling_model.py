"""ZeRO-3 communication and step time on 8×H200 nodes, on paper, from the measured single-GPU steps.

    python bench/scaling_model.py [--nodes 1 2 4 16] [--out bench/results/scaling_model]

Per optimizer step and GPU, with G = 8·nodes GPUs, P the DiT's and M the verifier's parameter count (bf16, 2 bytes):
  DiT under ZeRO-3: an all-gather of its weights for every forward (Stage C: one per Euler step), one more for the
  recompute of activation checkpointing and one for the backward, and a reduce-scatter of its gradients; under
  ZeRO-2 (weights replicated, 7.8 GB): the reduce-scatter and one all-gather of the updated weights;
  a ring collective of S bytes moves S·(G − 1)/G through every GPU's link;
  verifier partitioned by ZeRO-3 (Stage C only): gathered for the prefix pass, the draft pass, its recompute and the
  backward (4 gathers, no gradient); replicated: nothing.
The link is NVLink within a node (900 GB/s bidirectional: 450 GB/s each way) and, from 2 nodes on, the node's
network shared by its 8 GPUs (8 × 400 Gb/s per node = 50 GB/s per GPU), both at ``--link-efficiency``.
Compute per GPU is the measured single-GPU step at the same per-GPU batch (weak scaling, bench/results/h200-*).
Predicted step: compute + communication when nothing overlaps, max of the two when everything does (DeepSpeed's
prefetch overlaps gathers with compute); efficiency = compute / step. Only the single-GPU compute is measured:
the multi-GPU rows are predictions, untested on a cluster.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


from memory_table import counts

REPO = Path(__file__).resolve().parents[1]

NVLINK_GBS, NET_GBS_PER_GPU = 450.0, 50.0
A_FILE = "h200-2026-11-23-stage_a_9b_zero1_bf16_ckpt.json"
C_FILE = "h200-2026-11-23-stage_c_9b_replicate_state_b8_p256.json"
MEASURED = {  # setting -> (result file of bench/train_step.py on one H200, DiT forwards per step, ZeRO stage)
    "Stage A, ZeRO-3 (batch 32/GPU)": (A_FILE, 1, 3),
    "Stage A, ZeRO-2 (batch 32/GPU)": (A_FILE, 1, 2),
    "Stage C, ZeRO-3, verifier replicated (batch 8/GPU, prefix 256)": (C_FILE, 2, 3),
    "Stage C, ZeRO-2, verifier replicated (batch 8/GPU, prefix 256)": (C_FILE, 2, 2),
    "Stage C, ZeRO-3, verifier ZeRO-3 (batch 8/GPU, prefix 256)": (
        "h200-2026-11-23-stage_c_9b_zero3_state_b8_p256.json", 2, 3),
}


def step_bytes(dit: int, verifier: int, forwards: int, zero: int, verifier_partitioned: bool) -> dict:
    """Bytes of the collectives per step (before the (G-1)/G ring factor)."""
    gathers = forwards + 2 if zero == 3 else 1  # ZeRO-3: forwards, recompute, backward; ZeRO-2: the updated weights
    return {"dit": 2 * dit * gathers + 2 * dit, "verifier": 4 * 2 * verifier if verifier_partitioned else 0}


def predict(compute_s: float, total_bytes: float, nodes: int, efficiency: float) -> dict:
    gpus = 8 * nodes
    bandwidth = (NVLINK_GBS if nodes == 1 else NET_GBS_PER_GPU) * 1e9 * efficiency
    comm_s = total_bytes * (gpus - 1) / gpus / bandwidth
    serial, overlapped = compute_s + comm_s, max(compute_s, comm_s)
    return {"gpus": gpus, "comm_s": comm_s, "step_s_no_overlap": serial, "step_s_full_overlap": overlapped,
            "efficiency_no_overlap": compute_s / serial, "efficiency_full_overlap": compute_s / overlapped}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 4, 16])
    ap.add_argument("--link-efficiency", type=float, default=0.8)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "scaling_model"))
    args = ap.parse_args()
    n = counts()
    rows = []
    for setting, (name, forwards, zero) in MEASURED.items():
        measured = json.loads((REPO / "bench" / "results" / name).read_text())
        total = step_bytes(n["dit"], n["verifier"], forwards, zero, "verifier ZeRO-3" in setting)
        for nodes in args.nodes:
            rows.append({"setting": setting, "nodes": nodes, "measured_1gpu_step_s": measured["step_s_median"],
                         "gb_per_step": {k: v / 1e9 for k, v in total.items()},
                         **predict(measured["step_s_median"], sum(total.values()), nodes, args.link_efficiency)})
    lines = [f"DiT {n['dit'] / 1e9:.2f} B, verifier {n['verifier'] / 1e9:.2f} B parameters; NVLink {NVLINK_GBS:.0f} "
             f"GB/s, network {NET_GBS_PER_GPU:.0f} GB/s per GPU, link efficiency {args.link_efficiency}; compute = "
             "the measured 1×H200 step.", "",
             "| setting | nodes (GPUs) | GB moved per step (DiT + verifier) | comm s | step s (no overlap – full) | "
             "efficiency (no overlap – full) |", "|---|---|---|---|---|---|"]
    for r in rows:
        gb = r["gb_per_step"]
        lines.append(f"| {r['setting']} | {r['nodes']} ({r['gpus']}) | {gb['dit']:.1f} + {gb['verifier']:.1f} | "
                     f"{r['comm_s']:.2f} | {r['step_s_no_overlap']:.2f} – {r['step_s_full_overlap']:.2f} | "
                     f"{r['efficiency_no_overlap']:.0%} – {r['efficiency_full_overlap']:.0%} |")
    table = "\n".join(lines)
    print(table)
    Path(args.out + ".md").write_text(table + "\n")
    Path(args.out + ".json").write_text(json.dumps({"assumptions": {"nvlink_gbs": NVLINK_GBS,
                                                                    "net_gbs_per_gpu": NET_GBS_PER_GPU,
                                                                    "link_efficiency": args.link_efficiency},
                                                    "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
