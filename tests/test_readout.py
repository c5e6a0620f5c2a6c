import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.encoders import TokenLayout
from pipeline.linear_map import LinearMap
from pipeline.readout import lexical_shares, nearest_tokens, readout_table, top_tokens, word_token


@pytest.fixture(scope="module")
def writing_map(tiny_llama):
    """A map that writes the input embedding of " red" for feature [1, 0] and of " circle" for [0, 1]."""
    lm, tokenizer = tiny_llama
    embeddings = lm.get_input_embeddings().weight
    words = [word_token(tokenizer, "red"), word_token(tokenizer, "circle")]
    mapping = LinearMap(2, lm.config.hidden_size, TokenLayout("pooled", 1, 1)).eval()
    with torch.no_grad():
        mapping.proj.weight.copy_(embeddings[words].T)
        mapping.proj.bias.zero_()
    return mapping, words


def test_the_nearest_token_of_a_written_embedding_is_its_word(tiny_llama, writing_map):
    lm, tokenizer = tiny_llama
    mapping, words = writing_map
    features = np.array([[[1.0, 0.0]], [[0.0, 1.0]], [[2.0, 0.0]]], dtype=np.float16)  # scale: same direction
    ids, cosines = nearest_tokens(mapping, lm, features, nearest=3, batch_size=2, device="cpu")
    assert ids.shape == (3, 1, 3) and cosines.shape == (3, 1, 3)
    assert ids[:, 0, 0].tolist() == [words[0], words[1], words[0]]
    np.testing.assert_allclose(cosines[:, 0, 0], 1.0, atol=1e-3)
    assert (np.diff(cosines, axis=-1) <= 0).all()  # ranked by falling cosine
    table = readout_table(["a", "b", "c"], ids, cosines, tokenizer)
    assert len(table) == 3 * 1 * 3 and table[table["rank"] == 0]["text"].tolist() == [" red", " circle", " red"]
    assert top_tokens(table).to_dict() == {"a": "' red' x1", "b": "' circle' x1", "c": "' red' x1"}


def test_lexical_shares_count_own_label_words_against_shuffled_labels(tiny_llama, writing_map):
    lm, tokenizer = tiny_llama
    mapping, _ = writing_map
    # Images 0-1 write " red", 2-3 write " circle".
    features = np.array([[[1.0, 0.0]]] * 2 + [[[0.0, 1.0]]] * 2, dtype=np.float16)
    ids, _ = nearest_tokens(mapping, lm, features, nearest=1, batch_size=4, device="cpu")
    labels = pd.DataFrame({"colour": ["red", "red", "green", "red"], "shape": ["circle", "circle", "circle", "square"]})
    shares = lexical_shares(ids, labels, tokenizer, resamples=200, seed=0).set_index("metric")
    assert shares.loc["nearest tokens name the colour (%)", "value"] == 50.0  # images 0 and 1
    assert shares.loc["nearest tokens name the shape (%)", "value"] == 25.0  # image 2
    chance = shares.loc["nearest tokens name a shuffled colour (chance, %)"]
    assert 0 <= chance["value"] <= 50 and (shares["n"] == 4).all()
    numbers = shares.dropna()
    assert ((numbers["ci_low"] <= numbers["value"]) & (numbers["value"] <= numbers["ci_high"])).all()


def test_a_word_of_several_tokens_is_read_out_by_its_first(tiny_llama):
    _, tokenizer = tiny_llama
    pieces = tokenizer(" rectangle", add_special_tokens=False).input_ids
    assert word_token(tokenizer, "rectangle") == pieces[0]
