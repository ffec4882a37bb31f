"""Prefix-state conditioning for real: Stage A and then Stage C (verifier partitioned by ZeRO-3) on 2 gloo ranks,
and the exported drafter decoding exactly."""

import json

import torch
from conftest import TINY, run_cli
from dsruns import SEED, records, write_config

from clsd_ds.graft import load_drafter
from clsd_ds.infer.decoder import DecodeConfig, SpeculativeDecoder
from clsd_ds.verifier import Verifier, VerifierConfig


def test_prefix_state_drafter_trains_in_both_stages_and_decodes_greedily(shards, tmp_path):
    a_cfg = write_config(tmp_path / "a.yaml", tmp_path / "a", shards, dit__prefix_state=True, train__steps=8)
    run_cli(["train", "--config", str(a_cfg)], nproc=2)
    a_evals = records(tmp_path / "a", "eval")
    assert a_evals[8]["loss"] < a_evals[0]["loss"] and all(e["tau"] >= 1 for e in a_evals.values())
    c_cfg = write_config(tmp_path / "c.yaml", tmp_path / "c", shards, stage="c", init_from=str(tmp_path / "a"),
                         stage_c__placement="zero3", train__steps=4, train__save_every=4)
    run_cli(["train", "--config", str(c_cfg)], nproc=2)
    c_evals = records(tmp_path / "c", "eval")
    assert c_evals[4]["ce"] < c_evals[0]["ce"] and c_evals[4]["tau"] >= 1
    exported = json.loads((tmp_path / "c" / "export" / "dit_config.json").read_text())
    assert exported["dit"]["prefix_state"] is True  # the architecture came from the Stage A run

    verifier = Verifier.load(VerifierConfig(random_init=TINY), seed=SEED)
    dit = load_drafter(tmp_path / "c", verifier).double()
    verifier.lm.double()  # float64: no near-ties between the cached and the full forward's rounding
    prompt = torch.randint(0, TINY["vocab_size"], (70,), generator=torch.Generator().manual_seed(0)).tolist()
    out, _ = SpeculativeDecoder(verifier.lm, dit, DecodeConfig(num_candidates=4, max_new_tokens=24)).generate(prompt)
    text = list(prompt)
    with torch.no_grad():
        for _ in range(24):
            text.append(int(verifier.lm(torch.tensor([text])).logits[0, -1].argmax()))
    assert out == text[len(prompt):]
