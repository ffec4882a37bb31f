"""Does the drafter work? τ of three drafters for the same mini verifier, side by side.

    python bench/drafters.py [--run runs/drafters] [--tiny] [--out bench/results/<device>-<date>-drafters]

Stages (each skipped when its output exists, so a rerun continues; ``--tiny`` shrinks everything for CI):
    corpus      the Python standard library's own source files (a real corpus every machine has), one document each
    tokenizer   a byte-level BPE trained on them;  tokens: prepare-data, held-out documents in val
    verifier    a small Qwen3.5 verifier pretrained on them (stage lm); its held-out next-token CE is recorded
    clsd_adaln      the seed's drafter: adaLN conditioning on C, Stage A then Stage C
    clsd_prefix     the same with dit.prefix_state: every DiT layer continues from its source layer's prefix state
    ar              the EAGLE-style autoregressive drafter (stage ar), trained for as many drafter FLOPs as the DiTs
    *@<long_block>  both DiTs again at the longer block (shards cut for it), steps scaled to the same drafter FLOPs:
                    a DiT drafts at most its own block, so these serve the K beyond block_len
    grid        eval (exact mode) of every drafter on held-out prompts for K x N, against the static-cache baseline
Writes the grid as JSON, a Markdown table and a PNG (τ and speedup against K, a line per drafter and N). The same
script runs at real scale with a GPU by changing the sizes below (the stages only call the project's own commands).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import sysconfig
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path


from clsd_ds.ar_drafter import ARDrafterConfig, ar_graft
from clsd_ds.data.format import MANIFEST
from clsd_ds.data.reader import DataConfig
from clsd_ds.data.tokenizer import train_tokenizer
from clsd_ds.data.writer import PrepareConfig, prepare_data
from clsd_ds.dit import DiTConfig
from clsd_ds.flow import FlowConfig
from clsd_ds.graft import graft
from clsd_ds.infer.decoder import DecodeConfig
from clsd_ds.infer.evaluate import EvalConfig, evaluate
from clsd_ds import tiny
from clsd_ds.tiny import MINI
from clsd_ds.train.loop import LogConfig, OptimConfig, TrainConfig
from clsd_ds.train.run import RunConfig, run
from clsd_ds.train.stage_c import StageCConfig
from clsd_ds.verifier import Verifier, VerifierConfig, load_tokenizer

REPO = Path(__file__).resolve().parents[1]

DITS = (("clsd_adaln", False), ("clsd_prefix", True))  # (name, dit.prefix_state)


@dataclass
class Sizes:
    files: int = 0  # standard-library files used (0: all)
    vocab: int = 1024
    block_len: int = 32
    long_block: int = 128  # the DiTs for K > block_len
    prefix_len: int = 96
    verifier: dict = field(default_factory=lambda: dict(MINI))
    verifier_steps: int = 400
    dit_layers: int = 4
    stage_a_steps: int = 300
    stage_c_steps: int = 100
    batch: int = 16
    ks: tuple = (8, 16, 32, 64, 128)
    ns: tuple = (1, 4, 16, 32)
    prompts: int = 4
    tokens: int = 32


TINY = Sizes(files=20, vocab=512, block_len=8, long_block=16, prefix_len=24,
             verifier={**tiny.TINY, "num_hidden_layers": 4}, verifier_steps=20, dit_layers=2, stage_a_steps=10,
             stage_c_steps=4, batch=8, ks=(4, 8, 16), ns=(1, 4), prompts=2, tokens=12)


def stdlib_files(limit: int) -> list[str]:
    files = sorted(glob.glob(str(Path(sysconfig.get_paths()["stdlib"]) / "*.py")))
    return files[:limit] if limit else files


def train(run_dir: Path, s: Sizes, data: DataConfig, steps: int, lr: float, train_extra: dict | None = None,
          **sections) -> dict:
    """One training run with the project's trainer (one process, CPU); ``train_extra``: more TrainConfig fields."""
    summary = run(RunConfig(run_dir=str(run_dir), data=data, log=LogConfig(progress=False),
                            optim=OptimConfig(lr=lr, warmup_steps=max(1, steps // 10)),
                            train=TrainConfig(**{"steps": steps, "batch_size": s.batch,
                                                 "ds_config": "ds_configs/cpu_zero1.json",
                                                 "log_every": max(1, steps // 4), "save_every": steps, "keep_last": 1,
                                                 "eval_batches": 4, **(train_extra or {})}), **sections))
    if summary["exit"] != "finished":
        raise SystemExit(f"{run_dir}: stopped by a signal after a checkpoint; run again to continue")
    return summary


def dit_steps(s: Sizes, block: int) -> tuple[int, int]:
    """Stage A and Stage C steps of a DiT trained at ``block``: the block_len DiTs' steps scaled by block_len / block,
    the same drafter FLOPs."""
    return tuple(max(1, round(n * s.block_len / block)) for n in (s.stage_a_steps, s.stage_c_steps))


def drafter_flops(s: Sizes, verifier_dir: Path) -> dict:
    """Training FLOPs of the drafters' own weights (6 per parameter and trained position): the DiT over K block
    tokens (Stage C: per Euler step), the AR drafter over all P + K positions of a sample; its steps match the
    block_len DiTs' total."""
    verifier = Verifier.load(VerifierConfig(path=str(verifier_dir)))
    euler, out = FlowConfig().euler_steps, {}
    for key, block in (("", s.block_len), ("_long", s.long_block)):
        dit = graft(verifier, DiTConfig(num_layers=s.dit_layers, block_len=block))
        a, c = dit_steps(s, block)
        out[f"dit_params{key}"] = sum(p.numel() for p in dit.parameters())
        out[f"dit_flops{key}"] = 6 * out[f"dit_params{key}"] * s.batch * block * (a + euler * c)
    ar = sum(p.numel() for p in ar_graft(verifier, ARDrafterConfig()).parameters())
    ar_step = 6 * ar * s.batch * (s.prefix_len + s.block_len)
    return {**out, "ar_params": ar, "ar_steps": math.ceil(out["dit_flops"] / ar_step)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/drafters")
    ap.add_argument("--tiny", action="store_true", help="CI sizes: a smoke run of every stage")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    s = TINY if args.tiny else Sizes()
    root = Path(args.run)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    report: dict = {"sizes": {k: v for k, v in vars(s).items()}}

    if max(s.ks) > s.long_block:
        raise SystemExit(f"K {max(s.ks)} is longer than the longest DiT block ({s.long_block})")
    tok_dir = root / "tokenizer"
    files = stdlib_files(s.files)
    if not (tok_dir / "tokenizer.json").is_file():
        train_tokenizer((Path(f).read_text(errors="replace") for f in files), s.vocab, tok_dir)
    tokens = {s.block_len: root / "tokens"}  # shards per DiT block; the long_block DiTs only when a K needs them
    if max(s.ks) > s.block_len:
        tokens[s.long_block] = root / f"tokens_{s.long_block}"
    data = {}
    for block, out in tokens.items():
        if not (out / "val" / MANIFEST).is_file():
            report[f"tokens_{block}"] = prepare_data(PrepareConfig(
                input=files, out=str(out), tokenizer=str(tok_dir), block_len=block, prefix_len=s.prefix_len,
                val_fraction=max(0.05, 2 / len(files)), shard_samples=2000, overwrite=True))  # >= 2 held-out files
        data[block] = DataConfig(train=str(out / "train"), val=str(out / "val"), num_workers=0)  # no fork: gh-112275
    vocab = -(-len(load_tokenizer(str(tok_dir))) // 64) * 64

    verifier_dir = root / "verifier" / "export"
    if not (verifier_dir / "config.json").is_file():
        report["verifier"] = train(root / "verifier", s, data[s.block_len], s.verifier_steps, 3e-3, stage="lm",
                                   verifier=VerifierConfig(random_init={**s.verifier, "vocab_size": vocab}))
    verifier = VerifierConfig(path=str(verifier_dir))
    budget = drafter_flops(s, verifier_dir)
    report["budget"] = budget
    for block in tokens:
        a_steps, c_steps = dit_steps(s, block)
        for name, prefix_state in DITS:
            a_dir, c_dir = root / f"{dit_run(s, name, block)}_a", root / dit_run(s, name, block)
            if not (a_dir / "export").is_dir():
                train(a_dir, s, data[block], a_steps, 1e-3, stage="a", verifier=verifier,
                      dit=DiTConfig(num_layers=s.dit_layers, block_len=block, prefix_state=prefix_state))
            if not (c_dir / "export").is_dir():
                train(c_dir, s, data[block], c_steps, 1e-3, stage="c", init_from=str(a_dir), verifier=verifier,
                      stage_c=StageCConfig(beta_steps=c_steps))
    if not (root / "ar" / "export").is_dir():
        train(root / "ar", s, data[s.block_len], budget["ar_steps"], 1e-3, stage="ar", verifier=verifier,
              ar=ARDrafterConfig(block_len=s.block_len))

    grid, prompts = [], str(tokens[s.block_len] / "val")
    for label, name, reading, ks, ns in cells(s):
        for k in ks:
            for n in ns:
                out = root / "eval" / f"{label}_k{k}_n{n}"
                if (out / "eval.json").is_file():  # measured by an earlier run of this script
                    r = json.loads((out / "eval.json").read_text())
                else:
                    r = evaluate(EvalConfig(verifier=verifier, drafter=str(root / name), prompts=prompts,
                                            num_prompts=s.prompts, out=str(out), decode=DecodeConfig(
                                                num_candidates=n, block_len=k, max_new_tokens=s.tokens,
                                                reading=reading)))
                grid.append({"drafter": label, "K": k, "N": n, **{key: r[key] for key in (
                    "tau", "tau_histogram", "tokens_per_verifier_call", "spec_tok_s", "baseline_tok_s", "speedup",
                    "greedy_outputs", "cycle_ms", "device")}})
                print(json.dumps({key: grid[-1][key] for key in ("drafter", "K", "N", "tau", "speedup")}), flush=True)
    report["grid"] = grid
    evals = [r for r in map(json.loads, (root / "verifier" / "metrics.jsonl").open()) if r["kind"] == "eval"]
    report["verifier_heldout_ce"] = evals[-1]["loss"]
    report["seconds"] = round(time.time() - t0, 1)
    out = Path(args.out or REPO / "bench" / "results" / f"{grid[0]['device'].replace(' ', '-').lower()}-"
               f"{date.today()}-drafters{'_tiny' if args.tiny else ''}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str))
    out.with_suffix(".md").write_text(table(report))
    plot(report, out.with_suffix(".png"))
    print(table(report))


def dit_run(s: Sizes, name: str, block: int) -> str:
    """The run (and grid label) of the DiT ``name`` trained at ``block``."""
    return name if block == s.block_len else f"{name}@{block}"


def cells(s: Sizes) -> list[tuple[str, str, str, tuple, tuple]]:
    """(label, drafter run, reading, K values, N values): every drafter as decoded by default (the block_len DiTs for
    K up to their block, the long_block DiTs beyond it, the AR drafter for all K), and the block_len DiTs also with
    their drafts read by the verifier (``decode.reading: verifier``) at the smallest and largest N."""
    short, long = tuple(k for k in s.ks if k <= s.block_len), tuple(k for k in s.ks if k > s.block_len)
    rows = []
    for name, _ in DITS:
        rows += [(name, name, "nearest", short, s.ns)] + \
            ([(dit_run(s, name, s.long_block),) * 2 + ("nearest", long, s.ns)] if long else [])
    rows.append(("ar", "ar", "nearest", s.ks, s.ns))
    return rows + [(f"{name}+vread", name, "verifier", short, (s.ns[0], s.ns[-1])) for name, _ in DITS]


def table(report: dict) -> str:
    grid, ns = report["grid"], sorted({r["N"] for r in report["grid"]})
    b = report["budget"]
    lines = [f"Verifier held-out CE {report['verifier_heldout_ce']:.3f}; DiT {b['dit_params']:,} params, AR drafter "
             f"{b['ar_params']:,} params trained {b['ar_steps']} steps for the DiTs' {b['dit_flops']:.3g} drafter "
             f"FLOPs (the @{report['sizes']['long_block']} DiTs: {b['dit_flops_long']:.3g}); device "
             f"{grid[0]['device']}. Cells: τ (speedup vs the static-cache AR baseline).", "",
             "| drafter | K | " + " | ".join(f"N = {n}" for n in ns) + " |", "|---|---|" + "---|" * len(ns)]
    for name in dict.fromkeys(r["drafter"] for r in grid):
        for k in sorted({r["K"] for r in grid if r["drafter"] == name}):
            row = {r["N"]: r for r in grid if r["drafter"] == name and r["K"] == k}
            lines.append(f"| {name} | {k} | " + " | ".join(
                f"{row[n]['tau']:.2f} ({row[n]['speedup']:.2f}×)" if n in row else "—" for n in ns) + " |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = report["grid"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 6))
    colors = ("tab:blue", "tab:cyan", "tab:orange", "tab:olive", "tab:green", "tab:purple", "tab:red")
    for ax, key, label in zip(axes, ("tau", "speedup"), ("τ (tokens per cycle)", "speedup vs the static-cache AR")):
        for name, color in zip(dict.fromkeys(r["drafter"] for r in grid), colors):
            for n, style in zip(sorted({r["N"] for r in grid}), ("-", "--", "-.", ":")):
                rows = sorted((r for r in grid if r["drafter"] == name and r["N"] == n), key=lambda r: r["K"])
                if rows:
                    ax.plot([r["K"] for r in rows], [r[key] for r in rows], style, color=color, marker="o",
                            label=f"{name}, N={n}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("K (tokens per candidate)")
        ax.set_ylabel(label)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=6, fontsize=7)
    fig.tight_layout(rect=(0, 0.15, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
