"""Shards: what prepare-data writes, and how the reader splits, orders, resumes and fails."""

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections import Counter
from itertools import islice
from pathlib import Path

import psutil
import pytest
import torch
from conftest import BLOCK, PREFIX, make_shards
from torch.utils.data import DataLoader

from clsd_ds.config import ConfigError
from clsd_ds.data.format import MANIFEST, Manifest, ShardError
from clsd_ds.data.reader import DataConfig, ShardLoader, ShardStream
from clsd_ds.data.writer import PrepareConfig, prepare_data
from clsd_ds.verifier import Verifier, VerifierConfig, load_tokenizer


def all_samples(directory) -> list[dict]:
    """Every sample of a directory once, in file order."""
    out = []
    for batch in ShardStream(directory, 1, shuffle=False, infinite=False):
        out.append({"key": batch["keys"][0], "prefix": batch["prefix"][0, :batch["prefix_len"][0]],
                    **{k: batch[k][0] for k in ("block", "cond") if k in batch}})
    return out


def test_blocks_tile_every_document_exactly(shards, corpus, tokenizer_dir):
    tok = load_tokenizer(str(tokenizer_dir))
    eos = tok.eos_token_id
    docs = [tok(json.loads(line)["text"], add_special_tokens=False)["input_ids"] for line in corpus.open()]
    samples = all_samples(shards / "train") + all_samples(shards / "val")
    by_doc: dict[int, dict[int, dict]] = {}
    for s in samples:
        doc, blk = map(int, s["key"].split("_"))
        by_doc.setdefault(doc, {})[blk] = s
    assert sorted(by_doc) == list(range(len(docs)))  # every document, once, in one split
    for d, blocks in by_doc.items():
        full = [eos] + docs[d] + [eos]  # Qwen-style: no BOS, documents open with EOS
        assert sorted(blocks) == list(range(len(blocks)))
        tokens = torch.cat([blocks[k]["block"] for k in range(len(blocks))]).tolist()
        assert tokens[:len(full) - 1] == full[1:]
        assert set(tokens[len(full) - 1:]) <= {eos}  # the last block is padded with EOS
        for k, s in blocks.items():
            start = 1 + k * BLOCK
            assert s["prefix"].tolist() == full[max(0, start - PREFIX):start]


def test_manifest_reports_bytes_per_sample(shards):
    for split in ("train", "val"):
        m = Manifest.read(shards / split)
        on_disk = sum((shards / split / s.name).stat().st_size for s in m.shards)
        assert m.bytes == on_disk and m.samples == len(all_samples(shards / split))
        assert m.bytes_per_sample == pytest.approx(on_disk / m.samples)
        assert json.loads((shards / split / MANIFEST).read_text())["bytes_per_sample"] == round(on_disk / m.samples, 1)


def test_vocabulary_check_names_the_split_and_both_sizes(shards):
    m = Manifest.read(shards / "train")
    m.check_vocab(m.vocab_size, "data.train")  # ids fit: no error
    with pytest.raises(ConfigError, match=rf"^data.train: shards use a vocabulary of {m.vocab_size} tokens, "
                                          rf"the verifier has {m.vocab_size - 1}$"):
        m.check_vocab(m.vocab_size - 1, "data.train")


def epoch0_keys(directory, rank, world, workers, reads) -> list[str]:
    stream = ShardStream(directory, 1, rank, world, workers, seed=5)
    keys = []
    for batch in islice(DataLoader(stream, batch_size=None, num_workers=workers), reads):
        if batch["meta"]["position"][0] == 0:
            keys.append(batch["keys"][0])
    return keys


@pytest.mark.parametrize("shard_samples", [60, 250])  # 60: >= 4 shards (split by shard); 250: < 4 (by sample)
def test_two_ranks_two_workers_read_each_sample_once_per_epoch(workdir, tokenizer_dir, shard_samples):
    out = workdir / f"split_{shard_samples}"
    if not out.exists():
        make_shards(out, tokenizer_dir, shard_samples=shard_samples, val_fraction=0.0)
    m = Manifest.read(out / "train")
    assert (len(m.shards) >= 4) == (shard_samples == 60)
    keys = [k for rank in (0, 1) for k in epoch0_keys(out / "train", rank, 2, 2, reads=m.samples)]
    counts = Counter(keys)
    assert max(counts.values()) == 1
    assert set(counts) == {s["key"] for s in all_samples(out / "train")}


def _batches(loader, n):
    return [(b["keys"], b["block"]) for b in islice(loader, n)]


def test_order_is_fixed_by_the_seed(shards):
    cfg = DataConfig(train=str(shards / "train"), num_workers=2, seed=7)
    a = _batches(ShardLoader(cfg, cfg.train, 4, 1, 2), 12)
    b = _batches(ShardLoader(cfg, cfg.train, 4, 1, 2), 12)
    c = _batches(ShardLoader(DataConfig(train=cfg.train, num_workers=2, seed=8), cfg.train, 4, 1, 2), 12)
    assert [k for k, _ in a] == [k for k, _ in b]
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(a, b))
    assert [k for k, _ in a] != [k for k, _ in c]


