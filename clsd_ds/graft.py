"""The strided graft: which verifier layers the drafter is built from, and building it.

Qwen3.5-9B has 32 layers in a repeating [3 x DeltaNet, 1 x attention] pattern; the seed's drafter keeps 12 of them,
``STRIDE_INDICES`` (9 DeltaNet + 3 attention). Each drafter layer is a deep copy of its source layer, so it keeps
the source's kind (DeltaNet or attention) and weights. Smaller verifiers get an evenly spaced slice (first and last
layer included) unless the config lists the indices explicitly.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

from .config import ConfigError
from .dit import EXPORT_CONFIG, CausalDiT, DiTConfig, exported_flow
from .export import read_export
from .flow import FlowConfig
from .verifier import Verifier

STRIDE_INDICES = [0, 3, 6, 9, 12, 15, 18, 21, 24, 26, 28, 31]


def resolve_slice(num_layers: int, num_dit_layers: int, explicit: list[int] | None = None) -> list[int]:
    """Source-layer indices for the drafter: ``explicit`` (validated), the seed's slice, or an even spread."""
    if explicit is not None:
        if not explicit:
            raise ConfigError("field 'dit.layers': must list at least one verifier layer")
        for i, idx in enumerate(explicit):
            if not 0 <= idx < num_layers:
                raise ConfigError(f"field 'dit.layers[{i}]': layer {idx} is out of range for a verifier with "
                                  f"{num_layers} layers (valid: 0..{num_layers - 1})")
        if sorted(set(explicit)) != list(explicit):
            raise ConfigError(f"field 'dit.layers': indices must be strictly increasing, got {explicit}")
        return list(explicit)
    if not 1 <= num_dit_layers <= num_layers:
        raise ConfigError(f"field 'dit.num_layers': {num_dit_layers} is not in 1..{num_layers} "
                          f"(the verifier has {num_layers} layers)")
    if (num_layers, num_dit_layers) == (32, len(STRIDE_INDICES)):
        return list(STRIDE_INDICES)
    if num_dit_layers == 1:
        return [0]
    return [round(i * (num_layers - 1) / (num_dit_layers - 1)) for i in range(num_dit_layers)]


def graft(verifier: Verifier, cfg: DiTConfig, flow: FlowConfig | None = None) -> CausalDiT:
    """Build the drafter from deep copies of the verifier's layers (and final norm), in the verifier's dtype;
    ``flow``: the flow it is (to be) trained with.

    The returned DiT's config has ``layers`` and ``embed_scale`` resolved, so an export rebuilds it exactly.
    """
    text_cfg = verifier.config
    indices = resolve_slice(text_cfg.num_hidden_layers, cfg.num_layers, cfg.layers)
    scale = cfg.embed_scale if cfg.embed_scale is not None else verifier.embedding_rms()
    cfg = dataclasses.replace(cfg, layers=indices, num_layers=len(indices), embed_scale=scale)
    source = verifier.lm.model
    layers = [copy.deepcopy(source.layers[i]) for i in indices]
    dit = CausalDiT(copy.deepcopy(text_cfg), cfg, layers=layers, final_norm=copy.deepcopy(source.norm), flow=flow)
    return dit.to(verifier.lm.dtype).requires_grad_(True)


def load_drafter(source: str | Path, verifier: Verifier, checkpointing: bool = False,
                 what: str = "drafter") -> CausalDiT:
    """A trained DiT for ``verifier``: an exported DiT directory, or a run directory's export, else the newest
    complete checkpoint of that run, with the flow it was trained with. ``what`` names the setting in errors."""
    from .train.checkpoint import latest_tag

    source = Path(source)
    if (source / "export" / EXPORT_CONFIG).is_file():
        source = source / "export"
    if (source / EXPORT_CONFIG).is_file():
        meta, _, state = read_export(source, EXPORT_CONFIG, what)
        arch, made_for, flow = DiTConfig(**meta["dit"]), meta["verifier_config"], exported_flow(meta)
    elif (tag := latest_tag(source / "checkpoints")) is not None and (source / "config.json").is_file():
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        run_cfg = json.loads((source / "config.json").read_text())
        arch, made_for, flow = DiTConfig(**run_cfg["dit"]), None, FlowConfig(**run_cfg["flow"])
        state = get_fp32_state_dict_from_zero_checkpoint(str(source / "checkpoints"), tag=tag)
        state = {k.removeprefix("dit."): v for k, v in state.items() if not k.startswith("verifier.")}
    else:
        raise ConfigError(f"{what}: '{source}' is neither an exported DiT (dit_config.json) nor a run directory "
                          f"with an export or a complete checkpoint")
    v = verifier.config
    if made_for is not None and (made_for["hidden_size"], made_for["num_hidden_layers"]) != \
            (v.hidden_size, v.num_hidden_layers):
        raise ConfigError(f"{what}: '{source}' was grafted from a verifier with hidden size "
                          f"{made_for['hidden_size']} and {made_for['num_hidden_layers']} layers; this verifier has "
                          f"{v.hidden_size} and {v.num_hidden_layers}")
    dit = graft(verifier, dataclasses.replace(arch, checkpointing=checkpointing), flow)
    dit.load_state_dict(state, strict=True)
    return dit
