"""clsd-ds distill: the distilled blocks are the verifier's own greedy continuations of the prefixes, written by 2
ranks (torchrun), resumable shard by shard; sampling is seeded."""

import json

import torch
import webdataset as wds
from conftest import greedy, run_cli

from clsd_ds.data.format import Manifest, decode_sample
from clsd_ds.verifier import Verifier, VerifierConfig


def _samples(directory, name):
    return [decode_sample(r) for r in wds.tarfile_samples([{"url": str(directory / name)}])]


def test_distilled_blocks_are_the_verifiers_greedy_continuations(shards, verifier_dir, tmp_path):
    out = tmp_path / "distilled"
    args = ["distill", f"input={shards / 'train'}", f"out={out}", f"verifier.path={verifier_dir}", "batch_size=7"]
    run_cli(args, nproc=2)
    source, made = Manifest.read(shards / "train"), Manifest.read(out)
    assert made.samples == source.samples and made.fields == ["prefix", "block"] and made.block_len == source.block_len
    lm = Verifier.load(VerifierConfig(path=str(verifier_dir))).lm
    for shard in (source.shards[0], source.shards[-1]):  # one of each rank
        original, distilled = _samples(shards / "train", shard.name), _samples(out, shard.name)
        assert [s["__key__"] for s in distilled] == [s["__key__"] for s in original]
        for a, b in list(zip(original, distilled))[:6]:
            assert torch.equal(a["prefix"], b["prefix"])
            assert b["block"].tolist() == greedy(lm, a["prefix"].tolist(), source.block_len)
    # a preempted run: one shard and the manifest lost; the rerun redoes only that shard, sample for sample
    victim = source.shards[1].name
    before = _samples(out, victim)
    (out / victim).unlink()
    (out / "manifest.json").unlink()
    again = run_cli(args, nproc=1)
    after = _samples(out, victim)
    assert [s["__key__"] for s in after] == [s["__key__"] for s in before]
    assert all(torch.equal(a["block"], b["block"]) and torch.equal(a["prefix"], b["prefix"]) for a, b in
               zip(after, before))
    assert Manifest.read(out).samples == source.samples
    summary = json.loads(again.stdout[again.stdout.index("{"):])
    assert (summary["written_by_rank0"], summary["skipped_by_rank0"]) == (1, len(source.shards) - 1)
    assert json.loads((out / "distill.json").read_text())["mode"] == "greedy"


def test_sampled_continuations_are_seeded(shards, verifier_dir, tmp_path):
    runs = []
    for name in ("a", "b"):
        run_cli(["distill", f"input={shards / 'train'}", f"out={tmp_path / name}", f"verifier.path={verifier_dir}",
                 "mode=sample", "max_shards=1", "seed=3"], nproc=1)
        runs.append([s["block"] for s in _samples(tmp_path / name, Manifest.read(tmp_path / name).shards[0].name)])
    assert all(torch.equal(a, b) for a, b in zip(*runs)) and len(runs[0]) == len(runs[1])
    name = Manifest.read(tmp_path / "a").shards[0].name
    sampled, original = _samples(tmp_path / "a", name), _samples(shards / "train", name)
    assert Manifest.read(tmp_path / "a").samples == Manifest.read(shards / "train").shards[0].samples
    assert any(not torch.equal(s["block"], o["block"]) for s, o in zip(sampled, original))