@pytest.mark.parametrize("cross_epoch", [False, True])
def test_resume_continues_exactly(shards, cross_epoch):
    cfg = DataConfig(train=str(shards / "train"), num_workers=2, seed=3)
    per_rank_batches = Manifest.read(cfg.train).samples // 2 // 4
    stop = per_rank_batches + 4 if cross_epoch else 5
    total = stop + 25
    reference = _batches(ShardLoader(cfg, cfg.train, 4, 1, 2), total)
    first = ShardLoader(cfg, cfg.train, 4, 1, 2)
    _batches(first, stop)
    state = json.loads(json.dumps(first.state_dict()))  # it travels through a checkpoint as plain data
    resumed = _batches(ShardLoader(cfg, cfg.train, 4, 1, 2, state=state), total - stop)
    assert [k for k, _ in resumed] == [k for k, _ in reference[stop:]]
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(resumed, reference[stop:]))
    assert any(p[0] >= 1 for p in state["workers"].values()) == cross_epoch


def test_dropped_loaders_do_not_hold_up_the_exit(shards):
    """Unclosed loaders let the interpreter exit, leaving no worker behind (the workers ignore SIGTERM from
    anyone but their parent, so the parent's shutdown must still end them)."""
    script = (f"import multiprocessing\n"
              f"from clsd_ds.data.reader import DataConfig, ShardLoader\n"
              f"cfg = DataConfig(train={str(shards / 'train')!r}, num_workers=2)\n"
              f"pids = set()\n"
              f"for _ in range(3):\n"
              f"    loader = ShardLoader(cfg, cfg.train, 4, 0, 1)\n"  # the last one is still alive at exit
              f"    next(loader)\n"
              f"    pids |= {{p.pid for p in multiprocessing.active_children()}}\n"
              f"print(*sorted(pids))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ))
    assert done.returncode == 0, done.stderr[-3000:]
    workers = [int(pid) for pid in done.stdout.split()]
    assert len(workers) >= 2
    alive = [pid for pid in workers if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    assert not alive


@pytest.mark.parametrize("start", ["fork", "forkserver"])
def test_a_killed_trainer_leaves_no_worker_behind(shards, start):
    """kill -9 of the training process: its workers (and a forkserver) end too, and release its output pipes, so
    a launcher or a test waiting for the process's output is not held up by orphans."""
    script = (f"import multiprocessing, os, time\n"
              f"from clsd_ds.data.reader import DataConfig, ShardLoader\n"
              f"cfg = DataConfig(train={str(shards / 'train')!r}, num_workers=2, worker_start={start!r})\n"
              f"loader = ShardLoader(cfg, cfg.train, 4, 0, 1)\n"
              f"next(loader)\n"
              f"print(*[p.pid for p in multiprocessing.active_children()], flush=True)\n"
              f"time.sleep(300)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    helpers = [int(pid) for pid in proc.stdout.readline().split()]  # the workers and, with forkserver, the server
    helpers += [c.pid for c in psutil.Process(proc.pid).children(recursive=True) if c.pid not in helpers]
    assert len(helpers) >= 2
    proc.kill()
    proc.wait()
    deadline = time.time() + 20
    while time.time() < deadline and any(_running(pid) for pid in helpers):
        time.sleep(0.2)
    assert not [pid for pid in helpers if _running(pid)]
    assert proc.stdout.read() == ""  # EOF: nobody holds the pipe any more


def _running(pid: int) -> bool:
    return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE


def test_resume_needs_the_same_layout(shards):
    cfg = DataConfig(train=str(shards / "train"), num_workers=2)
    loader = ShardLoader(cfg, cfg.train, 4, 0, 2)
    next(loader)
    with pytest.raises(ConfigError, match="2 ranks x 2 workers.*data.num_workers"):
        ShardLoader(DataConfig(train=cfg.train, num_workers=1), cfg.train, 4, 0, 2, state=loader.state_dict())


def _corrupt_copy(src: Path, dst: Path, how: str) -> str:
    shutil.copytree(src, dst)
    m = Manifest.read(dst)
    victim = dst / m.shards[1].name
    data = victim.read_bytes()
    if how == "truncate":
        victim.write_bytes(data[: len(data) // 2])
    else:  # a shard cut exactly at a sample boundary: a valid tar archive that is too short
        raw = gzip.decompress(data)
        members = tarfile.open(fileobj=io.BytesIO(raw)).getmembers()
        cut = members[len(m.fields) * (m.shards[1].samples // 2)].offset
        victim.write_bytes(gzip.compress(raw[:cut] + b"\0" * 1024))
    return victim.name


@pytest.mark.parametrize("how", ["truncate", "short"])
def test_corrupt_shard_error_names_it(shards, tmp_path, how):
    name = _corrupt_copy(shards / "train", tmp_path / "bad", how)
    cfg = DataConfig(train=str(tmp_path / "bad"), num_workers=2, shuffle=False)
    loader = ShardLoader(cfg, cfg.train, 4, 0, 1)
    with pytest.raises(ShardError, match=f"corrupt shard .*{name}"):
        for _ in range(1000):
            next(loader)


def test_corrupt_shard_skip_logs_and_counts(shards, tmp_path, caplog):
    _corrupt_copy(shards / "train", tmp_path / "bad", "truncate")
    m = Manifest.read(tmp_path / "bad")
    cfg = DataConfig(train=str(tmp_path / "bad"), num_workers=0, shuffle=False, on_corrupt="skip")
    loader = ShardLoader(cfg, cfg.train, 1, 0, 1)
    keys = [next(loader)["keys"][0] for _ in range(m.samples - m.shards[1].samples)]
    assert loader.skipped_shards == 1
    assert "corrupt shard" in caplog.text and "skipped" in caplog.text
    good = {s["key"] for i, sh in enumerate(m.shards) if i != 1 for s in all_samples_of_shard(tmp_path / "bad", sh)}
    assert set(keys) == good


def all_samples_of_shard(directory, shard):
    import webdataset as wds

    return [{"key": r["__key__"]} for r in wds.tarfile_samples([{"url": str(directory / shard.name)}])]


def test_precomputed_cond_is_the_verifier_state_before_each_block(workdir, verifier_dir, corpus):
    out = workdir / "cond_shards"
    summary = make_shards(out, verifier_dir, cond=True, cond_dtype="float32",
                          verifier=VerifierConfig(path=str(verifier_dir)), tokenizer=None)
    assert Manifest.read(out / "train").fields == ["prefix", "block", "cond"]
    assert summary["train"]["bytes_per_sample"] > 0
    verifier = Verifier.load(VerifierConfig(path=str(verifier_dir)))
    tok = load_tokenizer(str(verifier_dir))
    docs = [tok(json.loads(line)["text"], add_special_tokens=False)["input_ids"] for line in corpus.open()]
    checked_online = 0
    for s in all_samples(out / "train")[:40]:
        d, k = map(int, s["key"].split("_"))
        full = torch.tensor([[tok.eos_token_id] + docs[d] + [tok.eos_token_id]])
        start = 1 + k * BLOCK
        expected = verifier.hidden_states(full)[0, start - 1]
        torch.testing.assert_close(s["cond"], expected, rtol=1e-4, atol=1e-4)
        if start <= PREFIX:  # the stored prefix is the whole history: online C must agree
            online = verifier.conditioning(s["prefix"][None], torch.tensor([len(s["prefix"])]))[0]
            torch.testing.assert_close(online, s["cond"], rtol=1e-4, atol=1e-4)
            checked_online += 1
    assert checked_online > 0


def test_text_template_joins_fields(tokenizer_dir, tmp_path):
    src = tmp_path / "qa.jsonl"
    src.write_text(json.dumps({"problem": "Compute 2 + 3.", "solution": "2 + 3 = 5."}) + "\n")
    prepare_data(PrepareConfig(input=[str(src)], out=str(tmp_path / "o"), tokenizer=str(tokenizer_dir),
                               text_template="{problem}\n{solution}", block_len=64, val_fraction=0.0),
                 log=lambda *_: None)
    tok = load_tokenizer(str(tokenizer_dir))
    (sample,) = all_samples(tmp_path / "o" / "train")
    text = tok.decode([t for t in sample["block"].tolist() if t != tok.eos_token_id])
    assert text == "Compute 2 + 3.\n2 + 3 = 5."


def test_bad_inputs_give_clear_errors(shards, tokenizer_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=f"shard directory '{empty}'.*empty.*manifest.json"):
        ShardStream(empty, 4)
    with pytest.raises(ConfigError, match="does not exist"):
        ShardStream(tmp_path / "nope", 4)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:2: expected a string field 'text'"):
        prepare_data(PrepareConfig(input=[str(bad)], out=str(tmp_path / "o"), tokenizer=str(tokenizer_dir)))
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o*"))  # a failed run leaves nothing behind
    with pytest.raises(ConfigError, match=r"bad.jsonl:1: text_template needs field 'problem'"):
        prepare_data(PrepareConfig(input=[str(bad)], out=str(tmp_path / "o"), tokenizer=str(tokenizer_dir),
                                   text_template="{problem}\n{solution}"))
    with pytest.raises(ConfigError, match="already exists and is not empty"):
        prepare_data(PrepareConfig(input=[str(bad)], out=str(shards), tokenizer=str(tokenizer_dir)))
    assert (shards / "train" / MANIFEST).is_file()  # nothing written was lost
