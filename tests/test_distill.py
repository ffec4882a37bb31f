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


def test_many_anchors_per_rollout_are_each_the_greedy_continuation_of_their_prefix(shards, verifier_dir, tmp_path):
    out, anchors, stride = tmp_path / "anchors", 3, 2
    run_cli(["distill", f"input={shards / 'train'}", f"out={out}", f"verifier.path={verifier_dir}", "max_shards=1",
             f"anchors={anchors}", f"anchor_stride={stride}"], nproc=1)
    source, made = Manifest.read(shards / "train"), Manifest.read(out)
    K, name = source.block_len, source.shards[0].name
    assert made.samples == anchors * source.shards[0].samples and made.shards[0].samples == made.samples
    assert made.prefix_len == source.prefix_len + (anchors - 1) * stride
    original, distilled = _samples(shards / "train", name), _samples(out, name)
    assert [s["__key__"] for s in distilled] == [f"{s['__key__']}_a{j}" for s in original for j in range(anchors)]
    lm = Verifier.load(VerifierConfig(path=str(verifier_dir))).lm
    for i, sample in enumerate(original[:3]):
        rollout = greedy(lm, sample["prefix"].tolist(), K + (anchors - 1) * stride)
        for j in range(anchors):
            made_j = distilled[i * anchors + j]
            assert made_j["prefix"].tolist() == sample["prefix"].tolist() + rollout[: j * stride]
            assert made_j["block"].tolist() == rollout[j * stride: j * stride + K]
            assert made_j["block"].tolist() == greedy(lm, made_j["prefix"].tolist(), K)  # its own prefix's
