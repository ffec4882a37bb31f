"""Which levers make the CLSD drafter draft? An ablation against the AR drafter on the same mini verifier.

    python bench/drafter_levers.py [--run runs/levers] [--tiny] [--only NAME ...]
                                   [--out bench/results/<device>-<date>-levers]

The corpus, tokenizer and verifier are built as in ``bench/drafters.py`` (the Python standard library's sources, a
byte-level BPE, a mini Qwen3.5 verifier pretrained with ``stage lm``), at a 16-token block. Then:
    distilled    ``clsd-ds distill``: the first shards of the training split with each block replaced by the
                 verifier's greedy continuation of its prefix (the targets acceptance is measured against)
    ar[_dist]    the EAGLE-style AR drafter on the corpus [on the distilled shards], for the drafter FLOPs of the
                 seed's DiT schedule (Stage A 300 + Stage C 100 steps x 2 Euler steps, 6 x params x block tokens)
    clsd[_dist]  the DiT with the levers: dit.prefix_state, flow.anchor, flow.objective=tokens, 1 Euler step
                 trained at its own t (flow.t_sampling euler_grid: t = 0), flow.position_decay; Stage A only, for
                 the same FLOPs [the distilled DiT for ``long`` x as many]
    ar_dist_<long>x      the AR drafter on the distilled shards for ``long`` x the FLOPs
    clsd_many, ar_many_<long>x   both at ``long`` x the FLOPs on ``distilled_many``: the same prefixes distilled with
                         many anchors per rollout (distill anchors A, anchor_stride s: A blocks per prefix, each the
                         verifier's continuation of the prefix and the rollout's first j·s tokens): A x the distinct
                         blocks for one rollout of K + (A - 1)·s tokens per prefix. Is the DiT short of data?
    clsd_dense, ar_dense_<long>x the same on ``distilled_dense``: an anchor at every token of the same-length rollout
    clsd_many_mask       clsd_many with flow.source mask: the drafted positions' input is one fixed vector
                         (DFlash's mask input) instead of noise; N > 1 from the lattice
    clsd_many_<converge>x  clsd_many trained for ``converge`` x the FLOPs: τ along training towards convergence
    clsd_many_mask_<converge>x, ar_many_<converge>x  the mask DiT and the AR drafter there too: each to convergence
    clsd_many_mask_reveal_<converge>x  the reveal DiT (below) there too
    clsd_many_mask_reveal_<converge>x_seed1, ar_many_<converge>x_seed1  both again with seed 1: is the margin larger
                         than a seed's?
    clsd_many_mask_reveal  clsd_many_mask trained with flow.reveal 0.5: half the blocks hold a clean lead of
                         r ~ U{1..K-1} positions (the anchor and r - 1 true tokens), so the causal DiT learns to draft
                         after tokens it is given; decoded also with decode.redraft (every lattice candidate drafted
                         again after its pivot, one more DiT pass): can a branch condition what follows it?
    clsd_many_seed1, clsd_many_mask_seed1  clsd_many and clsd_many_mask again with seed 1 (the new weights'
                         initialisation, the step noise and the data order): is the mask's gain larger than a seed's?
    clsd_dist_l2         the distilled lever DiT with 2 layers instead of 4 (more steps for the same FLOPs)
    clsd_dist_attn       the DFlash-like configuration: a 2-layer lever DiT grafted from the verifier's last two
                         attention layers, each attending to its source layer's prefix keys/values (DFlash injects
                         the target's hidden states as keys/values into every drafter layer)
    clsd_dist_2step      the distilled lever DiT with a 2-step sampler trained on its own inputs
                         (flow.train_inputs sampler; 2 DiT passes per step, so half the steps): does a second,
                         continuous step that sees the first step's drafts add acceptance?
    abl_*        the ablation, on the distilled shards at 1x the FLOPs: the seed's DiT (adaLN-C, velocity, 2 Euler
                 steps, logit-normal t), then + prefix state, + anchor, + tokens objective, + one step at t = 0,
                 + position decay (every lever), and every lever with adaLN-C conditioning instead of the prefix state
Every ``long`` x run logs τ every ``curve_every`` steps: τ against training FLOPs. Each drafter is decoded at K = 16
(the anchor / the verifier's own token first, then 15 drafted) on held-out prompts, with the ``exact`` rule (every
output checked against greedy decoding) and the lossless ``sampling`` rule at T = 1, N = 1 and 4 (a DiT's N also as
``decode.candidates: lattice``, one draft's top-k branches; a mask DiT's also with ``decode.redraft`` 1, a reveal
DiT's with 1 and 2, exact only);
the ablation's drafters at ``exact``, N = 1. ``--only`` trains and measures the named drafters alone. Per cell:
τ (tokens committed per cycle), α_i = P(drafted token i accepted | tokens < i accepted) (under ``exact`` the
verifier's own leading token excluded), tokens per verifier call, and the cycle's verification cost, N·K positions
per committed token.
JSON + Markdown + PNG; a rerun reuses the trained drafters and measured cells that are there.
"""

