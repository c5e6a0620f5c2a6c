"""pipeline/captioning.py: captions stream a split batch by batch (image tokens projected for at
most a batch of rows, features read as whole stored chunks, each once), and join their feature
rows by image id."""

import numpy as np
import pandas as pd
import torch

from pipeline.captioning import caption_images, caption_rows
from pipeline.config import CaptioningConfig
from pipeline.decoding import greedy_captions
from storage import FeatureArray
from storage.feature_store import SKIPPED
from tests.conftest import EVAL_ROWS, assert_whole_chunks_once


def test_captioning_projects_one_batch_at_a_time(stored_features, counting_map, tiny_gptj):
    lm, tokenizer = tiny_gptj
    rows = np.flatnonzero(np.arange(EVAL_ROWS) % 5 != 2)  # some images unreadable
    captions = caption_rows(
        counting_map,
        lm,
        tokenizer,
        stored_features,
        rows,
        CaptioningConfig(prompt="A picture of", batch_size=6, max_new_tokens=3),
        device="cpu",
    )
    assert len(captions) == len(rows)
    assert max(counting_map.calls) <= 6 and sum(counting_map.calls) == len(rows)
    assert_whole_chunks_once(stored_features.reads)
    # Streaming changes nothing: the same captions as one batch of the same rows.
    alone = greedy_captions(
        counting_map,
        lm,
        tokenizer,
        torch.from_numpy(stored_features.array[:][rows[:6]]),
        prompt="A picture of",
        max_new_tokens=3,
        device="cpu",
    )
    assert captions[:6] == alone


def test_a_reordered_manifest_gets_the_same_caption_per_image(tmp_path, counting_map, tiny_gptj):
    """Captions are placed by image id: asking for the images in another order gives each image the
    same caption, and an unreadable image gets an empty one wherever it is."""
    lm, tokenizer = tiny_gptj
    ids = [f"img{i}" for i in range(12)]
    store = FeatureArray.open(str(tmp_path / "f.zarr"), ids, 3, 16, 4)
    rng = np.random.default_rng(0)
    for chunk in range(3):
        store.write_chunk(chunk, rng.standard_normal((4, 3, 16)), {5: "unreadable"} if chunk == 1 else {})
    assert store.status[5] == SKIPPED
    config = CaptioningConfig(batch_size=5, max_new_tokens=3)
    forward = caption_images(counting_map, lm, tokenizer, ids, store, config, device="cpu")
    shuffled = list(rng.permutation(ids))
    backward = caption_images(counting_map, lm, tokenizer, shuffled, store, config, device="cpu")
    assert backward["image_id"].tolist() == shuffled
    pd.testing.assert_frame_equal(backward.set_index("image_id").loc[ids], forward.set_index("image_id"))
    assert forward.set_index("image_id").loc["img5", "caption"] == ""
    assert len(set(forward["caption"])) > 1, "every image got the same caption"


def test_different_images_get_different_captions_and_the_same_image_the_same(tmp_path, counting_map, tiny_gptj):
    """Captions come from the image tokens: distinct features give distinct captions, a repeated
    image its caption again (so zeroed features or image tokens left out of the prompt fail here)."""
    lm, tokenizer = tiny_gptj
    ids = [f"img{i}" for i in range(8)]
    store = FeatureArray.open(str(tmp_path / "f.zarr"), ids, 3, 16, 8)
    features = 3 * np.random.default_rng(1).standard_normal((8, 3, 16))
    features[7] = features[0]  # the same image twice
    store.write_chunk(0, features, {})
    captions = caption_images(
        counting_map, lm, tokenizer, ids, store, CaptioningConfig(batch_size=8, max_new_tokens=4), device="cpu"
    )["caption"].tolist()
    assert len(set(captions[:7])) >= 5, captions
    assert captions[7] == captions[0]
