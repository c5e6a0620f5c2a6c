"""Greedy decoding from prompts that mix image tokens and text, with the LM's KV cache.

A prompt is a list of segments: a tensor (tokens, lm_dim) of projected image tokens, or a string.
Prompts of different lengths are left-padded and masked, so a batch decodes as each prompt would
alone (tests/test_decoding.py checks this).
"""

import torch

from pipeline.linear_map import LinearMap

Segment = torch.Tensor | str


def embed_prompt(lm, tokenizer, segments: list[Segment]) -> torch.Tensor:
    embed = lm.get_input_embeddings()
    parts = []
    for segment in segments:
        if isinstance(segment, str):
            ids = tokenizer(segment, add_special_tokens=False, return_tensors="pt").input_ids[0]
            parts.append(embed(ids.to(embed.weight.device)))
        else:
            parts.append(segment.to(embed.weight.device, embed.weight.dtype))
    return torch.cat(parts, dim=0)


@torch.inference_mode()
def greedy_generate(lm, tokenizer, prompts: list[list[Segment]], *, max_new_tokens: int) -> list[str]:
    """Greedy continuations of a batch of prompts (the prompts themselves are not returned)."""
    embedded = [embed_prompt(lm, tokenizer, p) for p in prompts]
    length = max(len(e) for e in embedded)
    width, device, dtype = embedded[0].shape[1], embedded[0].device, embedded[0].dtype
    inputs = torch.zeros(len(embedded), length, width, device=device, dtype=dtype)
    mask = torch.zeros(len(embedded), length, dtype=torch.long, device=device)
    for row, e in enumerate(embedded):
        inputs[row, length - len(e) :] = e
        mask[row, length - len(e) :] = 1
    new_tokens = lm.generate(
        inputs_embeds=inputs,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


@torch.inference_mode()
def image_tokens(linear_map: LinearMap, features: torch.Tensor, device: str) -> torch.Tensor:
    """Projected image tokens (B, tokens, lm_dim) for cached features (B, positions, dim)."""
    linear_map.to(device).eval()
    return linear_map(features.float().to(device))


def greedy_captions(
    linear_map: LinearMap | None,
    lm,
    tokenizer,
    features: torch.Tensor,
    *,
    prompt: str,
    max_new_tokens: int,
    device: str,
) -> list[str]:
    """Captions from ``[image tokens, prompt]``; with no linear map, the blind baseline ``[prompt]``."""
    if linear_map is None:
        # Every blind prompt is the same and decoding is greedy: one generation serves all.
        return greedy_generate(lm, tokenizer, [[prompt]], max_new_tokens=max_new_tokens) * len(features)
    prompts = [[tokens, prompt] if prompt else [tokens] for tokens in image_tokens(linear_map, features, device)]
    return greedy_generate(lm, tokenizer, prompts, max_new_tokens=max_new_tokens)
