"""``generate``: decode one prompt with the drafter and the verifier, print the text and the cycle stats."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import ConfigError
from ..verifier import VerifierConfig, document_start_id, load_tokenizer
from .decoder import DecodeConfig
from .evaluate import load_decoder


@dataclass
class GenerateConfig:
    verifier: VerifierConfig = field(default_factory=VerifierConfig)
    drafter: str = ""  # an exported DiT or AR drafter, or a run directory
    tokenizer: str | None = None  # default: verifier.path
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    device: str = "auto"

    def validate(self) -> None:
        if not self.drafter:
            raise ConfigError("field 'drafter': required (an exported DiT or a run directory)")
        if self.tokenizer is None and self.verifier.path is None:
            raise ConfigError("field 'tokenizer': required when the verifier is not loaded from a directory")


def generate(cfg: GenerateConfig, prompt: str) -> dict:
    tokenizer = load_tokenizer(cfg.tokenizer or cfg.verifier.path)
    decoder = load_decoder(cfg.verifier, cfg.drafter, cfg.decode, cfg.device)
    ids = [document_start_id(tokenizer)] + tokenizer(prompt, add_special_tokens=False)["input_ids"]  # as in training
    out, stats = decoder.generate(ids, eos_id=tokenizer.eos_token_id)
    return {"text": tokenizer.decode(out, skip_special_tokens=True), **stats.summary(), "accepted": stats.accepted}
