"""The stage registry: every stage reachable from the config and the CLI, each building a task the loop can run;
τ during training decodes with the sampler the drafter is trained with."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import BLOCK, PREFIX, TINY, tiny_verifier

from clsd_ds.config import ConfigError, load_config
from clsd_ds.data.format import Manifest
from clsd_ds.flow import FlowConfig
from clsd_ds.infer.decoder import DecodeConfig
from clsd_ds.train.distributed import DistInfo
from clsd_ds.train.evaluation import Evaluator
from clsd_ds.train.loop import TrainConfig
from clsd_ds.train.run import RunConfig
from clsd_ds.train.stages import STAGES, Task

CPU = DistInfo(0, 1, 0, torch.device("cpu"))
VERIFIER = f"verifier.random_init={json.dumps(TINY)}"


def test_every_stage_is_a_cli_choice_and_in_the_help():
    help_text = subprocess.run([sys.executable, "-m", "clsd_ds", "train", "--help"], capture_output=True, text=True,
                               check=True).stdout
    choices = help_text[help_text.index("--stage {") + len("--stage {"):].split("}")[0].split(",")
    assert choices == list(STAGES)
    flat = " ".join(help_text.split())
    for stage in STAGES.values():
        assert f"{stage.name}: {stage.summary}" in flat


def test_the_config_accepts_exactly_the_registered_stages():
    base = ["data.train=/x", "verifier.random_init={}"]
    for name in STAGES:
        extra = ["init_from=/x"] if name == "shadow" else []
        assert load_config(RunConfig, None, [*base, f"stage={name}", *extra]).stage == name
    with pytest.raises(ConfigError, match="stage 'shadow' improves a trained drafter: set 'init_from'"):
        load_config(RunConfig, None, [*base, "stage=shadow"])
    with pytest.raises(ConfigError, match="field 'stage': expected one of a, c, ar, lm, shadow, got 'b'"):
        load_config(RunConfig, None, [*base, "stage=b"])
    with pytest.raises(ConfigError, match="stage 'lm' trains no drafter"):
        load_config(RunConfig, None, [*base, "stage=lm", "train.tau_prompts=2"])
    for option in ("flow.anchor=true", "flow.objective=tokens"):
        with pytest.raises(ConfigError, match="Stage C trains the seed's velocity drafter"):
            load_config(RunConfig, None, [*base, "stage=c", option])


@pytest.mark.parametrize("name", [s for s in STAGES if s != "shadow"])  # shadow reads Redis: test_shadow.py
def test_each_stage_builds_a_task_the_loop_can_run(name, generator):
    """The registry's factory gives a task with every method of the protocol; one loss on a real batch."""
    cfg = load_config(RunConfig, None, ["data.train=/x", f"stage={name}", "dit.num_layers=2",
                                        f"dit.block_len={BLOCK}", "ar.block_len=4", VERIFIER])
    task = STAGES[name].build(cfg, tiny_verifier())
    missing = [m for m in Task.__dict__ if not m.startswith("_") and m != "module" and not hasattr(task, m)]
    assert not missing and isinstance(task.module, torch.nn.Module)
    manifest = Manifest(block_len=BLOCK, prefix_len=PREFIX, fields=["prefix", "block"], vocab_size=TINY["vocab_size"])
    task.check_data(manifest, "shards")
    task.setup(CPU, torch.float32, manifest)
    batch = {"prefix": torch.randint(0, TINY["vocab_size"], (2, PREFIX), generator=generator),
             "prefix_len": torch.tensor([PREFIX, 5]),
             "block": torch.randint(0, TINY["vocab_size"], (2, BLOCK), generator=generator)}
    loss, metrics = task.loss(task.module, batch, generator, 0)
    assert torch.isfinite(loss) and "loss" in metrics and task.flops_per_token() > 0
    decoder = task.decoder(_Engine(task.module), CPU.device, DecodeConfig(num_candidates=2))
    assert (decoder is not None) == STAGES[name].trains_drafter


class _Engine:
    """What the evaluation calls of a DeepSpeed engine, around a plain module (one process, no partitioning)."""

    def __init__(self, module):
        self.module = module

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def eval(self):
        self.module.eval()

    def train(self):
        self.module.train()


@pytest.mark.parametrize("stage", ["a", "c"])
@pytest.mark.parametrize("steps", [1, 3])
def test_tau_during_training_uses_the_trained_sampler_steps(stage, steps, generator):
    """τ at an evaluation drafts with the stage's flow.euler_steps (the DiT's forward passes per drafted batch),
    not the decoder's own default."""
    cfg = load_config(RunConfig, None, ["data.train=/x", f"stage={stage}", "dit.num_layers=2",
                                        f"dit.block_len={BLOCK}", f"flow.euler_steps={steps}", VERIFIER])
    task = STAGES[stage].build(cfg, tiny_verifier())
    manifest = Manifest(block_len=BLOCK, prefix_len=PREFIX, fields=["prefix", "block"], vocab_size=TINY["vocab_size"])
    task.setup(CPU, torch.float32, manifest)
    dit = task.module if stage == "a" else task.module.dit
    assert dit.flow == FlowConfig(euler_steps=steps)
    batches = [{"prefix": torch.randint(0, TINY["vocab_size"], (1, PREFIX), generator=generator),
                "prefix_len": torch.tensor([PREFIX])}]
    calls = []
    dit.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    train = TrainConfig(tau_prompts=1, tau_cycles=2, tau_candidates=3)
    committed, cycles = Evaluator(task, batches, train, 0, CPU, "unused", None).tau(_Engine(task.module), 0)
    assert cycles == 2 and committed >= 2
    assert calls == [3] * (steps * cycles)  # each cycle drafts N = 3 candidates in one batch: a forward per step


@pytest.mark.parametrize("reveal", [0.0, 0.5])
def test_tau_during_training_decodes_a_mask_drafter_as_its_lattice(reveal, generator):
    """A one-draft DiT (flow.source mask) is evaluated on its lattice of N candidates: one DiT pass of one row per
    cycle, and with flow.reveal two more passes drafting the N candidates again after their pivots."""
    cfg = load_config(RunConfig, None, ["data.train=/x", "stage=a", "dit.num_layers=2", f"dit.block_len={BLOCK}",
                                        "flow.anchor=true", "flow.objective=tokens", "flow.euler_steps=1",
                                        "flow.t_sampling=euler_grid", "flow.source=mask", f"flow.reveal={reveal}",
                                        VERIFIER])
    task = STAGES["a"].build(cfg, tiny_verifier())
    task.setup(CPU, torch.float32, Manifest(block_len=BLOCK, prefix_len=PREFIX, fields=["prefix", "block"],
                                            vocab_size=TINY["vocab_size"]))
    batches = [{"prefix": torch.randint(0, TINY["vocab_size"], (1, PREFIX), generator=generator),
                "prefix_len": torch.tensor([PREFIX])}]
    calls = []
    task.module.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    train = TrainConfig(tau_prompts=1, tau_cycles=2, tau_candidates=3)
    committed, cycles = Evaluator(task, batches, train, 0, CPU, "unused", None).tau(_Engine(task.module), 0)
    assert cycles == 2 and committed >= 2 * 2  # the anchor and the verifier's next token: at least 2 a cycle
    assert calls == ([1, 3, 3] if reveal else [1]) * cycles  # (an untrained DiT's pivots all lie before K - 1)
