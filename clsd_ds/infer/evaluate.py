"""``eval``: speculative decoding of held-out prompts against the verifier's own decoding, on this machine.

Per prompt, the same ``max_new_tokens`` are decoded twice: by the ``SpeculativeDecoder`` and by the autoregressive
baseline (``autoregressive.py``: a static cache, CUDA-graph steps on a GPU; or HF's cached ``generate``).
Reported: τ (tokens committed per cycle) with its histogram, α_i = P(drafted token i accepted | those before it
accepted) (``acceptance.conditional_acceptance``; tokens accepted by construction excluded), tokens per verifier
call, the time split of a cycle (draft / verify / advance), tokens/s of both and the speedup. In ``exact`` mode
every output is also checked to be greedy by definition: one forward over [prompt | output] must give each output
token as the argmax before it.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from ..config import ConfigError
from ..data.reader import eval_batches
from ..graft import load_drafter
from ..verifier import Verifier, VerifierConfig
from ..ar_drafter import AR_CONFIG, load_ar
from .acceptance import conditional_acceptance
from .ar_decoder import ARSpeculativeDecoder
from .autoregressive import Autoregressive, Baseline, sync
from .decoder import DecodeConfig, DecodeStats, SpeculativeDecoder


@dataclass
class EvalConfig:
    verifier: VerifierConfig = field(default_factory=VerifierConfig)
    drafter: str = ""  # an exported DiT or AR drafter, or a run directory (its export, else its newest checkpoint)
    prompts: str = ""  # a shard directory (prepare-data's val split): each sample's prefix is a prompt
    num_prompts: int = 8
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    baseline: Literal["static", "generate", "none"] = "static"  # the AR decoding the speedup is measured against
    out: str = "eval"  # eval.json and tau_hist.png go here
    device: str = "auto"  # auto: cuda if available

    def validate(self) -> None:
        for name in ("drafter", "prompts"):
            if not getattr(self, name):
                raise ConfigError(f"field '{name}': required (see python -m clsd_ds eval --help)")
        if self.num_prompts < 1:
            raise ConfigError(f"field 'num_prompts': expected a positive integer, got {self.num_prompts}")


def shard_prompts(directory: str, limit: int) -> list[list[int]]:
    """The prefixes of the first ``limit`` samples of a shard directory, in file order."""
    return [b["prefix"][0, : int(b["prefix_len"][0])].tolist() for b in eval_batches(directory, 1, 0, 1, limit)]


@torch.no_grad()
def is_greedy(lm, prompt: list[int], out: list[int]) -> bool:
    """Each token of ``out`` is the verifier's argmax after the text before it (one teacher-forced forward)."""
    ids = torch.tensor([prompt + out], device=lm.device)
    argmax = lm(ids).logits[0, len(prompt) - 1: -1].argmax(-1)
    return argmax.tolist() == out


def run_eval(decoder: SpeculativeDecoder, prompts: list[list[int]],
             baseline: Baseline | None = "static") -> dict:
    """Decode every prompt; the measurements as a JSON-ready dict."""
    lm, cfg = decoder.lm, decoder.cfg
    ar = Autoregressive(lm, baseline, max(map(len, prompts)) + cfg.max_new_tokens) if baseline else None
    total, per_prompt, spec_s, ar_s, greedy_ok = DecodeStats(), [], 0.0, 0.0, 0
    for prompt in prompts:
        sync(lm.device)
        t = time.perf_counter()
        out, stats = decoder.generate(prompt)
        sync(lm.device)
        spec_s += time.perf_counter() - t
        total.add(stats)
        record = {"prompt_tokens": len(prompt), "tokens": len(out), "tau": stats.tau}
        if cfg.acceptance == "exact":
            record["greedy"] = is_greedy(lm, prompt, out)
            greedy_ok += record["greedy"]
        if ar:
            ar_out, seconds = ar.decode(prompt, len(out))
            ar_s += seconds
            record["same_as_baseline"] = ar_out == out
            # how far a lossy rule (guillotine) stays on the verifier's greedy text: tokens before the first change
            record["agrees_for"] = next((i for i, (a, b) in enumerate(zip(out, ar_out)) if a != b), len(out))
        per_prompt.append(record)
    tokens = sum(total.accepted)
    cycles = max(len(total.accepted), 1)
    histogram = dict(sorted(Counter(total.accepted).items()))
    result = {"decode": asdict(cfg), "block_len": decoder.K, "prompts": len(prompts), **total.summary(),
              "tau_histogram": histogram, "alpha": conditional_acceptance(histogram, decoder.given),
              "given_tokens": decoder.given,
              "cycle_ms": {k: 1000 * sum(getattr(total, k)) / cycles for k in ("draft_s", "verify_s", "advance_s")},
              "spec_tok_s": tokens / spec_s, "per_prompt": per_prompt}
    if cfg.acceptance == "exact":
        result["greedy_outputs"] = f"{greedy_ok}/{len(prompts)}"
    if ar:
        result.update(baseline=baseline, baseline_tok_s=tokens / ar_s, speedup=ar_s / spec_s,
                      same_as_baseline=f"{sum(r['same_as_baseline'] for r in per_prompt)}/{len(prompts)}",
                      agrees_for_mean=sum(r["agrees_for"] for r in per_prompt) / len(prompts))
    return result


def plot_histogram(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = result["tau_histogram"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar([int(k) for k in hist], list(hist.values()), color="tab:blue")
    ax.set_xlabel("tokens committed per cycle")
    ax.set_ylabel("cycles")
    ax.set_title(f"τ = {result['tau']:.2f} over {result['cycles']} cycles")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def load_decoder(verifier_cfg: VerifierConfig, drafter: str, decode: DecodeConfig,
                 device: str = "auto") -> SpeculativeDecoder:
    """The verifier (bf16 on a GPU, fp32 on the CPU) and its drafter, on ``device``, as a decoder: an AR drafter's
    export (``ar_drafter.json``, or a run directory holding one) or a CLSD drafter (``load_drafter``)."""
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    verifier = Verifier.load(verifier_cfg, dtype=dtype, device=dev).to(dev)
    for path in (Path(drafter), Path(drafter) / "export"):
        if (path / AR_CONFIG).is_file():
            return ARSpeculativeDecoder(verifier.lm, load_ar(path, dtype, dev), decode)
    return SpeculativeDecoder(verifier.lm, load_drafter(drafter, verifier, what="drafter").to(dev), decode)


def evaluate(cfg: EvalConfig) -> dict:
    """Load the verifier and drafter, decode the prompts, write ``eval.json`` and ``tau_hist.png`` under ``out``."""
    decoder = load_decoder(cfg.verifier, cfg.drafter, cfg.decode, cfg.device)
    prompts = shard_prompts(cfg.prompts, cfg.num_prompts)
    baseline = None if cfg.baseline == "none" else cfg.baseline
    result = run_eval(decoder, prompts, baseline)
    device = decoder.lm.device
    result["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=1))
    plot_histogram(result, out / "tau_hist.png")
    return result
