"""import-seed: embedding safetensors -> shards, token ids recovered by exact row match."""

import json

import pytest
import torch
from safetensors.torch import save_file
from test_data import all_samples

from clsd_ds.config import ConfigError
from clsd_ds.data.format import Manifest
from clsd_ds.data.seed_import import ImportConfig, import_seed
from clsd_ds.verifier import Verifier, VerifierConfig


@pytest.fixture(scope="module")
def seed_files(verifier_dir, tmp_path_factory):
    """Two files shaped like the seed's [N, K, d] bf16 chunks, one chunk with a perturbed row."""
    out = tmp_path_factory.mktemp("seed")
    E = Verifier.load(VerifierConfig(path=str(verifier_dir)), dtype=torch.bfloat16).lm.get_input_embeddings().weight
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 300, (2, 5, 16), generator=g)
    for f in range(2):
        chunks = E[ids[f]].detach().clone()
        if f == 1:
            chunks[3, 7] += 0.5  # not a row of the matrix any more
        save_file({"embeddings": chunks}, str(out / f"batch_{f}.safetensors"))
    return out, ids


def test_tokens_mode_recovers_ids_and_reports_the_rest(seed_files, verifier_dir, tmp_path):
    src, ids = seed_files
    stats = import_seed(ImportConfig(input=[str(src / "*.safetensors")], out=str(tmp_path / "o"),
                                     verifier=VerifierConfig(path=str(verifier_dir))), log=lambda *_: None)
    assert (stats["chunks"], stats["written"], stats["unrecovered"]) == (10, 9, 1)
    report = [json.loads(line) for line in (tmp_path / "o" / "unrecovered.jsonl").open()]
    assert report == [{"file": str(src / "batch_1.safetensors"), "index": 3, "unmatched_rows": [7], "unmatched": 1}]
    samples = all_samples(tmp_path / "o")
    expected = [ids[f, i] for f in range(2) for i in range(5) if (f, i) != (1, 3)]
    assert [s["block"].tolist() for s in samples] == [e.tolist() for e in expected]
    assert all(s["prefix"].tolist() == [0] for s in samples)  # the document-start token (EOS) as the only context


def test_embeddings_mode_keeps_every_chunk(seed_files, verifier_dir, tmp_path):
    src, _ = seed_files
    import_seed(ImportConfig(input=[str(src / "batch_1.safetensors")], out=str(tmp_path / "e"), mode="embeddings",
                             verifier=VerifierConfig(path=str(verifier_dir))), log=lambda *_: None)
    m = Manifest.read(tmp_path / "e")
    assert m.fields == ["prefix", "emb"] and m.samples == 5 and m.hidden_size == 64
    from safetensors.torch import load_file

    chunks = load_file(str(src / "batch_1.safetensors"))["embeddings"]
    from clsd_ds.data.reader import ShardStream

    got = torch.cat([b["emb"] for b in ShardStream(tmp_path / "e", 5, shuffle=False, infinite=False)])
    assert got.dtype == torch.bfloat16 and torch.equal(got, chunks)


def test_wrong_shape_is_named(verifier_dir, tmp_path):
    save_file({"x": torch.zeros(2, 16, 32, dtype=torch.bfloat16)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ConfigError, match=r"bad.safetensors: tensor 'x' has shape \[2, 16, 32\]; expected "
                                          r"\[N, block_len, 64\]"):
        import_seed(ImportConfig(input=[str(tmp_path / "bad.safetensors")], out=str(tmp_path / "o"),
                                 verifier=VerifierConfig(path=str(verifier_dir))))
