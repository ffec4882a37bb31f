"""Experiment (2026-12-02): the draft-tree lattice against the single-branch lattice, on the trained drafters of
``bench/drafter_levers.py`` (runs/levers): exact rule, K 16, N 4, the same 32 held-out prompts x 64 tokens.

    python bench/lattice_tree_eval.py tree clsd_many_mask_8x clsd_many_mask ...

Prints each drafter's tau next to the cached single-branch cell of the levers run."""

import json
import sys
from pathlib import Path
from clsd_ds.infer.decoder import DecodeConfig
from clsd_ds.infer.evaluate import EvalConfig, evaluate
from clsd_ds.verifier import VerifierConfig
root, tag = Path("runs/levers"), sys.argv[1]
out = {}
for name in sys.argv[2:]:
    r = evaluate(EvalConfig(verifier=VerifierConfig(path=str(root / "verifier" / "export")),
                            drafter=str(root / name), prompts=str(root / "tokens" / "val"), num_prompts=32,
                            out=str(root / f"eval_tree_{tag}" / name),
                            device="cpu", decode=DecodeConfig(num_candidates=4, candidates="lattice", block_len=16,
                                                              max_new_tokens=64, acceptance="exact", temperature=1.0)))
    old = json.loads((root / "eval_32x64" / f"{name}_exact_n4_lattice" / "eval.json").read_text())
    out[name] = {"tau": r["tau"], "cached": old["tau"], "greedy": r["greedy_outputs"], "hist": r["tau_histogram"]}
    print(name, round(r["tau"], 3), "cached", round(old["tau"], 3), r["greedy_outputs"], flush=True)
(root / f"eval_tree_{tag}.json").write_text(json.dumps(out, indent=1))
