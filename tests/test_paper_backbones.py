"""The paper's backbones, built as the real architectures with random weights (no weights ship
in any package), checked for the feature layout each feeds the linear map."""

import pytest
import skimage.data
import torch
from PIL import Image

from pipeline.encoders import backbone_spec, create_backbone
from pipeline.linear_map import LinearMap

PHOTO = Image.fromarray(skimage.data.astronaut())


def _features(name):
    backbone = create_backbone(name, pretrained=False)
    pixels = backbone.preprocess(PHOTO).unsqueeze(0)
    with torch.inference_mode():
        return pixels, backbone.model(pixels)


def test_clip_rn50x16_gives_a_12x12_grid_of_3072():
    pixels, features = _features("clip_rn50x16")
    assert pixels.shape == (1, 3, 384, 384)
    assert features.shape == (1, 144, 3072)
    spec = backbone_spec("clip_rn50x16")
    assert (spec.layout.kind, spec.layout.num_tokens, spec.feature_dim) == ("grid", 144, 3072)


@pytest.mark.parametrize("name", ["nfrn50", "nfrn50_random"])
def test_nfrn50_pools_to_one_2048_vector_mapped_to_k_tokens(name):
    pixels, features = _features(name)
    assert pixels.shape == (1, 3, 384, 384)
    assert features.shape == (1, 1, 2048)
    spec = backbone_spec(name)
    with torch.inference_mode():
        tokens = LinearMap(spec.feature_dim, 4096, spec.layout).eval()(features)
    assert tokens.shape == (1, spec.layout.tokens_per_position, 4096)


def test_nfrn50_random_is_seeded():
    assert torch.equal(_features("nfrn50_random")[1], _features("nfrn50_random")[1])


@pytest.mark.parametrize("name", ["beit_large", "beit_large_ft"])
def test_beit_large_gives_196_patches_of_1024_without_cls(name):
    pixels, features = _features(name)
    assert pixels.shape == (1, 3, 224, 224)
    assert features.shape == (1, 196, 1024)


@pytest.mark.parametrize("name, names", [
    ("clip_rn50x16", "timm/resnet50x16_clip.openai"),
    ("nfrn50", "timm/nf_resnet50"),
    ("beit_large", "microsoft/beit-large-patch16-224-pt22k"),
    ("beit_large_ft", "microsoft/beit-large-patch16-224-pt22k-ft22k"),
])
def test_absent_weights_name_what_to_fetch_and_where(name, names, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=f"(?s){names}.*LIMBER_WEIGHTS_{name.upper()}"):
        create_backbone(name)
