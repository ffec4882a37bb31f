"""The embedded default's tokenizer: a small byte-level BPE trained on the project's own corpus.

Digits are split one per token (as Qwen's tokenizer does), and ``<|endoftext|>`` is both EOS and padding with no
BOS (as Qwen's), so documents open with EOS exactly as they would with the real verifier's tokenizer. Saved with
``save_pretrained``, so ``AutoTokenizer.from_pretrained(dir)`` loads it like any checkpoint's tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int, out_dir: str | Path) -> PreTrainedTokenizerFast:
    """Train a BPE of ``vocab_size`` tokens on ``texts`` and save it to ``out_dir``."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS)
    fast.save_pretrained(str(out_dir))
    return fast
