"""The embedded default: the whole pipeline on a tiny Qwen3.5 verifier, on the CPU, with nothing downloaded.

Stages (each skipped when its output is already in the run directory, so a rerun continues):
    corpus      arithmetic chain-of-thought worksheets (data/corpus.py)
    tokenizer   a byte-level BPE trained on them (data/tokenizer.py)
    tokens      prepare-data: token shards, train + val
    verifier    pretrain a tiny Qwen3.5 verifier on them (stage lm), exported as a HF checkpoint
    distilled   distill: the first training shards (and the val split) with each block replaced by the verifier's
                greedy continuation of its prefix: the drafters' targets
    clsd        the CLSD drafter of the measured recipe (docs/inference.md, "Which drafter?"): a DiT grafted from
                the verifier with prefix-state conditioning, the anchor token, the tokens objective and one Euler
                step trained at its own t, Stage A on the distilled shards
    ar          the EAGLE-style AR drafter (stage ar) on the same shards, for as many drafter training FLOPs
    decode_*    speculative decoding of held-out prompts with each drafter (infer/): τ, α_i (the conditional
                acceptance of each drafted position), the cycle's time split, the speedup over the verifier's own
                cached greedy decoding, and a check that the output is the verifier's greedy text
The seed's Stage A -> Stage C pipeline (velocity flow, CE through the verifier) is not part of it: measured here it
drafts nothing the verifier keeps (τ 1.0; bench/results); it stays available (configs/stage_c_9b.yaml) and tested.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .ar_drafter import ARDrafterConfig, ar_graft
from .config import to_dict
from .data.corpus import write_corpus
from .data.distill import DistillConfig, distill
from .data.format import MANIFEST
from .data.reader import DataConfig
from .data.tokenizer import train_tokenizer
from .data.writer import PrepareConfig, prepare_data
from .dit import DiTConfig
from .flow import FlowConfig
from .graft import graft
from .infer.decoder import DecodeConfig
from .infer.evaluate import EvalConfig, evaluate
from .train.loop import LogConfig, OptimConfig, TrainConfig
from .train.preemption import EXIT_REQUEUE
from .train.run import RunConfig, run
from .tiny import MINI
from .verifier import Verifier, VerifierConfig, load_tokenizer


@dataclass
class QuickstartConfig:
    run_dir: str = "runs/quickstart"
    seed: int = 0
    documents: int = 1000
    vocab_size: int = 512
    block_len: int = 16
    prefix_len: int = 96
    verifier: dict = field(default_factory=lambda: dict(MINI))
    verifier_steps: int = 100
    verifier_batch: int = 16
    verifier_lr: float = 3e-3
    distill_shards: int = 4  # training shards (1,000 samples each) distilled
    distill_anchors: int = 5  # samples per prefix from one rollout (distill anchors / anchor_stride)
    distill_anchor_stride: int = 4
    dit_layers: int = 4
    clsd_steps: int = 200
    drafter_batch: int = 16
    drafter_lr: float = 1e-3
    decode_prompts: int = 8  # held-out prompts decoded speculatively at the end, with each drafter
    decode_tokens: int = 32
    decode_candidates: int = 1
    num_workers: int = 1
    ds_config: str = "ds_configs/cpu_zero1.json"  # one process: ZeRO-3 would partition over a world of one
    progress: bool = True


# The CLSD drafter's flow: the anchor clean at block position 0, logits through the verifier's head trained with CE,
# one Euler step trained at its own t = 0 from DFlash's mask input (x0 = 1, not noise), DFlash's position decay
# (flow.py; measured in bench/drafter_levers.py).
RECIPE = FlowConfig(anchor=True, objective="tokens", euler_steps=1, t_sampling="euler_grid", position_decay=7.0,
                    source="mask")


def matched_ar_steps(verifier: Verifier, dit: DiTConfig, dit_steps: int, prefix_len: int) -> int:
    """AR drafter steps for the DiT's drafter training FLOPs, 6 per parameter and trained position (the same
    batch): the DiT trains on the block's K tokens, the AR drafter on all P + K positions of a sample."""
    dit_params = sum(p.numel() for p in graft(verifier, dit).parameters())
    ar_params = sum(p.numel() for p in ar_graft(verifier, ARDrafterConfig()).parameters())
    return -(-dit_params * dit.block_len * dit_steps // (ar_params * (prefix_len + dit.block_len)))


def _train(cfg: QuickstartConfig, run_dir: Path, **sections) -> dict:
    summary = run(RunConfig(run_dir=str(run_dir), seed=cfg.seed, **sections))
    if summary["exit"] == "requeue":
        print(f"[quickstart] stopped by a signal after a checkpoint in {run_dir}; run it again to continue")
        raise SystemExit(EXIT_REQUEUE)
    return summary


def quickstart(cfg: QuickstartConfig) -> dict:
    root = Path(cfg.run_dir)
    root.mkdir(parents=True, exist_ok=True)
    report: dict = {"run_dir": str(root.resolve())}
    t_all = time.time()

    def stage(name: str, done: bool, fn) -> None:
        t0 = time.time()
        if done:
            print(f"[quickstart] {name}: already done, skipped", flush=True)
            return
        print(f"[quickstart] {name} ...", flush=True)
        result = fn()
        report[name] = {"seconds": round(time.time() - t0, 1), **(result or {})}

    corpus = root / "corpus.jsonl"
    stage("corpus", corpus.is_file(), lambda: {"documents": cfg.documents, "path": str(
        write_corpus(corpus, cfg.documents, cfg.seed))})

    tok_dir = root / "tokenizer"

    def make_tokenizer():
        texts = [json.loads(line)["text"] for line in corpus.open()]
        return {"vocab": len(train_tokenizer(texts, cfg.vocab_size, tok_dir)), "path": str(tok_dir)}

    stage("tokenizer", (tok_dir / "tokenizer.json").is_file(), make_tokenizer)

    def shards(out: Path, **extra) -> dict:
        return prepare_data(PrepareConfig(input=[str(corpus)], out=str(out), block_len=cfg.block_len,
                                          prefix_len=cfg.prefix_len, val_fraction=0.05, shard_samples=1000,
                                          seed=cfg.seed, overwrite=True, **extra))

    tokens = root / "shards_tokens"
    stage("tokens", (tokens / "val" / MANIFEST).is_file(), lambda: shards(tokens, tokenizer=str(tok_dir)))

    vocab = -(-len(load_tokenizer(str(tok_dir))) // 64) * 64
    verifier_run = root / "verifier"
    verifier_dir = verifier_run / "export"
    common = dict(data=DataConfig(train=str(tokens / "train"), val=str(tokens / "val"), num_workers=cfg.num_workers,
                                  seed=cfg.seed), log=LogConfig(progress=cfg.progress))
    stage("verifier", (verifier_dir / "config.json").is_file(), lambda: _train(
        cfg, verifier_run, stage="lm", verifier=VerifierConfig(random_init={**cfg.verifier, "vocab_size": vocab}),
        optim=OptimConfig(lr=cfg.verifier_lr, warmup_steps=cfg.verifier_steps // 10, weight_decay=0.01),
        train=TrainConfig(steps=cfg.verifier_steps, batch_size=cfg.verifier_batch, ds_config=cfg.ds_config,
                          log_every=25, save_every=cfg.verifier_steps, keep_last=1, eval_batches=4), **common))

    verifier = VerifierConfig(path=str(verifier_dir))
    distilled = root / "distilled"
    stage("distilled", (distilled / "val" / MANIFEST).is_file(), lambda: {split: distill(DistillConfig(
        input=str(tokens / split), out=str(distilled / split), verifier=verifier,
        max_shards=cfg.distill_shards if split == "train" else 0, anchors=cfg.distill_anchors,
        anchor_stride=cfg.distill_anchor_stride)) for split in ("train", "val")})

    common["data"] = DataConfig(train=str(distilled / "train"), val=str(distilled / "val"),
                                num_workers=cfg.num_workers, seed=cfg.seed)
    dit = DiTConfig(num_layers=cfg.dit_layers, block_len=cfg.block_len, prefix_state=True)
    ar_steps = matched_ar_steps(Verifier.load(verifier), dit, cfg.clsd_steps, cfg.prefix_len)
    for name, steps, sections in (("clsd", cfg.clsd_steps, dict(stage="a", dit=dit, flow=RECIPE)),
                                  ("ar", ar_steps, dict(stage="ar", ar=ARDrafterConfig(block_len=cfg.block_len)))):
        stage(name, (root / name / "export").is_dir(), lambda name=name, steps=steps, sections=sections: _train(
            cfg, root / name, verifier=verifier, optim=OptimConfig(lr=cfg.drafter_lr, warmup_steps=steps // 10),
            train=TrainConfig(steps=steps, batch_size=cfg.drafter_batch, ds_config=cfg.ds_config,
                              log_every=max(1, steps // 4), save_every=steps, keep_last=1, eval_batches=4),
            **sections, **common))

    for drafter in ("clsd", "ar"):
        out = root / f"decode_{drafter}"
        stage(f"decode_{drafter}", (out / "eval.json").is_file(), lambda drafter=drafter, out=out: {
            k: v for k, v in evaluate(EvalConfig(
                verifier=verifier, drafter=str(root / drafter), prompts=str(tokens / "val"),
                num_prompts=cfg.decode_prompts, out=str(out), device="cpu",
                decode=DecodeConfig(num_candidates=cfg.decode_candidates, max_new_tokens=cfg.decode_tokens,
                                    seed=cfg.seed))).items() if k != "per_prompt"})

    report["seconds"] = round(time.time() - t_all, 1)
    report["config"] = to_dict(cfg)
    (root / "quickstart.json").write_text(json.dumps(report, indent=1))
    print(summarize(report), flush=True)
    return report


def summarize(report: dict) -> str:
    lines = [f"[quickstart] done in {report['seconds']} s; everything is under {report['run_dir']}"]
    if "tokens" in report and "train" in report["tokens"]:
        r = report["tokens"]["train"]
        lines.append(f"  tokens    {r['samples']} train samples, {r['bytes_per_sample']} bytes/sample")
    if "distilled" in report:
        lines.append(f"  distilled {report['distilled']['train']['samples']} train blocks: the verifier's greedy "
                     "continuations of their prefixes")
    for name, what in (("verifier", "next-token CE"), ("clsd", "CE of the drafted tokens"),
                       ("ar", "feature + token loss")):
        r = report.get(name)
        if not r or "eval_end" not in r:
            continue
        last = r.get("last", {})
        lines.append(f"  {name:9s} {r['end_step']} steps; held-out {what} {r['eval_start']['loss']:.4f} -> "
                     f"{r['eval_end']['loss']:.4f}; {last.get('step_s', 0):.3f} s/step; export: {r['export']}")
    for drafter, label in (("clsd", "CLSD"), ("ar", "AR")):
        r = report.get(f"decode_{drafter}")
        if not r:
            continue
        alpha = " ".join(f"{a:.2f}" for a in r["alpha"][:4]) or "-"
        lines.append(f"  decode with the {label} drafter: {r['prompts']} held-out prompts, "
                     f"{r['decode']['num_candidates']} candidate(s) x {r['block_len']} tokens: tau {r['tau']:.2f} "
                     f"tokens/cycle, alpha_1..4 {alpha} (after the verifier's own token); "
                     f"{r['spec_tok_s']:.1f} tok/s vs {r['baseline_tok_s']:.1f} autoregressive = "
                     f"{r['speedup']:.2f}x; outputs equal to greedy decoding: {r['greedy_outputs']}")
        ms = r["cycle_ms"]
        lines.append(f"            one cycle: draft {ms['draft_s']:.0f} ms, verify {ms['verify_s']:.0f} ms, advance "
                     f"{ms['advance_s']:.0f} ms ({r['device']})")
    return "\n".join(lines)
