"""Exported drafters: ``model.safetensors`` plus a JSON file naming the format, the architecture and the verifier
config the drafter was made for — everything needed to rebuild it without DeepSpeed. The weights are written under
a temporary name and renamed, so an interrupted export leaves the previous weights whole."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import Qwen3_5TextConfig

from .config import ConfigError

EXPORT_WEIGHTS = "model.safetensors"


def write_export(out_dir: str | Path, state_dict: dict[str, torch.Tensor], config_file: str, meta: dict,
                 text_config: Qwen3_5TextConfig) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (EXPORT_WEIGHTS + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in state_dict.items()}, str(tmp))
    tmp.replace(out / EXPORT_WEIGHTS)
    (out / config_file).write_text(json.dumps({**meta, "verifier_config": text_config.to_dict()}, indent=1))
    return out


def read_export(path: str | Path, config_file: str,
                what: str) -> tuple[dict, Qwen3_5TextConfig, dict[str, torch.Tensor]]:
    """(the JSON, the verifier config it names, the weights) of an export; a missing file is named in the error."""
    path = Path(path)
    for f in (path / config_file, path / EXPORT_WEIGHTS):
        if not f.is_file():
            raise ConfigError(f"{what}: '{f}' is missing; expected a directory exported by the trainer")
    meta = json.loads((path / config_file).read_text())
    text_config = Qwen3_5TextConfig.from_dict(meta["verifier_config"])
    text_config._attn_implementation = meta["verifier_config"].get("_attn_implementation_internal") or "sdpa"
    return meta, text_config, load_file(str(path / EXPORT_WEIGHTS))
