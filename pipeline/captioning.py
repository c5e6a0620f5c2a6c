"""Captioning: greedy captions of cached image features through the linear map, batch by batch.

LiMBeR's protocol: input ``[image tokens, prompt]`` ("A picture of"), greedy decoding, the prompt
not part of the caption. The blind baseline gets the prompt alone.
"""

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from pipeline.config import CaptioningConfig
from pipeline.decoding import greedy_captions
from pipeline.image_features import ChunkedRows, rows_by_id
from pipeline.linear_map import LinearMap
from storage.feature_store import OK


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
    config: CaptioningConfig,
    *,
    device: str,
    on_batch: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Captions of the given rows (ascending) of a cached feature array (Zarr or any chunked array),
    decoded as ``config`` says: ``max_new_tokens`` greedy tokens after the image tokens and
    ``prompt``. ``on_batch(done, total)`` is called after each batch.

    At most ``config.batch_size`` rows are read, projected and decoded at a time, and each stored
    chunk is read once, so memory does not grow with the split. With no linear map (the blind
    baseline) ``features`` is not read.
    """
    prompt, batch_size, max_new_tokens = config.prompt, config.batch_size, config.max_new_tokens
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


def caption_images(
    linear_map: LinearMap | None,
    lm,
    tokenizer,
    image_ids: list,
    store,
    config: CaptioningConfig,
    *,
    device: str,
    on_batch: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Captions of the given images, joined to their feature rows by id: ``(image_id, caption)`` in
    the order of ``image_ids``, decoded as ``caption_rows`` does under ``config``. ``store`` has
    ``ids``, ``status`` and ``features`` (a FeatureArray), or is None for the blind system; an image
    the encoder could not read gets ``""``."""
    captions = np.full(len(image_ids), "", dtype=object)
    if store is None:
        readable, rows = np.arange(len(image_ids)), np.arange(len(image_ids))
        features = None
    else:
        all_rows = rows_by_id(store.ids, image_ids, "captions")
        readable = np.flatnonzero(store.status[all_rows] == OK)
        order = np.argsort(all_rows[readable], kind="stable")  # ascending rows: each chunk read once
        readable, rows, features = readable[order], all_rows[readable][order], store.features
    captions[readable] = caption_rows(
        linear_map, lm, tokenizer, features, rows, config, device=device, on_batch=on_batch
    )
    return pd.DataFrame({"image_id": list(image_ids), "caption": captions.astype(str)})
