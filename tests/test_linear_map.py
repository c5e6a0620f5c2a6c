import torch

from pipeline.encoders import TokenLayout
from pipeline.linear_map import LinearMap


def test_grid_layout_maps_each_position_to_one_token():
    linear_map = LinearMap(8, 6, TokenLayout("grid", positions=9, tokens_per_position=1)).eval()
    features = torch.randn(2, 9, 8)
    tokens = linear_map(features)
    assert tokens.shape == (2, 9, 6)
    # The same layer at every position.
    torch.testing.assert_close(tokens[:, 4], linear_map.proj(features[:, 4]))


def test_pooled_layout_maps_one_vector_to_k_tokens():
    linear_map = LinearMap(8, 6, TokenLayout("pooled", positions=1, tokens_per_position=4)).eval()
    features = torch.randn(3, 1, 8)
    tokens = linear_map(features)
    assert tokens.shape == (3, 4, 6)
    torch.testing.assert_close(tokens.reshape(3, 24), linear_map.proj(features[:, 0]))


def test_dropout_only_in_training_and_no_layernorm():
    linear_map = LinearMap(8, 6, TokenLayout("pooled", 1, 2))
    assert [type(m).__name__ for m in linear_map.children()] == ["Linear", "Identity", "Dropout"]  # no LayerNorm
    features = torch.randn(64, 1, 8)
    linear_map.train()
    assert (linear_map(features) == 0).float().mean() > 0.05
    linear_map.eval()
    assert torch.equal(linear_map(features), linear_map(features))


def test_save_and_load_round_trip(tmp_path):
    linear_map = LinearMap(8, 6, TokenLayout("grid", 4, 1)).eval()
    linear_map.save(tmp_path, extra={"backbone": "x"})
    loaded = LinearMap.load(tmp_path).eval()
    features = torch.randn(2, 4, 8)
    torch.testing.assert_close(loaded(features), linear_map(features))
    assert loaded.layout == linear_map.layout