from __future__ import annotations

import argparse
import json
import time
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
from clsd_ds.infer.acceptance import conditional_acceptance
from clsd_ds.infer.decoder import DecodeConfig
from clsd_ds.infer.evaluate import EvalConfig, evaluate
from clsd_ds.quickstart import RECIPE, matched_ar_steps
from clsd_ds.verifier import Verifier, VerifierConfig, load_tokenizer

REPO = Path(__file__).resolve().parents[1]
LEVERS = replace(RECIPE, source="noise")  # the levers as measured: anchor, tokens, one step at t = 0, decay; noise
TWO_STEP = replace(LEVERS, euler_steps=2, train_inputs="sampler")
MASK = replace(LEVERS, source="mask")  # one step from a fixed source: DFlash's mask input (the quickstart's RECIPE)
REVEAL = replace(MASK, reveal=0.5)  # half the blocks with a clean lead of r ~ U{1..K-1} positions


@dataclass
class Plan:
    sizes: Sizes
    distill_shards: int = 4  # input shards distilled (2,000 samples each)
    # distilled_<name>: (anchors, anchor_stride): blocks per prefix from one rollout, tokens between them
    anchor_sets: tuple = (("many", 5, 4), ("dense", 17, 1))
    long: int = 4  # the long runs train for long x the seed's drafter FLOPs
    converge: int = 8  # clsd_many_<converge>x: towards convergence
    verifier_curve: int = 3  # the verifier's recipe this many times as long, evaluated every quarter of its steps
    curve_every: int = 250
    ns: tuple = (1, 4)
    rules: tuple = ("exact", "sampling")
    prompts: int = 32
    tokens: int = 64


FULL = Plan(Sizes(block_len=16, long_block=16, ks=(16,)))
TINY = Plan(replace(TINY_SIZES, long_block=8, ks=(8,)), distill_shards=1, long=2,
            anchor_sets=(("many", 2, 2), ("dense", 3, 1)),
            converge=3, verifier_curve=2, curve_every=10, ns=(1, 2), prompts=2, tokens=12)


@dataclass
class Drafter:
    data: str  # "" the corpus, "_dist" the distilled shards, "_many" / "_dense" many anchors per rollout
    multiple: int  # x the seed's drafter FLOPs
    sections: dict  # the run's stage, drafter and flow sections
    curve: bool = False  # τ logged during training
    grid: bool = True  # decoded at every rule, N and candidates; else exact, N 1 only
    seed: int = 0  # the run's seed (new weights, step noise) and its data order


def drafters(plan: Plan) -> dict[str, Drafter]:
    s = plan.sizes
    ar = dict(stage="ar", ar=ARDrafterConfig(block_len=s.block_len))
    dit = DiTConfig(num_layers=s.dit_layers, block_len=s.block_len, prefix_state=True)
    lever = dict(stage="a", dit=dit, flow=LEVERS)
    attn = [i for i, kind in enumerate(layer_types(plan)) if kind == "full_attention"][-2:]
    return {"ar": Drafter("", 1, ar), "clsd": Drafter("", 1, lever, curve=True), "ar_dist": Drafter("_dist", 1, ar),
            "clsd_dist": Drafter("_dist", plan.long, lever, curve=True),
            f"ar_dist_{plan.long}x": Drafter("_dist", plan.long, ar, curve=True),
            "clsd_dist_l2": Drafter("_dist", plan.long, {**lever, "dit": replace(dit, num_layers=2)}, curve=True),
            "clsd_dist_2step": Drafter("_dist", plan.long, {**lever, "flow": TWO_STEP}, curve=True),
            "clsd_dist_attn": Drafter("_dist", plan.long, {**lever, "dit": replace(dit, num_layers=len(attn),
                                                                                layers=attn)}, curve=True),
            "clsd_many": Drafter("_many", plan.long, lever, curve=True),
            f"ar_many_{plan.long}x": Drafter("_many", plan.long, ar, curve=True),
            "clsd_many_mask": Drafter("_many", plan.long, {**lever, "flow": MASK}, curve=True),
            "clsd_many_mask_reveal": Drafter("_many", plan.long, {**lever, "flow": REVEAL}, curve=True),
            f"clsd_many_{plan.converge}x": Drafter("_many", plan.converge, lever, curve=True),
            f"clsd_many_mask_{plan.converge}x": Drafter("_many", plan.converge, {**lever, "flow": MASK}, curve=True),
            f"ar_many_{plan.converge}x": Drafter("_many", plan.converge, ar, curve=True),
            f"clsd_many_mask_reveal_{plan.converge}x": Drafter("_many", plan.converge, {**lever, "flow": REVEAL},
                                                               curve=True),
            f"clsd_many_mask_reveal_{plan.converge}x_seed1": Drafter("_many", plan.converge,
                                                                     {**lever, "flow": REVEAL}, curve=True, seed=1),
            f"ar_many_{plan.converge}x_seed1": Drafter("_many", plan.converge, ar, curve=True, seed=1),
            "clsd_many_seed1": Drafter("_many", plan.long, lever, curve=True, seed=1),
            "clsd_many_mask_seed1": Drafter("_many", plan.long, {**lever, "flow": MASK}, curve=True, seed=1),
            "clsd_dense": Drafter("_dense", plan.long, lever, curve=True),
            f"ar_dense_{plan.long}x": Drafter("_dense", plan.long, ar, curve=True),
            **ablation(plan)}


