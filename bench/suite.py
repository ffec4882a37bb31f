"""The inference benchmark suite at real shapes: prefill, verification, drafting, state advance, the AR baselines
and the speculative-decoding roofline (cycle time and break-even τ over N × K × Euler steps).

    python bench/suite.py                 # Qwen3.5-9B text config, random bf16 weights, on the GPU
    python bench/suite.py --tiny          # the quickstart's shapes on the CPU (CI smoke test), same code

Weights are random (speed does not depend on them). Each number is the median of ``--reps`` timed repetitions
after ``--warmup`` untimed ones, with CUDA events on a GPU. The break-even τ of a cycle is its time divided by one
token of the fastest AR baseline: the tokens a cycle must commit on average to match plain decoding. The cycle's
state advance is timed for K/2 + 1 committed tokens. Writes ``<device>-<date>-suite.json``, a Markdown table and a
heat map PNG of break-even τ under ``--out``. Training steps are measured by ``bench/train_step.py``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import statistics
import time
from datetime import date
from pathlib import Path
from typing import Callable

import torch


from clsd_ds.dit import DiTConfig
from clsd_ds.graft import graft
from clsd_ds.infer.autoregressive import Autoregressive
from clsd_ds.infer.decoder import DecodeConfig, SpeculativeDecoder
from clsd_ds.tiny import MINI
from clsd_ds.verifier import Verifier, VerifierConfig
from clsd_ds.verifier_state import prefix_pass

REPO = Path(__file__).resolve().parents[1]

SHAPES = {  # verifier config, DiT layers, DiT block, prefix, grid of N, grid of K, Euler steps, AR tokens
    "9b": ({}, 12, 128, 512, (1, 2, 4, 8, 16, 32), (8, 16, 32, 64, 128), (1, 2), 64),
    "tiny": ({**MINI, "vocab_size": 512}, 4, 32, 96, (1, 4), (8, 32), (1, 2), 16),
}


def timer(device: torch.device, warmup: int, reps: int) -> Callable[[Callable[[], object]], float]:
    """Median seconds of fn() over ``reps`` runs after ``warmup`` runs (CUDA events on a GPU)."""
    def measure(fn: Callable[[], object]) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(reps):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1000)
            else:
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
        return statistics.median(times)
    return measure


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


@torch.no_grad()
def run_suite(shape: str, warmup: int, reps: int, device: torch.device, grid: dict | None = None) -> dict:
    """Every measurement at ``shape``; ``grid`` replaces its N, K or Euler steps (keys ``N``, ``K``, ``steps``)."""
    arch, layers, block, prefix, grid_n, grid_k, grid_steps, ar_tokens = SHAPES[shape]
    grid = grid or {}
    grid_n, grid_k, grid_steps = grid.get("N", grid_n), grid.get("K", grid_k), grid.get("steps", grid_steps)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    verifier = Verifier.load(VerifierConfig(random_init=arch), dtype=dtype, device=device)
    lm = verifier.lm.eval()
    dit = graft(verifier, DiTConfig(num_layers=layers, block_len=block)).to(device=device, dtype=dtype).eval()
    time_it = timer(device, warmup, reps)
    vocab = lm.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, vocab, (prefix,), generator=gen).tolist()
    ids = torch.tensor([prompt], device=device)
    embeds = lm.get_input_embeddings()(ids)
    mask = torch.ones_like(ids, dtype=torch.bool)
    result: dict = {"shape": shape, "device": device_name(device), "dtype": str(dtype).removeprefix("torch."),
                    "torch": torch.__version__, "date": str(date.today()), "prefix": prefix, "dit_layers": layers,
                    "verifier_params": sum(p.numel() for p in lm.parameters()),
                    "dit_params": sum(p.numel() for p in dit.parameters())}

    seconds = time_it(lambda: prefix_pass(lm, embeds, mask, grow=True))
    result["prefill"] = {"ms": 1000 * seconds, "tok_s": prefix / seconds}
    hidden, states = prefix_pass(lm, embeds, mask, grow=True)
    h = hidden[:, -1:]

    ar = {}
    for kind in ("static", "generate"):
        baseline = Autoregressive(lm, kind, prefix + ar_tokens + 1)
        baseline.decode(prompt, ar_tokens)  # warm-up (and the CUDA graph capture)
        ar[kind] = {"ms_per_token": 1000 * statistics.median(baseline.decode(prompt, ar_tokens)[1]
                                                              for _ in range(max(1, reps // 2))) / ar_tokens}
        if kind == "static":
            ar[kind]["cuda_graph"] = baseline.static.graph is not None
    result["ar"] = ar
    ar_ms = min(v["ms_per_token"] for v in ar.values())

    rows = []
    for n, k, steps in itertools.product(grid_n, grid_k, grid_steps):
        if k > block:
            continue
        decoder = SpeculativeDecoder(lm, dit, DecodeConfig(num_candidates=n, block_len=k, euler_steps=steps))
        shared = states.repeat_interleave(n)
        tokens = decoder.draft(h, shared, prefix, k)
        row = {"N": n, "K": k, "euler_steps": steps,  # drafting includes replicating the state, as in a cycle
               "draft_ms": 1000 * time_it(lambda: decoder.draft(h, states.repeat_interleave(n), prefix, k)),
               "verify_ms": 1000 * time_it(lambda: decoder.verify(tokens, shared, prefix, h))}
        committed = tokens[0, : k // 2 + 1].tolist()

        row["advance_ms"] = 1000 * time_it(lambda: decoder.advance(committed, states.fork(), prefix))
        row["cycle_ms"] = row["draft_ms"] + row["verify_ms"] + row["advance_ms"]
        row["break_even_tau"] = row["cycle_ms"] / ar_ms
        rows.append(row)
        print(json.dumps(row), flush=True)
    result["cycles"] = rows

    n, k = grid_n[-1], min(grid_k[-1], block)  # verification from the shared state vs one full pass per candidate
    decoder = SpeculativeDecoder(lm, dit, DecodeConfig(num_candidates=n, block_len=k))
    shared = states.repeat_interleave(n)
    tokens = decoder.draft(h, shared, prefix, k)
    full = torch.cat([ids.expand(n, -1), tokens], 1)
    result["verify_paths"] = {"N": n, "K": k, "shared_state_ms": 1000 * time_it(
        lambda: decoder.verify(tokens, shared, prefix, h)), "rerun_prefix_ms": 1000 * time_it(lambda: lm(full))}
    if device.type == "cuda":
        result["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def markdown(result: dict) -> str:
    ar = result["ar"]
    lines = [f"Device: {result['device']} ({result['dtype']}, torch {result['torch']}, {result['date']}); shape "
             f"`{result['shape']}`, prefix {result['prefix']}.", "",
             f"Prefill {result['prefill']['ms']:.1f} ms ({result['prefill']['tok_s']:.0f} tok/s). AR baseline: static "
             f"cache {ar['static']['ms_per_token']:.2f} ms/token (CUDA graph: {ar['static']['cuda_graph']}), HF "
             f"generate {ar['generate']['ms_per_token']:.2f} ms/token. Verification of {result['verify_paths']['N']} "
             f"× {result['verify_paths']['K']}: {result['verify_paths']['shared_state_ms']:.1f} ms from the shared "
             f"state, {result['verify_paths']['rerun_prefix_ms']:.1f} ms rerunning the prefix per candidate.", "",
             "| N | K | Euler steps | draft ms | verify ms | advance ms | cycle ms | break-even τ |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["cycles"]:
        lines.append(f"| {r['N']} | {r['K']} | {r['euler_steps']} | {r['draft_ms']:.1f} | {r['verify_ms']:.1f} | "
                     f"{r['advance_ms']:.1f} | {r['cycle_ms']:.1f} | {r['break_even_tau']:.1f} |")
    return "\n".join(lines) + "\n"


def heat_map(result: dict, path: Path) -> None:
    """Break-even τ over N × K at the largest number of Euler steps measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = max(r["euler_steps"] for r in result["cycles"])
    rows = [r for r in result["cycles"] if r["euler_steps"] == steps]
    ns, ks = sorted({r["N"] for r in rows}), sorted({r["K"] for r in rows})
    grid = [[next(r["break_even_tau"] for r in rows if r["N"] == n and r["K"] == k) for k in ks] for n in ns]
    fig, ax = plt.subplots(figsize=(1.2 * len(ks) + 2, 0.6 * len(ns) + 2))
    image = ax.imshow(grid, cmap="viridis", origin="lower")
    for i, j in itertools.product(range(len(ns)), range(len(ks))):
        ax.text(j, i, f"{grid[i][j]:.1f}", ha="center", va="center", color="w", fontsize=8)
    ax.set_xticks(range(len(ks)), ks)
    ax.set_yticks(range(len(ns)), ns)
    ax.set_xlabel("K (tokens per candidate)")
    ax.set_ylabel("N (candidates)")
    ax.set_title(f"break-even τ, {steps} Euler steps, {result['device']}")
    fig.colorbar(image)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="the quickstart's shapes on the CPU")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--out", default=str(REPO / "bench" / "results"))
    args = ap.parse_args()
    device = torch.device("cpu" if args.tiny or not torch.cuda.is_available() else "cuda")
    result = run_suite("tiny" if args.tiny else "9b", args.warmup, args.reps, device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", result["device"].lower()).strip("-")
    stem = f"{slug}-{result['date']}-suite{'_tiny' if args.tiny else ''}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    (out / f"{stem}.md").write_text(markdown(result))
    heat_map(result, out / f"{stem}.png")
    print("wrote", out / f"{stem}.json")


if __name__ == "__main__":
    main()
