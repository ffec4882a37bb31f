"""Tiny Qwen3.5 verifier architectures (``Qwen3_5TextConfig`` fields, vocabulary excluded: it follows the
tokenizer), defined once for everything that runs without the real 9B weights.

Both keep the real model's layer pattern: 8 layers of [3 x Gated DeltaNet, 1 x full attention].
    MINI  hidden 128: the quickstart's verifier, the benchmarks' CPU shapes and ``bench/drafters.py``
    TINY  hidden 64, untied head: the test suite's verifier and the benchmarks' ``--tiny`` smoke runs
"""

MINI = {"hidden_size": 128, "intermediate_size": 384, "num_hidden_layers": 8, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 32, "linear_num_key_heads": 2, "linear_num_value_heads": 4,
        "linear_key_head_dim": 32, "linear_value_head_dim": 32, "max_position_embeddings": 4096,
        "tie_word_embeddings": True}

TINY = {**MINI, "hidden_size": 64, "intermediate_size": 128, "head_dim": 16, "linear_key_head_dim": 16,
        "linear_value_head_dim": 16, "tie_word_embeddings": False}