def layer_types(plan: Plan) -> list[str]:
    """The verifier's layer kinds (Qwen3.5: three Gated DeltaNet layers, then one attention layer)."""
    from transformers import Qwen3_5TextConfig

    return Qwen3_5TextConfig(**plan.sizes.verifier).layer_types


def ablation(plan: Plan) -> dict[str, Drafter]:
    """The seed's DiT on the distilled shards at the seed's FLOPs (Stage A only), then one lever added at a time;
    the last one has every lever (as clsd_dist, for 1x the FLOPs), and the same with adaLN-C conditioning."""
    s = plan.sizes
    dit = DiTConfig(num_layers=s.dit_layers, block_len=s.block_len)
    prefix = replace(dit, prefix_state=True)
    anchor = FlowConfig(anchor=True)
    tokens = replace(anchor, objective="tokens")
    one_step = replace(tokens, euler_steps=1, t_sampling="euler_grid")
    ladder = {"abl_seed": (dit, FlowConfig()), "abl_prefix": (prefix, FlowConfig()), "abl_anchor": (prefix, anchor),
              "abl_tokens": (prefix, tokens), "abl_one_step": (prefix, one_step), "abl_decay": (prefix, LEVERS),
              "abl_decay_adaln": (dit, LEVERS)}
    return {name: Drafter("_dist", 1, dict(stage="a", dit=d, flow=f), grid=False)
            for name, (d, f) in ladder.items()}


