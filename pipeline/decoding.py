"""Greedy decoding from prompts that mix image tokens and text, with the LM's KV cache.

A prompt is a list of segments: a tensor (tokens, lm_dim) of projected image tokens, or a string
(tokenized in one call). Prompts of different lengths are left-padded and masked, with explicit
position ids, so a batch decodes as each prompt would alone (tests/test_decoding.py checks this).

``greedy_generate`` decodes whole prompts; ``greedy_generate_shared`` decodes prompts that share
prefixes (few-shot VQA: an image's questions share its solved examples and image), prefilling
each prefix once and reusing its KV cache, and stops as soon as every row has ended. On the same
prefilled prompts, ``candidate_log_likelihoods`` scores a closed answer vocabulary.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from pipeline.adapters import adapted
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


def last_logits(lm, inputs: torch.Tensor, mask: torch.Tensor, position_ids: torch.Tensor, cache) -> torch.Tensor:
    """The logits at the last position of ``inputs`` (B, T, width), run on (and appended to) ``cache``."""
    return lm(
        inputs_embeds=inputs,
        attention_mask=mask,
        position_ids=position_ids,
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    ).logits[:, -1]


@dataclass
class SharedPrompts:
    """Prompts ``prefixes[prefix_of[i]] + [suffixes[i]]`` prefilled: the KV cache of every row, its
    attention mask, the position id of its last token and the logits there (the first answer
    token's)."""

    cache: DynamicCache
    mask: torch.Tensor
    last_position: torch.Tensor
    logits: torch.Tensor


@torch.inference_mode()
def prefill_shared(lm, tokenizer, prefixes: list[list[Segment]], suffixes: list[str], prefix_of: Sequence[int]):
    """Each prefix is prefilled once and its KV cache copied to the rows that continue it; then the
    suffixes, left-padded after the prefixes, are prefilled."""
    cache = DynamicCache()
    prefix_inputs, prefix_mask = left_padded([embed_prompt(lm, tokenizer, p) for p in prefixes])
    rows = torch.as_tensor(prefix_of, device=prefix_mask.device)
    if prefix_inputs.shape[1]:  # the blind 0-shot prompt has no prefix
        last_logits(lm, prefix_inputs, prefix_mask, positions(prefix_mask), cache)
        cache.batch_select_indices(rows)
    inputs, suffix_mask = left_padded([embed_prompt(lm, tokenizer, [s]) for s in suffixes])
    mask = torch.cat([prefix_mask[rows], suffix_mask], dim=1)
    position_ids = positions(mask)[:, -inputs.shape[1] :]
    logits = last_logits(lm, inputs, mask, position_ids, cache)
    return SharedPrompts(cache=cache, mask=mask, last_position=position_ids[:, -1], logits=logits)


@torch.inference_mode()
def candidate_log_likelihoods(
    lm, prompts: SharedPrompts, candidates: list[list[int]], sequences_per_call: int = 256, bound: bool = False
) -> torch.Tensor:
    """(rows, candidates): the log-likelihood of each candidate token sequence after each prompt,
    the sum of its tokens' log-probabilities. Its first token's comes from the prompts' own logits;
    candidates of more tokens are run on copies of each row's KV cache, ``sequences_per_call``
    (row, candidate) pairs per LM call. ``prompts``' cache is left as it was.

    With ``bound``, only each row's most likely candidate is sure to be right (``argmax(-1)`` is
    exact): a longer candidate whose first token alone scores below the row's best one-token
    candidate cannot be the most likely (later tokens only lower its score), so its later tokens
    are not run and its score is that first token's, an upper bound."""
    log_probs = prompts.logits.float().log_softmax(-1)
    scores = log_probs[:, [c[0] for c in candidates]]
    longer = [k for k, c in enumerate(candidates) if len(c) > 1]
    if not longer:
        return scores
    single = [k for k, c in enumerate(candidates) if len(c) == 1]
    best_single = scores[:, single].max(-1).values if bound and single else torch.full_like(scores[:, 0], -torch.inf)
    may_win = scores[:, longer] >= best_single[:, None]  # (rows, longer)
    length = max(len(candidates[k]) for k in longer)
    device = prompts.mask.device
    ids = torch.zeros(len(longer), length, dtype=torch.long, device=device)
    for j, k in enumerate(longer):
        ids[j, : len(candidates[k])] = torch.as_tensor(candidates[k])
    valid = torch.as_tensor([[t < len(candidates[k]) for t in range(1, length)] for k in longer], device=device)
    pairs = may_win.nonzero().tolist()
    embed = lm.get_input_embeddings()
    for start in range(0, len(pairs), sequences_per_call):
        chunk = pairs[start : start + sequences_per_call]
        rows = torch.as_tensor([row for row, _ in chunk], device=device)
        which = torch.as_tensor([j for _, j in chunk], device=device)
        cache = DynamicCache()
        for layer, cached in enumerate(prompts.cache.layers):
            cache.update(cached.keys[rows], cached.values[rows], layer)
        steps = torch.arange(1, length, device=device)
        logits = lm(
            inputs_embeds=embed(ids[which, :-1]),
            attention_mask=torch.cat([prompts.mask[rows], prompts.mask.new_ones(len(rows), length - 1)], dim=1),
            position_ids=prompts.last_position[rows, None] + steps,
            cache=cache,
            use_cache=True,
        ).logits
        later = logits.float().log_softmax(-1).gather(-1, ids[which, 1:, None])[..., 0]
        scores[rows, torch.as_tensor(longer, device=device)[which]] += (later * valid[which]).sum(-1)
    return scores


@torch.inference_mode()
def greedy_continue(
    lm, tokenizer, prompts: SharedPrompts, *, max_new_tokens: int, ended: list[Callable[[str], bool]]
) -> list[str]:
    """Greedy continuations of prefilled prompts. Row ``i`` ends at EOS or once ``ended[i](its text
    so far)``; decoding stops when every row has ended, or after ``max_new_tokens``. Ended rows
    leave the batch (and the KV cache), so each step costs only the rows still running.
    ``prompts``' cache is consumed."""
    cache, mask, logits = prompts.cache, prompts.mask, prompts.logits
    position_ids = prompts.last_position[:, None]
    embed = lm.get_input_embeddings()
    tokens: list[list[int]] = [[] for _ in ended]
    live = list(range(len(ended)))  # the rows the batch (logits, cache) holds, in its order
    for step in range(max_new_tokens):
        next_ids = logits.argmax(-1)
        running = []
        for index, (row, token) in enumerate(zip(live, next_ids.tolist(), strict=True)):
            tokens[row].append(token)
            text = tokenizer.decode(tokens[row], skip_special_tokens=True)
            if not (token == tokenizer.eos_token_id or ended[row](text)):
                running.append(index)
        if not running or step == max_new_tokens - 1:
            break
        if len(running) < len(live):
            keep = torch.as_tensor(running, device=mask.device)
            cache.batch_select_indices(keep)
            mask, position_ids, next_ids = mask[keep], position_ids[keep], next_ids[keep]
            live = [live[index] for index in running]
        mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
        position_ids = position_ids + 1
        logits = last_logits(lm, embed(next_ids)[:, None], mask, position_ids, cache)
    return [tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens]


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
    """Greedy continuations of the prompts ``prefixes[prefix_of[i]] + [suffixes[i]]``, each prefix
    prefilled once (``prefill_shared``), then decoded by ``greedy_continue``. Each text is the start
    of ``greedy_generate``'s on the whole prompt, up to where its row ended (tests/test_vqa.py
    checks the answers are the same)."""
    prompts = prefill_shared(lm, tokenizer, prefixes, suffixes, prefix_of)
    return greedy_continue(lm, tokenizer, prompts, max_new_tokens=max_new_tokens, ended=ended)


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
    with adapted(lm, linear_map):
        return greedy_generate(lm, tokenizer, prompts, max_new_tokens=max_new_tokens)
