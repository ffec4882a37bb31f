"""Which levers make the CLSD drafter draft? An ablation against the AR drafter on the same mini verifier.

    python bench/drafter_levers.py [--run runs/levers] [--tiny] [--out bench/results/<device>-<date>-levers]

The corpus, tokenizer and verifier are built as in ``bench/drafters.py`` (the Python standard library's sources, a
byte-level BPE, a mini Qwen3.5 verifier pretrained with ``stage lm``), at a 16-token block. Then:
    distilled    ``clsd-ds distill``: the first shards of the training split with each block replaced by the
                 verifier's greedy continuation of its prefix (the targets acceptance is measured against)
    ar[_dist]    the EAGLE-style AR drafter on the corpus [on the distilled shards], for the drafter FLOPs of the
                 seed's DiT schedule (Stage A 300 + Stage C 100 steps x 2 Euler steps, 6 x params x block tokens)
    clsd[_dist]  the DiT with every lever of this change: dit.prefix_state, flow.anchor, flow.objective=tokens,
                 1 Euler step trained at its own t (flow.t_sampling euler_grid: t = 0), flow.position_decay;
                 Stage A only, for the same FLOPs [the distilled DiT for ``long`` x as many, with τ logged every
                 ``curve_every`` steps: τ against training FLOPs]
    ar_dist_<long>x  the AR drafter on the distilled shards for as many FLOPs as clsd_dist, with its τ curve
Each is decoded in ``exact`` mode, K = 16 (the anchor / the verifier's own token first, then 15 drafted), N = 1 and
4, on held-out prompts; every output is checked against greedy decoding. Per drafter: τ (tokens committed per
cycle), α_i = P(drafted token i accepted | tokens < i accepted) from the per-cycle acceptance (the first, free token
excluded), tokens per verifier call. JSON + Markdown; a rerun reuses what is there.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path

from drafters import TINY as TINY_SIZES
from drafters import Sizes, stdlib_files, train

from clsd_ds.ar_drafter import ARDrafterConfig, ar_graft
from clsd_ds.config import to_dict
from clsd_ds.data.distill import DistillConfig, distill
from clsd_ds.data.format import MANIFEST
from clsd_ds.data.reader import DataConfig
from clsd_ds.data.tokenizer import train_tokenizer
from clsd_ds.data.writer import PrepareConfig, prepare_data
from clsd_ds.dit import DiTConfig
from clsd_ds.flow import FlowConfig
from clsd_ds.graft import graft
from clsd_ds.infer.decoder import DecodeConfig
from clsd_ds.infer.evaluate import EvalConfig, evaluate
from clsd_ds.verifier import Verifier, VerifierConfig, load_tokenizer

REPO = Path(__file__).resolve().parents[1]
LEVERS = FlowConfig(anchor=True, objective="tokens", euler_steps=1, t_sampling="euler_grid", position_decay=7.0)


@dataclass
class Plan:
    sizes: Sizes
    distill_shards: int = 4  # input shards distilled (2,000 samples each)
    long: int = 4  # the distilled DiT trains for long x the equal-FLOPs steps
    curve_every: int = 250
    ns: tuple = (1, 4)
    prompts: int = 16
    tokens: int = 48


FULL = Plan(Sizes(block_len=16, long_block=16, ks=(16,)))
TINY = Plan(replace(TINY_SIZES, long_block=8, ks=(8,)), distill_shards=1, long=2, curve_every=10, ns=(1,), prompts=2,
            tokens=12)


def alphas(hist: dict, free: int) -> list[float]:
    """α_i from a histogram {tokens committed in a cycle: cycles}: a cycle commits free + (drafted tokens
    accepted) + 1 (the verifier's bonus); α_i = #(accepted >= i) / #(accepted >= i - 1)."""
    accepted = Counter()
    for committed, n in hist.items():
        accepted[max(0, int(committed) - 1 - free)] += n
    out, at_least = [], sum(accepted.values())
    for i in range(1, max(accepted, default=0) + 1):
        nxt = at_least - accepted[i - 1]
        out.append(nxt / at_least if at_least else 0.0)
        at_least = nxt
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/levers")
    ap.add_argument("--tiny", action="store_true", help="CI sizes: a smoke run of every stage")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    plan = TINY if args.tiny else FULL
    s, root, t0 = plan.sizes, Path(args.run), time.time()
    root.mkdir(parents=True, exist_ok=True)
    report: dict = {"sizes": vars(s), "plan": {k: v for k, v in vars(plan).items() if k != "sizes"},
                    "levers": to_dict(LEVERS)}

    tok_dir, files = root / "tokenizer", stdlib_files(s.files)
    if not (tok_dir / "tokenizer.json").is_file():
        train_tokenizer((Path(f).read_text(errors="replace") for f in files), s.vocab, tok_dir)
    tokens = root / "tokens"
    if not (tokens / "val" / MANIFEST).is_file():
        prepare_data(PrepareConfig(input=files, out=str(tokens), tokenizer=str(tok_dir), block_len=s.block_len,
                                   prefix_len=s.prefix_len, val_fraction=max(0.05, 2 / len(files)),
                                   shard_samples=2000, overwrite=True))
    vocab = -(-len(load_tokenizer(str(tok_dir))) // 64) * 64
    corpus = DataConfig(train=str(tokens / "train"), val=str(tokens / "val"), num_workers=0)
    verifier_dir = root / "verifier" / "export"
    if not (verifier_dir / "config.json").is_file():
        train(root / "verifier", s, corpus, s.verifier_steps, 3e-3, stage="lm",
              verifier=VerifierConfig(random_init={**s.verifier, "vocab_size": vocab}))
    verifier = VerifierConfig(path=str(verifier_dir))
    distilled = root / "distilled"
    if not (distilled / MANIFEST).is_file():
        distill(DistillConfig(input=corpus.train, out=str(distilled), verifier=verifier,
                              max_shards=plan.distill_shards))
    data = {"": corpus, "_dist": replace(corpus, train=str(distilled))}

    lm = Verifier.load(verifier)
    dit_params = sum(p.numel() for p in graft(lm, DiTConfig(num_layers=s.dit_layers, block_len=s.block_len))
                     .parameters())
    ar_params = sum(p.numel() for p in ar_graft(lm, ARDrafterConfig()).parameters())
    budget = 6 * dit_params * s.batch * s.block_len * (s.stage_a_steps + 2 * s.stage_c_steps)  # the seed's schedule
    dit_steps = s.stage_a_steps + 2 * s.stage_c_steps
    ar_steps = -(-budget // (6 * ar_params * s.batch * (s.prefix_len + s.block_len)))
    report["budget"] = {"drafter_flops": budget, "dit_params": dit_params, "dit_steps": dit_steps,
                        "ar_params": ar_params, "ar_steps": ar_steps}
    dit = DiTConfig(num_layers=s.dit_layers, block_len=s.block_len, prefix_state=True)
    curve = dict(eval_every=plan.curve_every, tau_prompts=8, tau_cycles=6, tau_candidates=1)
    ar, lever = dict(stage="ar", ar=ARDrafterConfig(block_len=s.block_len)), dict(stage="a", dit=dit, flow=LEVERS)
    runs = {  # name: (data, steps, sections); the _dist drafters also for long x the FLOPs, with τ curves
        "ar": ("", ar_steps, ar), "clsd": ("", dit_steps, {**lever, "train_extra": curve}),
        "ar_dist": ("_dist", ar_steps, ar),
        "clsd_dist": ("_dist", dit_steps * plan.long, {**lever, "train_extra": curve}),
        f"ar_dist_{plan.long}x": ("_dist", ar_steps * plan.long, {**ar, "train_extra": curve})}
    for name, (key, steps, sections) in runs.items():
        if not (root / name / "export").is_dir():
            train(root / name, s, data[key], steps, 1e-3, verifier=verifier, **sections)

    rows = []
    for name in runs:
        free = 1  # the anchor / the AR chain's first token: the verifier's own next token, accepted by construction
        for n in plan.ns:
            out = root / "eval" / f"{name}_n{n}"
            if (out / "eval.json").is_file():
                r = json.loads((out / "eval.json").read_text())
            else:
                r = evaluate(EvalConfig(verifier=verifier, drafter=str(root / name), prompts=str(tokens / "val"),
                                        num_prompts=plan.prompts, out=str(out), device="cpu", decode=DecodeConfig(
                                            num_candidates=n, block_len=s.block_len, max_new_tokens=plan.tokens)))
            rows.append({"drafter": name, "K": s.block_len, "N": n, "tau": r["tau"],
                         "alpha": alphas(r["tau_histogram"], free), "tau_histogram": r["tau_histogram"],
                         "tokens_per_verifier_call": r["tokens_per_verifier_call"],
                         "greedy_outputs": r["greedy_outputs"], "speedup": r["speedup"]})
            print(json.dumps({k: rows[-1][k] for k in ("drafter", "N", "tau", "greedy_outputs")}), flush=True)
    report["rows"] = rows
    step_flops = {"ar": budget / ar_steps, "clsd": budget / dit_steps}  # drafter FLOPs per training step
    report["curves"] = {name: [{"step": e["step"], "tau": e["tau"], "accuracy_first": e.get("accuracy_first"),
                                "flops": step_flops[name.split("_")[0]] * e["step"]}
                               for e in map(json.loads, (root / name / "metrics.jsonl").open())
                               if e["kind"] == "eval" and "tau" in e]
                        for name in runs if "train_extra" in runs[name][2]}
    evals = [e for e in map(json.loads, (root / "verifier" / "metrics.jsonl").open()) if e["kind"] == "eval"]
    report["verifier_heldout_ce"] = [evals[0]["loss"], evals[-1]["loss"]]
    report["seconds"] = round(time.time() - t0, 1)
    out = Path(args.out or REPO / "bench" / "results" / f"cpu-{date.today()}-levers{'_tiny' if args.tiny else ''}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str))
    out.with_suffix(".md").write_text(table(report))
    print(table(report))


def table(report: dict) -> str:
    lines = ["| drafter | N | τ | α₁..α₈ | tokens / verifier call | greedy |", "|---|---|---|---|---|---|"]
    for r in report["rows"]:
        alpha = ", ".join(f"{a:.2f}" for a in r["alpha"][:8]) or "—"
        lines.append(f"| {r['drafter']} | {r['N']} | {r['tau']:.2f} | {alpha} | {r['tokens_per_verifier_call']:.2f} | "
                     f"{r['greedy_outputs']} |")
    for name, curve in report["curves"].items():
        lines.append(f"\n{name}: τ (N 1, training evaluation) by step: "
                     + ", ".join(f"{c['step']}: {c['tau']:.2f}" for c in curve))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