def budget(plan: Plan, lm: Verifier, runs: dict[str, Drafter]) -> dict:
    """Drafter training FLOPs (6 per parameter and trained position: a DiT's block tokens per pass, the AR
    drafter's prefix + block) and each run's steps: the seed's DiT schedule for the 4-layer DiT, the AR drafter's
    steps for as many FLOPs (on many-anchor data, prefixes (A - 1)·s / 2 tokens longer on average), other DiTs the
    4-layer DiT's steps scaled by parameters x passes per step."""
    s = plan.sizes
    base = sum(p.numel() for p in graft(lm, DiTConfig(num_layers=s.dit_layers, block_len=s.block_len)).parameters())
    ar_params = sum(p.numel() for p in ar_graft(lm, ARDrafterConfig()).parameters())
    flops = 6 * base * s.batch * s.block_len * (s.stage_a_steps + 2 * s.stage_c_steps)
    dit_steps = s.stage_a_steps + 2 * s.stage_c_steps
    ar_steps = matched_ar_steps(lm, DiTConfig(num_layers=s.dit_layers, block_len=s.block_len), dit_steps,
                                s.prefix_len)
    out = {"drafter_flops": flops, "dit_params": base, "dit_steps": dit_steps, "ar_params": ar_params,
           "ar_steps": ar_steps, "runs": {}}
    longer = {f"_{name}": matched_ar_steps(lm, DiTConfig(num_layers=s.dit_layers, block_len=s.block_len), dit_steps,
                                           s.prefix_len + (anchors - 1) * stride // 2)
              for name, anchors, stride in plan.anchor_sets}
    for name, d in runs.items():
        if d.sections["stage"] == "ar":
            base_steps = longer.get(d.data, ar_steps)
            steps, step_flops = base_steps * d.multiple, flops / base_steps
        else:
            params = sum(p.numel() for p in graft(lm, d.sections["dit"]).parameters())
            passes = d.sections["flow"].euler_steps if d.sections["flow"].train_inputs == "sampler" else 1
            steps = round(dit_steps * d.multiple * base / (params * passes))
            step_flops = 6 * params * passes * s.batch * s.block_len
        out["runs"][name] = {"steps": steps, "step_flops": step_flops, "multiple": d.multiple}
    return out


def cells(plan: Plan, runs: dict[str, Drafter]) -> list[tuple[str, str, int, str]]:
    """(drafter, rule, N, candidates): every drafter at every rule and N, a DiT's N > 1 also as a lattice; the
    ablation's drafters at the exact rule and N 1; a DiT with a fixed source (flow.source mask) has one draft, so its
    N > 1 is the lattice only, and it is also decoded with the lattice redrafted after each pivot (exact, every N;
    a reveal DiT also with two redraft passes)."""
    out = []
    for name, d in runs.items():
        dit = d.sections["stage"] != "ar"
        fixed = dit and d.sections["flow"].source == "mask"
        for rule in plan.rules if d.grid else ("exact",):
            for n in plan.ns if d.grid else (1,):
                if n == 1 or not fixed:
                    out.append((name, rule, n, "noise"))
                if n > 1 and dit:
                    out.append((name, rule, n, "lattice"))
                if fixed and rule == "exact" and d.grid:
                    out.append((name, rule, n, "redraft"))
                    if d.sections["flow"].reveal > 0:
                        out.append((name, rule, n, "redraft2"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/levers")
    ap.add_argument("--tiny", action="store_true", help="CI sizes: a smoke run of every stage")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="train and measure only these drafters")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    plan = TINY if args.tiny else FULL
    runs = drafters(plan)
    if args.only:
        unknown = sorted(set(args.only) - set(runs))
        if unknown:
            ap.error(f"--only: no drafter named {', '.join(unknown)}; the plan's drafters: {', '.join(runs)}")
        runs = {name: d for name, d in runs.items() if name in args.only}
    s, root, t0 = plan.sizes, Path(args.run), time.time()
    root.mkdir(parents=True, exist_ok=True)
    report: dict = {"sizes": vars(s), "plan": {k: v for k, v in vars(plan).items() if k != "sizes"},
                    "levers": to_dict(LEVERS), "two_step": to_dict(TWO_STEP), "mask": to_dict(MASK)}

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
    for name, anchors, stride in plan.anchor_sets:
        out = root / f"distilled_{name}"
        if not (out / MANIFEST).is_file():
            distill(DistillConfig(input=corpus.train, out=str(out), verifier=verifier, max_shards=plan.distill_shards,
                                  anchors=anchors, anchor_stride=stride))
        data[f"_{name}"] = replace(corpus, train=str(out))

    report["budget"] = plan_flops = budget(plan, Verifier.load(verifier), runs)
    curve = dict(eval_every=plan.curve_every, tau_prompts=8, tau_cycles=6, tau_candidates=1)
    for name, d in runs.items():
        if not (root / name / "export").is_dir():
            train(root / name, s, replace(data[d.data], seed=d.seed), plan_flops["runs"][name]["steps"], 1e-3,
                  verifier=verifier, seed=d.seed, **d.sections, **({"train_extra": curve} if d.curve else {}))

    rows, evals = [], root / f"eval_{plan.prompts}x{plan.tokens}"
    for name, rule, n, candidates in cells(plan, runs):
        out = evals / f"{name}_{rule}_n{n}{'' if candidates == 'noise' else '_' + candidates}"
        if (out / "eval.json").is_file():
            r = json.loads((out / "eval.json").read_text())
        else:
            r = evaluate(EvalConfig(verifier=verifier, drafter=str(root / name), prompts=str(tokens / "val"),
                                    num_prompts=plan.prompts, out=str(out), device="cpu", decode=DecodeConfig(
                                        num_candidates=n, candidates="noise" if candidates == "noise" else "lattice",
                                        redraft={"redraft": 1, "redraft2": 2}.get(candidates, 0),
                                        block_len=s.block_len,
                                        max_new_tokens=plan.tokens, acceptance=rule, temperature=1.0)))
        sections = runs[name].sections  # the verifier's own next token leads (AR, anchor): accepted under exact
        given = r.get("given_tokens", int(rule == "exact" and (sections["stage"] == "ar" or sections["flow"].anchor)))
        data = {"": "corpus", "_dist": "distilled", **{f"_{n}": f"distilled, {a} anchors / {st}"
                                                      for n, a, st in plan.anchor_sets}}[runs[name].data]
        rows.append({"drafter": name, "data": data, "flops_multiple": runs[name].multiple, "seed": runs[name].seed,
                     "rule": rule, "K": s.block_len, "N": n, "candidates": candidates, "tau": r["tau"],
                     "alpha": conditional_acceptance(r["tau_histogram"], given), "tau_histogram": r["tau_histogram"],
                     "tokens_per_verifier_call": r["tokens_per_verifier_call"],
                     "verify_positions_per_token": n * s.block_len / r["tau"],
                     "greedy_outputs": r["greedy_outputs"] if rule == "exact" else None, "speedup": r["speedup"]})
        print(json.dumps({k: rows[-1][k] for k in ("drafter", "rule", "N", "candidates", "tau")}), flush=True)
    report["rows"] = rows
    report["curves"] = {name: [{"step": e["step"], "tau": e["tau"], "accuracy_first": e.get("accuracy_first"),
                                "flops": plan_flops["runs"][name]["step_flops"] * e["step"]}
                               for e in map(json.loads, (root / name / "metrics.jsonl").open())
                               if e["kind"] == "eval" and "tau" in e]
                        for name, d in runs.items() if d.curve}
    ce = [e for e in map(json.loads, (root / "verifier" / "metrics.jsonl").open()) if e["kind"] == "eval"]
    report["verifier_heldout_ce"] = [{"step": e["step"], "loss": e["loss"]} for e in ce]
    curve_dir = root / "verifier_curve"  # the verifier's recipe trained longer: how far from converged is it?
    if not (curve_dir / "export").is_dir():
        train(curve_dir, s, corpus, s.verifier_steps * plan.verifier_curve, 3e-3, stage="lm",
              verifier=VerifierConfig(random_init={**s.verifier, "vocab_size": vocab}),
              train_extra=dict(eval_every=max(1, s.verifier_steps // 4)))
    report["verifier_curve"] = [{"step": e["step"], "loss": e["loss"]} for e in map(
        json.loads, (curve_dir / "metrics.jsonl").open()) if e["kind"] == "eval"]
    report["seconds"] = round(time.time() - t0, 1)
    out = Path(args.out or REPO / "bench" / "results" / f"cpu-{date.today()}-levers{'_tiny' if args.tiny else ''}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str))
    out.with_suffix(".md").write_text(table(report))
    plot(report, out.with_suffix(".png"))
    print(table(report))


def table(report: dict) -> str:
    lines = ["| drafter | data | FLOPs | rule | N | candidates | τ | α₁..α₈ | tokens / verifier call | "
             "verified positions / token | greedy |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        alpha = ", ".join(f"{a:.2f}" for a in r["alpha"][:8]) or "—"
        lines.append(f"| {r['drafter']} | {r['data']} | {r['flops_multiple']}× | {r['rule']} | {r['N']} | "
                     f"{r['candidates']} | {r['tau']:.2f} | {alpha} | {r['tokens_per_verifier_call']:.2f} | "
                     f"{r['verify_positions_per_token']:.1f} | {r['greedy_outputs'] or '—'} |")
    for name, curve in report["curves"].items():
        lines.append(f"\n{name}: τ (N 1, training evaluation) at step (TFLOP): " + ", ".join(
            f"{c['step']} ({c['flops'] / 1e12:.2f}): {c['tau']:.2f}" for c in curve))
    lines.append("\nthe verifier (held-out CE at step): " + ", ".join(
        f"{e['step']}: {e['loss']:.3f}" for e in report["verifier_heldout_ce"]) + "; its recipe trained longer: " +
        ", ".join(f"{e['step']}: {e['loss']:.3f}" for e in report["verifier_curve"]))
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Left: τ during training against drafter FLOPs; right: α_1..α_8 of the drafters beyond the ablation, exact
    rule, N 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.5))
    for name, curve in report["curves"].items():
        left.plot([c["flops"] / 1e12 for c in curve], [c["tau"] for c in curve], marker="o", label=name)
    left.set_xlabel("drafter training TFLOP")
    left.set_ylabel("τ (N 1, exact, training evaluation)")
    left.legend(fontsize=8)
    for r in report["rows"]:
        if r["rule"] == "exact" and r["N"] == 1 and r["alpha"] and not r["drafter"].startswith("abl_"):
            alpha = r["alpha"][:8]
            right.plot(range(1, len(alpha) + 1), alpha, marker="o", label=f"{r['drafter']} (τ {r['tau']:.2f})")
    right.set_xlabel("drafted position i")
    right.set_ylabel("α_i = P(i accepted | < i accepted)")
    right.set_ylim(0, 1.05)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
