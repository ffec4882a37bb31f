"""The other drafters for real, on 2 gloo ranks: a prefix-state DiT through Stage A and Stage C (verifier
partitioned by ZeRO-3), and the autoregressive baseline; each export then decodes exactly."""

import json

import torch
from conftest import TINY, run_cli
from dsruns import SEED, records, write_config

from clsd_ds.ar_drafter import load_ar
from clsd_ds.graft import load_drafter
from clsd_ds.infer.ar_decoder import ARSpeculativeDecoder
from clsd_ds.infer.decoder import DecodeConfig, SpeculativeDecoder
from clsd_ds.verifier import Verifier, VerifierConfig


def greedy_check(decoder, prompt_len: int = 70, n: int = 24) -> None:
    """The decoder's output equals greedy decoding by full forwards (float64: no near-ties)."""
    lm = decoder.lm
    prompt = torch.randint(0, TINY["vocab_size"], (prompt_len,), generator=torch.Generator().manual_seed(0)).tolist()
    out, _ = decoder.generate(prompt, max_cycles=n)
    text = list(prompt)
    with torch.no_grad():
        for _ in range(len(out)):
            text.append(int(lm(torch.tensor([text])).logits[0, -1].argmax()))
    assert out == text[len(prompt):]


def float64_verifier() -> Verifier:
    verifier = Verifier.load(VerifierConfig(random_init=TINY), seed=SEED)
    verifier.lm.double()
    return verifier


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

    verifier = float64_verifier()
    dit = load_drafter(tmp_path / "c", verifier).double()
    greedy_check(SpeculativeDecoder(verifier.lm, dit, DecodeConfig(num_candidates=4, max_new_tokens=24)))


def test_ar_drafter_trains_and_decodes_greedily(shards, tmp_path):
    cfg = write_config(tmp_path / "ar.yaml", tmp_path / "ar", shards, stage="ar", train__steps=8,
                       ar__block_len=6)
    run_cli(["train", "--config", str(cfg)], nproc=2)
    evals, last = records(tmp_path / "ar", "eval"), records(tmp_path / "ar")[8]
    assert evals[8]["loss"] < evals[0]["loss"] and all(e["tau"] >= 1 for e in evals.values())
    assert {"reg", "ce", "accuracy"} <= set(last)
    verifier = float64_verifier()
    drafter = load_ar(tmp_path / "ar" / "export", torch.float64)
    greedy_check(ARSpeculativeDecoder(verifier.lm, drafter, DecodeConfig(num_candidates=3, max_new_tokens=24)))
