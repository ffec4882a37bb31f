"""The embedded default: the whole pipeline on a tiny Qwen3.5 verifier, on the CPU, with nothing downloaded.

Stages (each skipped when its output is already in the run directory, so a rerun continues):
    corpus      arithmetic chain-of-thought worksheets (data/corpus.py)
    tokenizer   a byte-level BPE trained on them (data/tokenizer.py)
    tokens      prepare-data: token shards, train + val
    verifier    pretrain a tiny Qwen3.5 verifier on them (stage lm), exported as a HF checkpoint
    shards      prepare-data again, now with C precomputed by that verifier
    stage_a     Stage A of the DiT grafted from the verifier
    stage_c     Stage C from the Stage A result: CE through the frozen verifier from its prefix state
    decode_*    speculative decoding of held-out prompts with the Stage A and the Stage C drafter (infer/):
                τ, the cycle's time split, the speedup over the verifier's own cached greedy decoding, and a
                check that the output is the verifier's greedy text
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import to_dict
from .data.corpus import write_corpus
from .data.format import MANIFEST
from .data.reader import DataConfig
from .data.tokenizer import train_tokenizer
from .data.writer import PrepareConfig, prepare_data
from .dit import DiTConfig
from .export import EXPORT_WEIGHTS
from .flow import FlowConfig
from .infer.decoder import DecodeConfig
from .infer.evaluate import EvalConfig, evaluate
from .train.loop import LogConfig, OptimConfig, TrainConfig
from .train.preemption import EXIT_REQUEUE
from .train.run import RunConfig, run
from .train.stage_c import StageCConfig
from .tiny import MINI
from .verifier import VerifierConfig, load_tokenizer


@dataclass
class QuickstartConfig:
    run_dir: str = "runs/quickstart"
    seed: int = 0
    documents: int = 1000
    vocab_size: int = 512
    block_len: int = 32
    prefix_len: int = 96
    verifier: dict = field(default_factory=lambda: dict(MINI))
    verifier_steps: int = 100
    verifier_batch: int = 16
    verifier_lr: float = 3e-3
    dit_layers: int = 4
    stage_a_steps: int = 200
    stage_a_batch: int = 32
    stage_a_lr: float = 1e-3
    stage_c_steps: int = 60
    stage_c_batch: int = 8
    stage_c_lr: float = 1e-3
    decode_prompts: int = 4  # held-out prompts decoded speculatively at the end, with each drafter
    decode_tokens: int = 32
    decode_candidates: int = 16
    num_workers: int = 1
    ds_config: str = "ds_configs/cpu_zero1.json"  # one process: ZeRO-3 would partition over a world of one
    progress: bool = True


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

    cond = root / "shards"
    stage("shards", (cond / "val" / MANIFEST).is_file(), lambda: shards(
        cond, cond=True, cond_dtype="float32", verifier=VerifierConfig(path=str(verifier_dir))))

    stage_a = root / "stage_a"
    common["data"] = DataConfig(train=str(cond / "train"), val=str(cond / "val"), num_workers=cfg.num_workers,
                                seed=cfg.seed)
    stage("stage_a", (stage_a / "export" / EXPORT_WEIGHTS).is_file(), lambda: _train(
        cfg, stage_a, stage="a", verifier=VerifierConfig(path=str(verifier_dir)),
        dit=DiTConfig(num_layers=cfg.dit_layers, block_len=cfg.block_len), flow=FlowConfig(),
        optim=OptimConfig(lr=cfg.stage_a_lr, warmup_steps=cfg.stage_a_steps // 10),
        train=TrainConfig(steps=cfg.stage_a_steps, batch_size=cfg.stage_a_batch, ds_config=cfg.ds_config,
                          log_every=25, save_every=cfg.stage_a_steps, keep_last=1, eval_batches=4), **common))

    stage_c = root / "stage_c"
    stage("stage_c", (stage_c / "export" / EXPORT_WEIGHTS).is_file(), lambda: _train(
        cfg, stage_c, stage="c", init_from=str(stage_a), verifier=VerifierConfig(path=str(verifier_dir)),
        stage_c=StageCConfig(beta_steps=cfg.stage_c_steps), flow=FlowConfig(),
        optim=OptimConfig(lr=cfg.stage_c_lr, warmup_steps=cfg.stage_c_steps // 10),
        train=TrainConfig(steps=cfg.stage_c_steps, batch_size=cfg.stage_c_batch, ds_config=cfg.ds_config,
                          log_every=10, save_every=cfg.stage_c_steps, keep_last=1, eval_batches=4), **common))

    for drafter in ("stage_a", "stage_c"):
        out = root / f"decode_{drafter}"
        stage(f"decode_{drafter}", (out / "eval.json").is_file(), lambda drafter=drafter, out=out: {
            k: v for k, v in evaluate(EvalConfig(
                verifier=VerifierConfig(path=str(verifier_dir)), drafter=str(root / drafter),
                prompts=str(tokens / "val"), num_prompts=cfg.decode_prompts, out=str(out), device="cpu",
                decode=DecodeConfig(num_candidates=cfg.decode_candidates, max_new_tokens=cfg.decode_tokens,
                                    seed=cfg.seed))).items() if k != "per_prompt"})

    report["seconds"] = round(time.time() - t_all, 1)
    report["config"] = to_dict(cfg)
    (root / "quickstart.json").write_text(json.dumps(report, indent=1))
    print(summarize(report), flush=True)
    return report


def summarize(report: dict) -> str:
    lines = [f"[quickstart] done in {report['seconds']} s; everything is under {report['run_dir']}"]
    for name in ("tokens", "shards"):
        if name in report and "train" in report[name]:
            r = report[name]["train"]
            lines.append(f"  {name:9s} {r['samples']} train samples, {r['bytes_per_sample']} bytes/sample")
    for name, what, key in (("verifier", "next-token CE", "loss"), ("stage_a", "velocity MSE", "loss"),
                            ("stage_c", "CE of the verifier reading the drafts", "ce")):
        r = report.get(name)
        if not r or "eval_end" not in r:
            continue
        last = r.get("last", {})
        lines.append(f"  {name:9s} held-out {what} {r['eval_start'][key]:.4f} -> {r['eval_end'][key]:.4f}"
                     f"; {last.get('tok_s', 0):.0f} tok/s, {last.get('step_s', 0):.3f} s/step"
                     f"; export: {r['export']}")
        if name == "stage_c":
            lines.append("            verifier's token accuracy on the drafts "
                         f"{r['eval_start']['verifier_acc']:.3f} -> "
                         f"{r['eval_end']['verifier_acc']:.3f}; nearest-embedding accuracy of the drafts "
                         f"{r['eval_start']['nearest_acc']:.3f} -> {r['eval_end']['nearest_acc']:.3f}")
    for drafter in ("stage_a", "stage_c"):
        r = report.get(f"decode_{drafter}")
        if not r:
            continue
        lines.append(f"  decode with the {drafter} drafter: {r['prompts']} held-out prompts, "
                     f"{r['decode']['num_candidates']} candidates x {r['block_len']} tokens: tau {r['tau']:.2f} "
                     f"tokens/cycle {r['tau_histogram']}; {r['spec_tok_s']:.1f} tok/s vs "
                     f"{r['baseline_tok_s']:.1f} autoregressive = {r['speedup']:.2f}x; "
                     f"outputs equal to greedy decoding: {r['greedy_outputs']}")
        ms = r["cycle_ms"]
        lines.append(f"            one cycle: draft {ms['draft_s']:.0f} ms, verify {ms['verify_s']:.0f} ms, advance "
                     f"{ms['advance_s']:.0f} ms ({r['device']})")
    return "\n".join(lines)
