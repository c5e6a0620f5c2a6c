"""pipeline/encoders.py: the backbone registry. The embedded encoders with their shipped weights;
the paper's backbones built as the real architectures with random weights (no weights ship in any
package), checked for the feature layout each feeds the linear map; the image size from the spec."""

import pytest
import skimage.data
import torch
from PIL import Image

from pipeline.encoders import BACKBONES, backbone_spec, create_backbone
from pipeline.linear_map import LinearMap

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def lite0():
    return create_backbone("efficientnet_lite0")


def test_registry_entries_describe_their_features():
    for name in ("efficientnet_lite0", "efficientnet_lite0_random"):
        spec = backbone_spec(name)
        assert spec.layout.kind == "pooled" and spec.layout.positions == 1
        assert spec.layout.num_tokens == 4 and spec.feature_dim == 1280


def test_unknown_backbone_names_the_registered_ones():
    with pytest.raises(KeyError, match="efficientnet_lite0"):
        backbone_spec("no_such_backbone")


def test_pretrained_lite0_classifies_chelsea_as_a_cat(lite0):
    image = lite0.preprocess(Image.fromarray(skimage.data.chelsea())).unsqueeze(0)
    with torch.no_grad():
        logits = lite0.model.module(image)  # the timm model under the feature wrapper, with its classifier
    assert logits.argmax().item() in IMAGENET_CATS


def test_feature_layout_and_frozen(lite0):
    images = torch.stack([lite0.preprocess(Image.fromarray(skimage.data.coffee()))] * 2)
    with torch.no_grad():
        features = lite0.model(images)
    assert features.shape == (2, 1, 1280)
    assert not any(p.requires_grad for p in lite0.model.parameters())


def test_random_backbone_is_seeded_and_differs_from_pretrained(lite0):
    image = lite0.preprocess(Image.fromarray(skimage.data.astronaut())).unsqueeze(0)
    state = torch.random.get_rng_state()
    first, second = create_backbone("efficientnet_lite0_random"), create_backbone("efficientnet_lite0_random")
    assert torch.equal(torch.random.get_rng_state(), state)  # building leaves the global RNG alone
    with torch.no_grad():
        a, b, pretrained = first.model(image), second.model(image), lite0.model(image)
    assert torch.equal(a, b)
    assert not torch.allclose(a, pretrained)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "nfrn50_random"])
def test_the_image_size_comes_from_the_spec(name):
    """Preprocessing resizes to the registry's image_size; no factory holds its own."""
    from dataclasses import replace

    from PIL import Image

    spec = replace(backbone_spec(name), image_size=160)
    _, preprocessing = spec.factory(spec, False)
    assert preprocessing.pixels(Image.new("RGB", (300, 200))).shape == (3, 160, 160)
    _, preprocessing = backbone_spec(name).factory(backbone_spec(name), False)
    size = backbone_spec(name).image_size
    assert preprocessing.pixels(Image.new("RGB", (300, 200))).shape == (3, size, size)


PHOTO = Image.fromarray(skimage.data.astronaut())


def _features(name):
    backbone = create_backbone(name, pretrained=False)
    pixels = backbone.preprocess(PHOTO).unsqueeze(0)
    with torch.inference_mode():
        return pixels, backbone.model(pixels)


def _library_transform(name: str, model):
    """Each backbone's float transform as its library builds it (what ``preprocess`` was before it
    split into uint8 geometry and on-device normalisation)."""
    import open_clip
    import timm.data
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    from pipeline.encoders import beit_pt22k_processor

    size = backbone_spec(name).image_size
    if name.startswith("efficientnet_lite0"):
        config = timm.data.resolve_data_config({"input_size": (3, size, size)}, model=model.module)
        return timm.data.create_transform(**config, is_training=False)
    if name == "clip_rn50x16":
        return open_clip.image_transform(size, is_train=False, mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD)
    if name.startswith("nfrn50"):
        config = timm.data.resolve_data_config({}, model=model.module)
        return timm.data.create_transform(
            input_size=(3, size, size), crop_pct=1.0, interpolation="bicubic", mean=config["mean"],
            std=config["std"], is_training=False,
        )  # fmt: skip
    processor = beit_pt22k_processor(size)
    return lambda image: processor(image, return_tensors="pt")["pixel_values"][0]


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_uint8_pixels_normalised_on_the_device_equal_the_library_transform(name):
    backbone = create_backbone(name, pretrained=False)
    photo = Image.fromarray(skimage.data.astronaut()).resize((640, 480))  # not square: the crop matters
    pixels = backbone.preprocessing.pixels(photo)
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, backbone.spec.image_size, backbone.spec.image_size)
    expected = _library_transform(name, backbone.model)(photo)
    torch.testing.assert_close(backbone.normalise(pixels.unsqueeze(0))[0], expected, rtol=0, atol=1e-5)


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


@pytest.mark.parametrize(
    "name, names",
    [
        ("clip_rn50x16", "timm/resnet50x16_clip.openai"),
        ("nfrn50", "timm/nf_resnet50"),
        ("beit_large", "microsoft/beit-large-patch16-224-pt22k"),
        ("beit_large_ft", "microsoft/beit-large-patch16-224-pt22k-ft22k"),
    ],
)
def test_absent_weights_name_what_to_fetch_and_where(name, names, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=f"(?s){names}.*LIMBER_WEIGHTS_{name.upper()}"):
        create_backbone(name)
