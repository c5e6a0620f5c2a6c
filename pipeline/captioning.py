"""Captioning: greedy captions of cached image features through the linear map, batch by batch.

LiMBeR's protocol: input ``[image tokens, prompt]`` ("A picture of"), greedy decoding, the prompt
not part of the caption. The blind baseline gets the prompt alone.
"""

from collections.abc import Callable

import numpy as np
import torch

from pipeline.decoding import greedy_captions
from pipeline.image_features import ChunkedRows
from pipeline.linear_map import LinearMap


def blind_prompt(prompt: str, tokenizer) -> str:
    """The blind baseline's input: the prompt, or with no prompt the LM's BOS (else EOS) token,
    since decoding needs at least one input token."""
    return prompt or tokenizer.bos_token or tokenizer.eos_token


def caption_rows(
    linear_map: LinearMap | None,
    lm,
    tokenizer,
    features,
    rows: np.ndarray,
    *,
    prompt: str,
    batch_size: int,
    max_new_tokens: int,
    device: str,
    on_batch: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Captions of the given rows (ascending) of a cached feature array (Zarr or any chunked array).

    At most ``batch_size`` rows are read, projected and decoded at a time, and each stored chunk is
    read once, so memory does not grow with the split. With no linear map (the blind baseline)
    ``features`` is not read.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if linear_map is None:
        # Every blind prompt is the same and decoding is greedy: one generation serves all.
        (caption,) = greedy_captions(
            None,
            lm,
            tokenizer,
            torch.zeros(1, 0),
            prompt=blind_prompt(prompt, tokenizer),
            max_new_tokens=max_new_tokens,
            device=device,
        )
        return [caption] * len(rows)
    reader = ChunkedRows(features)
    captions: list[str] = []
    for start in range(0, len(rows), batch_size):
        batch = torch.from_numpy(reader[rows[start : start + batch_size]])
        captions += greedy_captions(
            linear_map, lm, tokenizer, batch, prompt=prompt, max_new_tokens=max_new_tokens, device=device
        )
        if on_batch:
            on_batch(len(captions), len(rows))
    return captions
