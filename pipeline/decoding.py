"""Greedy decoding from prompts that mix image tokens and text, with the LM's KV cache.

A prompt is a list of segments: a tensor (tokens, lm_dim) of projected image tokens, or a string
(tokenized in one call). Prompts of different lengths are left-padded and masked, with explicit
position ids, so a batch decodes as each prompt would alone (tests/test_decoding.py checks this).

``greedy_generate`` decodes whole prompts; ``greedy_generate_shared`` decodes prompts that share
prefixes (few-shot VQA: an image's questions share its solved examples and image), prefilling
each prefix once and reusing its KV cache, and stops as soon as every row has ended.
"""

from collections.abc import Callable, Sequence

import torch
from transformers import DynamicCache

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
    return torch.cat(parts, dim=0) if parts else embed.weight.new_zeros(0, embed.embedding_dim)


def left_padded(embedded: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch (B, length, width) of embedded prompts, left-padded with zeros, and its mask."""
    length = max(len(e) for e in embedded)
    width, device, dtype = embedded[0].shape[1], embedded[0].device, embedded[0].dtype
    inputs = torch.zeros(len(embedded), length, width, device=device, dtype=dtype)
    mask = torch.zeros(len(embedded), length, dtype=torch.long, device=device)
    for row, e in enumerate(embedded):
        inputs[row, length - len(e) :] = e
        mask[row, length - len(e) :] = 1
    return inputs, mask


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count only unmasked tokens, so padding shifts no prompt."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


@torch.inference_mode()
def greedy_generate(lm, tokenizer, prompts: list[list[Segment]], *, max_new_tokens: int) -> list[str]:
    """Greedy continuations of a batch of prompts (the prompts themselves are not returned)."""
    inputs, mask = left_padded([embed_prompt(lm, tokenizer, p) for p in prompts])
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
def greedy_generate_shared(
    lm,
    tokenizer,
    prefixes: list[list[Segment]],
    suffixes: list[str],
    prefix_of: Sequence[int],
    *,
    max_new_tokens: int,
    ended: list[Callable[[str], bool]],
) -> list[str]:
    """Greedy continuations of the prompts ``prefixes[prefix_of[i]] + [suffixes[i]]``.

    Each prefix is prefilled once and its KV cache copied to the rows that continue it; then the
    suffixes (left-padded after the prefixes) are prefilled and decoded. Row ``i`` ends at EOS or
    once ``ended[i](its text so far)``; decoding stops when every row has ended, or after
    ``max_new_tokens``. Each text is the start of ``greedy_generate``'s on the whole prompt, up to
    where its row ended (tests/test_vqa.py checks the answers are the same).
    """
    cache = DynamicCache()
    prefix_inputs, prefix_mask = left_padded([embed_prompt(lm, tokenizer, p) for p in prefixes])
    rows = torch.as_tensor(prefix_of, device=prefix_mask.device)
    if prefix_inputs.shape[1]:  # the blind 0-shot prompt has no prefix
        lm(
            inputs_embeds=prefix_inputs,
            attention_mask=prefix_mask,
            position_ids=positions(prefix_mask),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        cache.batch_select_indices(rows)
    inputs, suffix_mask = left_padded([embed_prompt(lm, tokenizer, [s]) for s in suffixes])
    mask = torch.cat([prefix_mask[rows], suffix_mask], dim=1)
    position_ids = positions(mask)[:, -inputs.shape[1] :]
    embed = lm.get_input_embeddings()
    tokens: list[list[int]] = [[] for _ in suffixes]
    running = set(range(len(suffixes)))
    for _ in range(max_new_tokens):
        logits = lm(
            inputs_embeds=inputs,
            attention_mask=mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        ).logits
        next_ids = logits[:, -1].argmax(-1)
        chosen = next_ids.tolist()
        for row in sorted(running):
            token = chosen[row]
            tokens[row].append(token)
            text = tokenizer.decode(tokens[row], skip_special_tokens=True)
            if token == tokenizer.eos_token_id or ended[row](text):
                running.discard(row)
        if not running:
            break
        # Ended rows are still fed (their tokens dropped): a batch's answers end at about the same
        # step, so shrinking the cache would save little.
        inputs = embed(next_ids)[:, None]
        mask = torch.cat([mask, mask.new_ones(len(suffixes), 1)], dim=1)
        position_ids = position_ids[:, -1:] + 1
    return [tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens]


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
