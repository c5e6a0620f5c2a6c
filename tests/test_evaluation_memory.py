"""Captioning and VQA stream an evaluation set batch by batch: image tokens are projected for at
most a batch of rows at a time, and cached features are read as whole stored chunks, each once."""

import numpy as np
import pandas as pd
import pytest
import torch
import zarr

from pipeline.captioning import caption_rows
from pipeline.decoding import greedy_captions
from pipeline.encoders import TokenLayout
from pipeline.image_features import ChunkedRows
from pipeline.linear_map import LinearMap
from pipeline.vqa import answer_questions, draw_support, pool_questions, support_pool

ROWS, CHUNK, DIM = 40, 8, 16


class CountingMap(LinearMap):
    """The linear map, recording how many images each call projects."""

    def __init__(self):
        super().__init__(DIM, 64, TokenLayout("grid", 3, 1))
        self.calls = []

    def forward(self, features):
        self.calls.append(features.shape[0])
        return super().forward(features)


@pytest.fixture()
def stored(tmp_path, recording_array):
    array = zarr.create_array(
        str(tmp_path / "features.zarr"), shape=(ROWS, 3, DIM), chunks=(CHUNK, 3, DIM), dtype="float16"
    )
    array[:] = np.random.default_rng(0).standard_normal((ROWS, 3, DIM))
    return recording_array(array)


def _whole_chunks_once(reads):
    assert all(start % CHUNK == 0 and stop == start + CHUNK for start, stop in reads), reads
    assert len(set(reads)) == len(reads), f"a chunk was read twice: {reads}"


def test_chunked_rows_reads_whole_chunks_once_in_ascending_order(stored):
    reader = ChunkedRows(stored)
    rows = np.array([0, 3, 7, 8, 9, 20, 39])
    got = np.concatenate([reader[rows[:3]], reader[rows[3:5]], reader[rows[5:]]])
    np.testing.assert_array_equal(got, stored.array[:][rows])
    _whole_chunks_once(stored.reads)
    assert len(stored.reads) == 4


def test_captioning_projects_one_batch_at_a_time(stored, tiny_gptj):
    lm, tokenizer = tiny_gptj
    linear_map = CountingMap().eval()
    rows = np.flatnonzero(np.arange(ROWS) % 5 != 2)  # some images unreadable
    captions = caption_rows(
        linear_map, lm, tokenizer, stored, rows, prompt="A picture of", batch_size=6, max_new_tokens=3, device="cpu"
    )
    assert len(captions) == len(rows)
    assert max(linear_map.calls) <= 6 and sum(linear_map.calls) == len(rows)
    _whole_chunks_once(stored.reads)
    # Streaming changes nothing: the same captions as one batch of the same rows.
    alone = greedy_captions(
        linear_map,
        lm,
        tokenizer,
        torch.from_numpy(stored.array[:][rows[:6]]),
        prompt="A picture of",
        max_new_tokens=3,
        device="cpu",
    )
    assert captions[:6] == alone


def test_vqa_projects_one_batch_of_questions_and_their_examples_at_a_time(stored, tiny_gptj):
    lm, tokenizer = tiny_gptj
    linear_map = CountingMap().eval()
    # Five questions per image, sorted by image, as flatten_questions gives them.
    questions = pd.DataFrame(
        [
            {"row": row, "question": f"what is in image {row}?", "answers": ["red"] * 10}
            for row in range(ROWS)
            for _ in range(5)
        ]
    )
    support_manifest_rows = 100
    pool = support_pool(support_manifest_rows, 12, seed=0)
    assert pool.stop - pool.start == 12
    support_questions = pool_questions(
        pd.DataFrame(
            {
                "row": np.arange(support_manifest_rows),
                "question": "is it a shape?",
                "answers": [["yes"]] * 100,
            }
        ),
        pool,
    )
    assert support_questions["row"].between(0, 11).all() and len(support_questions) == 12
    support_features = np.random.default_rng(1).standard_normal((12, 3, DIM)).astype(np.float16)
    answers = answer_questions(
        lm,
        tokenizer,
        questions,
        support_questions,
        draw_support(support_questions, len(questions), 4, 0),
        shots=2,
        batch_size=8,
        max_new_tokens=2,
        linear_map=linear_map,
        features=stored,
        support_features=support_features,
    )
    assert len(answers) == len(questions)
    # Per batch of 8 questions: one call for their 8 images, one for their 16 solved examples.
    assert max(linear_map.calls) <= 16 and sum(linear_map.calls) == len(questions) * 3
    _whole_chunks_once(stored.reads)
    assert len(stored.reads) == ROWS // CHUNK
