"""What ships beside the code: configs that load, DeepSpeed JSONs the trainer accepts, scripts that parse,
and a README that documents every configuration field."""

import dataclasses
import subprocess

import pytest
from conftest import REPO

from clsd_ds.config import load_config
from clsd_ds.data.writer import PrepareConfig
from clsd_ds.shipped import PACKAGE
from clsd_ds.train.loop import OptimConfig, build_ds_config
from clsd_ds.train.run import RunConfig


@pytest.mark.parametrize("name", ["stage_a_9b.yaml", "stage_c_9b.yaml", "prepare_numina.yaml"])
def test_configs_load(name):
    cls = PrepareConfig if name.startswith("prepare") else RunConfig
    cfg = load_config(cls, f"configs/{name}")  # the shipped name, from any directory
    if name == "stage_a_9b.yaml":
        assert cfg.dit.num_layers == 12 and cfg.dit.block_len == 128 and cfg.train.batch_size == 32
        assert cfg.optim.lr == 1e-4
    if name == "stage_c_9b.yaml":
        assert cfg.stage == "c" and cfg.init_from and cfg.stage_c.beta_start == 0.1


@pytest.mark.parametrize("path", sorted((PACKAGE / "ds_configs").glob("*.json")), ids=lambda p: p.name)
def test_ds_configs_are_accepted(path):
    cfg, _ = build_ds_config(str(path), OptimConfig(), 32, 4, 1)
    assert cfg["train_batch_size"] == 32 and "zero_optimization" in cfg


@pytest.mark.parametrize("path", sorted([*(REPO / "launch").glob("*.sh"), *(REPO / "slurm").glob("*.sh"),
                                         REPO / ".ci" / "run"]), ids=lambda p: p.name)
def test_scripts_parse(path):
    subprocess.run(["bash", "-n", str(path)], check=True)


def test_readme_documents_every_field():
    readme = (REPO / "README.md").read_text()
    run = RunConfig()
    missing = []
    for section in dataclasses.fields(RunConfig):
        value = getattr(run, section.name)
        if dataclasses.is_dataclass(value):
            missing += [f"{section.name}.{f.name}" for f in dataclasses.fields(value)
                        if f"{section.name}.{f.name}" not in readme]
        elif f"`{section.name}`" not in readme:
            missing.append(section.name)
    missing += [f.name for f in dataclasses.fields(PrepareConfig)
                if f"`{f.name}`" not in readme and f"`{f.name}.*`" not in readme]
    assert not missing, f"README lacks: {missing}"
