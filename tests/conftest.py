import atexit
import os
import shutil
import tempfile

import pytest

# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Nor write to the user's cache (the CPU precision measurement, object-store mirrors): a folder of
# this session's, removed at its end. Set before any import reads it (the runtime resource's default).
os.environ["LIMBER_CACHE"] = tempfile.mkdtemp(prefix="limber-test-cache-")
atexit.register(shutil.rmtree, os.environ["LIMBER_CACHE"], ignore_errors=True)
# Nor read a sweep file a developer left in the working directory (a test that needs one sets it).
os.environ["LIMBER_SWEEP"] = os.devnull


@pytest.fixture(scope="session")
def prepared_lm(tmp_path_factory):
    """SmolLM2-135M converted once for the whole session (about 20 s)."""
    from pipeline.language_models import prepare_language_model

    directory = tmp_path_factory.mktemp("lm") / "smollm2-135m"
    prepare_language_model("smollm2-135m", directory)
    return directory


@pytest.fixture(scope="session")
def easy_vqa_val():
    from pipeline.datasets import read_manifest

    return read_manifest("easy_vqa", "val", val_size=500, seed=0).manifest


@pytest.fixture(scope="session")
def tiny_gptj(prepared_lm):
    """GPT-J's real class at a tiny width (random weights), with the embedded LM's tokenizer."""
    import torch
    from transformers import AutoTokenizer, GPTJConfig, GPTJForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(prepared_lm / "checkpoint")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        lm = GPTJForCausalLM(
            GPTJConfig(
                vocab_size=len(tokenizer),
                n_embd=64,
                n_layer=2,
                n_head=4,
                rotary_dim=8,
                n_positions=512,
                bos_token_id=tokenizer.eos_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        )
    return lm.eval().requires_grad_(False), tokenizer


@pytest.fixture(scope="session")
def tiny_llama(prepared_lm):
    """SmolLM2's class (Llama, grouped-query attention) at a tiny width (random weights), with the
    embedded LM's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(prepared_lm / "checkpoint")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        lm = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=len(tokenizer),
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                tie_word_embeddings=True,
                # At the default 0.02 the tied head echoes the last input token ("::::"), so no
                # answer would differ or end early.
                initializer_range=0.1,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        )
    return lm.eval().requires_grad_(False), tokenizer


def text_ids(tokenizer, segments) -> list[list[int]]:
    """The token ids of each text segment of a prompt, as ``pipeline.decoding.embed_prompt`` gets them."""
    return [tokenizer(s, add_special_tokens=False).input_ids for s in segments if isinstance(s, str)]


class RecordingArray:
    """A chunked array that records every slice read from it (to check reads are whole chunks)."""

    def __init__(self, array):
        self.array, self.reads = array, []
        self.chunks, self.shape, self.dtype = array.chunks, array.shape, array.dtype

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, rows: slice):
        self.reads.append((rows.start, rows.stop))
        return self.array[rows]


@pytest.fixture()
def recording_array():
    return RecordingArray


@pytest.fixture()
def empty_hf_cache(tmp_path, monkeypatch):
    """Offline, with a Hugging Face cache that holds nothing, whatever this machine's cache holds."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


EVAL_ROWS, EVAL_CHUNK, EVAL_DIM = 40, 8, 16


@pytest.fixture()
def stored_features(tmp_path, recording_array):
    """40 rows of (3, 16) float16 features in 8-row Zarr chunks, every read recorded."""
    import numpy as np
    import zarr

    array = zarr.create_array(
        str(tmp_path / "features.zarr"),
        shape=(EVAL_ROWS, 3, EVAL_DIM),
        chunks=(EVAL_CHUNK, 3, EVAL_DIM),
        dtype="float16",
    )
    array[:] = np.random.default_rng(0).standard_normal((EVAL_ROWS, 3, EVAL_DIM))
    return recording_array(array)


@pytest.fixture()
def counting_map():
    """A linear map (16 -> 64, 3 grid tokens) recording how many images each call projects."""
    from pipeline.encoders import TokenLayout
    from pipeline.linear_map import LinearMap

    class CountingMap(LinearMap):
        def __init__(self):
            super().__init__(EVAL_DIM, 64, TokenLayout("grid", 3, 1))
            self.calls = []

        def forward(self, features):
            self.calls.append(features.shape[0])
            return super().forward(features)

    return CountingMap().eval()


def assert_whole_chunks_once(reads, chunk=EVAL_CHUNK):
    assert all(start % chunk == 0 and stop == start + chunk for start, stop in reads), reads
    assert len(set(reads)) == len(reads), f"a chunk was read twice: {reads}"
