"""Image-prompt readout: what the LM "sees" in a system's image tokens.

Each projected image token is compared (cosine) with every row of the LM's input-embedding matrix;
its nearest vocabulary tokens are the words the prompt is closest to. On a dataset whose images
carry word labels (easy-vqa: a colour and a shape), the share of images whose nearest tokens
include their own label's word measures how lexical the prompt is: whether the map writes the
image's words, or information the LM reads in some other way.
"""

import numpy as np
import pandas as pd
import torch

from pipeline.config import ReadoutConfig
from pipeline.datasets.manifest import seeded_ids
from pipeline.decoding import image_tokens
from pipeline.image_features import ChunkedRows, rows_by_id
from pipeline.linear_map import LinearMap
from pipeline.metrics.intervals import Estimate, resamples_of
from storage.feature_store import OK


@torch.inference_mode()
def nearest_tokens(
    linear_map: LinearMap, lm, features: np.ndarray, *, nearest: int, batch_size: int, device: str
) -> tuple[np.ndarray, np.ndarray]:
    """The ``nearest`` vocabulary token ids of each image token, by cosine in the LM's input
    embedding space, and their cosines: two (images, image tokens, nearest) arrays."""
    vocabulary = torch.nn.functional.normalize(lm.get_input_embeddings().weight.float(), dim=-1)
    ids, cosines = [], []
    for start in range(0, len(features), batch_size):
        tokens = image_tokens(linear_map, torch.from_numpy(features[start : start + batch_size]), device)
        similarity = torch.nn.functional.normalize(tokens.float(), dim=-1) @ vocabulary.T
        top = similarity.topk(nearest, dim=-1)
        ids.append(top.indices.cpu().numpy())
        cosines.append(top.values.cpu().numpy())
    return np.concatenate(ids), np.concatenate(cosines)


def readout_table(image_ids: list, ids: np.ndarray, cosines: np.ndarray, tokenizer) -> pd.DataFrame:
    """One row per (image, image token, rank): the vocabulary token's id, text and cosine."""
    images, positions, ranks = np.indices(ids.shape).reshape(3, -1)
    return pd.DataFrame(
        {
            "image_id": np.asarray(image_ids, dtype=object)[images],
            "position": positions,
            "rank": ranks,
            "token_id": ids.reshape(-1),
            "token": tokenizer.convert_ids_to_tokens(ids.reshape(-1).tolist()),
            "text": [tokenizer.decode([i]) for i in ids.reshape(-1).tolist()],
            "cosine": cosines.reshape(-1),
        }
    )


def word_token(tokenizer, word: str) -> int:
    """The token a word starts with after a space (" red" -> one id; a longer word, its first piece)."""
    return tokenizer(f" {word}", add_special_tokens=False).input_ids[0]


def lexical_shares(ids: np.ndarray, labels: pd.DataFrame, tokenizer, resamples: int, seed: int) -> pd.DataFrame:
    """For each label column (easy-vqa: colour, shape), the share of images (x100) whose nearest
    tokens, over all their image tokens, include the token of their own label's word, with a
    bootstrap 95% interval over the images; and the same against shuffled labels (chance).
    ``labels`` is aligned with ``ids``' images (one row each)."""
    rows = resamples_of(len(labels), resamples, seed)
    found = ids.reshape(len(ids), -1)
    shares = []
    for column in labels.columns:
        wanted = np.array([word_token(tokenizer, word) for word in labels[column]])
        # Chance: the same images' tokens against another image's label (a seeded shuffle), so a map
        # that writes one colour word for every image scores its frequency, not zero.
        shuffled = wanted[np.random.default_rng(seed).permutation(len(wanted))]
        for name, words in (
            (f"nearest tokens name the {column} (%)", wanted),
            (f"nearest tokens name a shuffled {column} (chance, %)", shuffled),
        ):
            hits = (found == words[:, None]).any(axis=1)
            estimate = Estimate.mean(hits.astype(float), rows).scaled(100.0)
            shares.append(
                {
                    "metric": name,
                    "value": estimate.value,
                    "ci_low": estimate.low,
                    "ci_high": estimate.high,
                    "n": len(labels),
                }
            )
    return pd.DataFrame(shares, columns=["metric", "value", "ci_low", "ci_high", "n"])


def prompt_readout(
    linear_map: LinearMap,
    lm,
    tokenizer,
    manifest: pd.DataFrame,
    store,
    labels: pd.DataFrame,
    config: ReadoutConfig,
    *,
    resamples: int,
    device: str,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The readout of a sample of ``config.images`` readable images of ``manifest``, drawn by
    ``config.seed`` (joined to their feature rows in ``store`` by id): the shares of
    ``lexical_shares`` over ``labels`` (indexed by image id; no columns, no shares) with
    ``resamples`` bootstrap resamples, and the table of each image token's ``config.nearest``
    nearest tokens, ``config.batch_size`` images per forward pass."""
    images, nearest, seed, batch_size = config.images, config.nearest, config.seed, config.batch_size
    all_rows = rows_by_id(store.ids, manifest["image_id"].tolist(), "readout")
    readable = store.status[all_rows] == OK
    row_of = dict(zip(manifest["image_id"][readable], all_rows[readable], strict=True))
    sample = sorted(seeded_ids(row_of, images, seed), key=row_of.get)  # stored order: each chunk read once
    rows = np.array([row_of[i] for i in sample], dtype=np.int64)
    ids, cosines = nearest_tokens(
        linear_map, lm, ChunkedRows(store.features)[rows], nearest=nearest, batch_size=batch_size, device=device
    )
    table = readout_table(sample, ids, cosines, tokenizer)
    shares = lexical_shares(ids, labels.loc[sample], tokenizer, resamples, seed)
    return shares, table


def top_tokens(table: pd.DataFrame, count: int = 5) -> pd.Series:
    """Per image, its image tokens' most frequent nearest tokens ("' red' x12, ' circle' x5")."""

    def most_common(texts: pd.Series) -> str:
        return ", ".join(f"{text!r} x{n}" for text, n in texts.value_counts().head(count).items())

    return table[table["rank"] == 0].groupby("image_id", sort=False)["text"].agg(most_common)
