"""Inference: speculative decoding with the CLSD drafter and the frozen verifier."""
