"""What ships beside the code: configs that load, DeepSpeed JSONs the trainer accepts, scripts that parse.
(That the docs document every configuration field is tests/test_docs.py.)"""

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import REPO

from clsd_ds.config import ConfigError, load_config
from clsd_ds.data.writer import PrepareConfig
from clsd_ds.data.distill import DistillConfig
from clsd_ds.shipped import PACKAGE
from clsd_ds.train.ds_config import build_ds_config, read_ds_config
from clsd_ds.train.loop import OptimConfig
from clsd_ds.shadow.primary import PrimaryConfig
from clsd_ds.train.run import RunConfig


@pytest.mark.parametrize("name", sorted(p.name for p in (PACKAGE / "configs").glob("*.yaml")))
def test_configs_load(name):
    cls = {"prepare": PrepareConfig, "distill": DistillConfig}.get(name.split("_")[0], RunConfig)
    cls = PrimaryConfig if name.startswith("shadow_primary") else cls
    cfg = load_config(cls, f"configs/{name}")  # the shipped name, from any directory
    cfg.validate()
    if name == "stage_a_9b.yaml":
        assert cfg.dit.num_layers == 12 and cfg.dit.block_len == 128 and cfg.train.batch_size == 32
        assert cfg.optim.lr == 1e-4
    if name == "stage_c_9b.yaml":
        assert cfg.stage == "c" and cfg.init_from and cfg.stage_c.beta_start == 0.1
    if name == "shadow_trainer_9b.yaml":
        assert cfg.stage == "shadow" and cfg.init_from and cfg.train.save_every == 20
    if name == "shadow_primary_9b.yaml":
        assert cfg.decode.acceptance == "guillotine" and cfg.decode.num_candidates == 1 and cfg.rollouts == 8
    if name == "stage_a_recipe_9b.yaml":
        assert cfg.dit.prefix_state and cfg.flow.anchor and cfg.flow.objective == "tokens" and cfg.flow.euler_steps == 1
        assert cfg.flow.source == "mask" and cfg.flow.reveal == 0.5


@pytest.mark.parametrize("path", sorted((PACKAGE / "ds_configs").glob("*.json")), ids=lambda p: p.name)
def test_ds_configs_are_accepted(path):
    cfg, _ = build_ds_config(str(path), OptimConfig(), 32, 4, 1)
    assert cfg["train_batch_size"] == 32 and "zero_optimization" in cfg


@pytest.mark.parametrize("path", sorted([*(REPO / "launch").glob("*.sh"), *(REPO / "slurm").glob("*.sh"),
                                         REPO / ".ci" / "run"]), ids=lambda p: p.name)
def test_scripts_parse(path):
    subprocess.run(["bash", "-n", str(path)], check=True)



def test_shipped_names_resolve_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert read_ds_config("ds_configs/cpu_zero3.json")["zero_optimization"]["stage"] == 3
    assert load_config(RunConfig, "configs/stage_a_9b.yaml").dit.num_layers == 12
    (tmp_path / "ds_configs").mkdir()  # a file of that name here is taken first: the path as given wins
    (tmp_path / "ds_configs" / "cpu_zero3.json").write_text('{"zero_optimization": {"stage": 1}}')
    assert read_ds_config("ds_configs/cpu_zero3.json")["zero_optimization"]["stage"] == 1


def test_a_name_that_finds_nothing_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        read_ds_config("ds_configs/zero9.json")
    message = str(err.value)
    assert f"train.ds_config 'ds_configs/zero9.json' names no file; looked for {tmp_path}/ds_configs/zero9.json and " \
           f"{PACKAGE}/ds_configs/zero9.json" in message and "zero3_bf16.json" in message  # and what is shipped
    with pytest.raises(ConfigError, match="config file '/nowhere/x.yaml' names no file; looked for /nowhere/x.yaml "
                                          "\\(shipped files are named ds_configs/NAME or configs/NAME\\)"):
        load_config(RunConfig, "/nowhere/x.yaml")


def test_the_console_command_reads_shipped_files_from_elsewhere(tmp_path):
    """The installed ``clsd-ds`` command, run outside the repository: help, and a command that reads a shipped
    DeepSpeed config (doctor checks what the shipped Stage A config needs)."""
    command = Path(sys.executable).parent / "clsd-ds"
    done = subprocess.run([command, "quickstart", "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0 and "--config" in done.stdout, done.stderr
    done = subprocess.run([command, "doctor", "--json", "--config", "configs/stage_a_9b.yaml"], cwd=tmp_path,
                          capture_output=True, text=True)
    report = json.loads(done.stdout)
    assert "ds_configs/zero3_bf16.json" in json.dumps(report)  # the shipped DeepSpeed JSON named by that config


def test_pyproject_ranges_admit_the_pinned_stack():
    """requirements.txt pins the verified stack; pyproject.toml's dependency ranges must admit every pin."""
    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            pins[req.name.lower()] = next(iter(req.specifier)).version
    deps = [Requirement(d) for d in project["dependencies"]] + \
           [Requirement(d) for extra in project["optional-dependencies"].values() for d in extra]
    assert project["requires-python"] == ">=3.11"
    for dep in deps:
        assert dep.name.lower() in pins, f"{dep.name} is a dependency but not pinned in requirements.txt"
        assert dep.specifier.contains(pins[dep.name.lower()]), f"{dep} does not admit the pinned {pins[dep.name]}"
    assert {d.name.lower() for d in deps} | {"pytest"} >= set(pins) - {"pytest"}
