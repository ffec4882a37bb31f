"""Speculative decoding with the quickstart's drafters: both readings of the drafts, and the AR baselines.

    python bench/decode.py [--run runs/quickstart] [--prompts 4] [--candidates 16] [--tokens 32] [--out FILE]

For the CLSD and the AR drafter of a finished quickstart, ``eval`` (exact mode), the CLSD drafter also with
``decode.reading: verifier`` and with lattice candidates; the CLSD drafter under the lossy ``guillotine`` rule at
three thresholds (how many leading tokens stay the verifier's greedy text); then both autoregressive baselines on
the same prompts: the static-cache loop (what ``eval`` compares against by default) and HF's cached ``generate``.
(Before 2026-12-02 the quickstart trained the seed's Stage A and Stage C drafters, which this script decoded with
the ``nearest`` and ``verifier`` readings: bench/results/cpu-2026-11-23-decode_quickstart.json.)
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import date
from pathlib import Path

import torch


from clsd_ds.infer.decoder import DecodeConfig
from clsd_ds.infer.autoregressive import Autoregressive
from clsd_ds.infer.evaluate import EvalConfig, evaluate, shard_prompts
from clsd_ds.verifier import Verifier, VerifierConfig


def time_baselines(verifier_dir: Path, prompts: list[list[int]], n: int) -> dict:
    """tokens/s of each AR baseline over the prompts (after one warm-up prompt), and whether they agree."""
    lm = Verifier.load(VerifierConfig(path=str(verifier_dir)), dtype=torch.float32, device=torch.device("cpu")).lm
    result, outputs = {}, {}
    for kind in ("static", "generate"):
        ar = Autoregressive(lm, kind, max(map(len, prompts)) + n)
        ar.decode(prompts[0], n)
        runs = [ar.decode(p, n) for p in prompts]
        outputs[kind] = [tokens for tokens, _ in runs]
        result[f"{kind}_tok_s"] = len(prompts) * n / sum(seconds for _, seconds in runs)
    result["same_tokens"] = outputs["static"] == outputs["generate"]
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default="runs/quickstart")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--candidates", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--out", default=f"bench/results/cpu-{date.today()}-decode_quickstart.json")
    args = ap.parse_args()
    root = Path(args.run)
    verifier_dir, prompts_dir = root / "verifier" / "export", root / "shards_tokens" / "val"
    runs = {}
    # a drafter trained from the mask input drafts one block: its N > 1 candidates are the lattice's
    fixed = json.loads((root / "clsd" / "export" / "dit_config.json").read_text())["flow"].get("source") == "mask"
    many = "lattice" if fixed else "noise"
    cells = [("clsd", "auto", "noise", 1), ("clsd", "auto", "noise", args.candidates),
             ("clsd", "auto", "lattice", args.candidates), ("clsd", "verifier", "noise", args.candidates),
             ("ar", "auto", "noise", 1), ("ar", "auto", "noise", args.candidates)]
    cells = [c for c in cells if not (fixed and c[0] == "clsd" and c[2] == "noise" and c[3] > 1)]
    for drafter, reading, candidates, n in cells:
        name = f"{drafter}_{reading}_{candidates}_n{n}"
        result = evaluate(EvalConfig(
            verifier=VerifierConfig(path=str(verifier_dir)), drafter=str(root / drafter), prompts=str(prompts_dir),
            num_prompts=args.prompts, out=f"/tmp/bench_decode/{name}", device="cpu",
            decode=DecodeConfig(num_candidates=n, candidates=candidates, max_new_tokens=args.tokens,
                                reading=reading)))
        runs[name] = {k: v for k, v in result.items() if k != "per_prompt"}
        print(name, f"tau {result['tau']:.2f}", f"speedup {result['speedup']:.3f}", flush=True)
    for threshold in (0.05, 0.2, 0.5):  # the lossy rule: how long the outputs stay on the greedy text
        result = evaluate(EvalConfig(
            verifier=VerifierConfig(path=str(verifier_dir)), drafter=str(root / "clsd"), prompts=str(prompts_dir),
            num_prompts=args.prompts, out=f"/tmp/bench_decode/guillotine_{threshold}", device="cpu",
            decode=DecodeConfig(num_candidates=args.candidates, candidates=many, max_new_tokens=args.tokens,
                                acceptance="guillotine", threshold=threshold)))
        runs[f"clsd_guillotine_{threshold}"] = {k: v for k, v in result.items() if k != "per_prompt"}
        print("guillotine", threshold, f"tau {result['tau']:.2f}", f"same as greedy {result['same_as_baseline']}",
              f"agrees for {result['agrees_for_mean']:.1f} tokens", flush=True)
    baselines = time_baselines(verifier_dir, shard_prompts(str(prompts_dir), args.prompts), args.tokens)
    print(baselines)
    report = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                         f"PyTorch {torch.__version__}",
              "what": "eval (exact) of the quickstart drafters with both readings; AR baselines on the same prompts",
              "runs": runs, "ar_baselines": baselines}
    Path(args.out).write_text(json.dumps(report, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
