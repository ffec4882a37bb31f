"""Configuration loading and the errors a user sees for bad input."""

import pytest
from conftest import run_cli

from clsd_ds.config import ConfigError, load_config
from clsd_ds.train.ds_config import build_ds_config, micro_batching
from clsd_ds.train.loop import OptimConfig
from clsd_ds.train.run import RunConfig
from clsd_ds.verifier import Verifier, VerifierConfig


def _write(tmp_path, text, name="c.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_json_and_overrides(tmp_path):
    y = _write(tmp_path, "optim:\n  lr: 3.0e-4\ntrain:\n  steps: 7\ndata:\n  train: /x\nverifier:\n  path: /v\n")
    cfg = load_config(RunConfig, y, ["train.steps=9", "dit.layers=[0, 3]", "optim.lr=1e-3"])
    assert (cfg.train.steps, cfg.dit.layers, cfg.optim.lr) == (9, [0, 3], 1e-3)
    j = _write(tmp_path, '{"data": {"train": "/x"}, "verifier": {"path": "/v"}, "seed": 4}', "c.json")
    assert load_config(RunConfig, j).seed == 4


def test_wrong_type_names_file_and_field(tmp_path):
    y = _write(tmp_path, "data: {train: /x}\nverifier: {path: /v}\ntrain:\n  steps: many\n")
    with pytest.raises(ConfigError, match=r"c.yaml: field 'train.steps': expected int, got 'many'"):
        load_config(RunConfig, y)
    with pytest.raises(ConfigError, match=r"field 'flow.t_sampling': expected one of 'uniform', 'logit_normal'"):
        load_config(RunConfig, y, ["train.steps=3", "flow.t_sampling=cosine"])


def test_unknown_field_suggests(tmp_path):
    y = _write(tmp_path, "data: {train: /x}\nverifier: {path: /v}\noptim:\n  learning_rate: 1\n")
    with pytest.raises(ConfigError, match="unknown field 'optim.learning_rate'"):
        load_config(RunConfig, y)
    with pytest.raises(ConfigError, match=r"did you mean 'train.steps'"):
        load_config(RunConfig, None, ["data.train=/x", "verifier.path=/v", "train.step=3"])


def test_missing_file_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="config file '.*nope.yaml' names no file; looked for .*nope.yaml"):
        load_config(RunConfig, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(RunConfig, None, ["train.steps"])


def test_verifier_path_errors(tmp_path):
    with pytest.raises(ConfigError, match="verifier.path: directory '/no/such/dir' does not exist"):
        Verifier.load(VerifierConfig(path="/no/such/dir"))
    with pytest.raises(ConfigError, match="if it is a hub id: clsd-ds never downloads"):
        Verifier.load(VerifierConfig(path="Qwen/Qwen3.5-9B"))
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ConfigError, match="model_type 'llama'; expected one of qwen3_5_text, qwen3_5"):
        Verifier.load(VerifierConfig(path=str(tmp_path)))
    with pytest.raises(ConfigError, match="set exactly one of 'verifier.path'"):
        load_config(RunConfig, None, ["data.train=/x"])


def test_batch_arithmetic_and_ds_config_ownership(tmp_path):
    assert micro_batching(32, None, 8) == (4, 1)
    assert micro_batching(32, 2, 8) == (2, 2)
    with pytest.raises(ConfigError, match="train.batch_size=32 is not a multiple"):
        micro_batching(32, 3, 2)
    ds = _write(tmp_path, '{"train_batch_size": 8, "zero_optimization": {"stage": 3}}', "ds.json")
    with pytest.raises(ConfigError, match="train_batch_size must not be set here"):
        build_ds_config(str(ds), OptimConfig(), 32, 4, 1)
    off = _write(tmp_path, '{"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}', "o.json")
    cfg, use_ds = build_ds_config(str(off), OptimConfig(), 32, 4, 1)
    assert use_ds and cfg["optimizer"]["type"] == "AdamW" and cfg["gradient_accumulation_steps"] == 1
    with pytest.raises(ConfigError, match="offloads the optimizer"):
        build_ds_config(str(off), OptimConfig(backend="torch"), 32, 4, 1)


def test_cli_reports_errors_without_traceback(tmp_path):
    proc = run_cli(["train", "data.train=" + str(tmp_path), "verifier.path=/no/dir"], launcher="none", check=False)
    assert proc.returncode == 2
    assert "error: verifier.path: directory '/no/dir' does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
