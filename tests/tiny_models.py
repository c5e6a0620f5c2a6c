"""Tiny language models for the training tests, importable by name (spawned ranks load them)."""

from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM


def tiny_lm(tokenizer_dir: str | Path, device: str = "cpu"):
    """A tiny Llama (random weights, seeded 0 without touching the caller's RNG), the same in every
    process, with the embedded LM's tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            initializer_range=0.2,  # large enough that input embeddings move the output
        )
        lm = LlamaForCausalLM(config).to(device).eval().requires_grad_(False)
    return lm, tokenizer
