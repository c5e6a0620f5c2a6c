"""pipeline/encoders.py: the aliases of the embedded and the paper's encoders. The embedded encoders
with their shipped weights; the paper's backbones built as the real architectures with random
weights (no weights ship in any package), checked for the feature layout each feeds the linear map
and for the preprocessing against each library's own transform."""

import pytest
import skimage.data
import torch
from PIL import Image

from pipeline.encoders import ALIASES, BackboneNameError, backbone_spec, create_backbone
from pipeline.linear_map import LinearMap

IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
PHOTO = Image.fromarray(skimage.data.astronaut())


@pytest.fixture(scope="module")
def lite0():
    return create_backbone("efficientnet_lite0")


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite0_random", "efficientnet_lite1"])
def test_the_demo_encoders_pool_to_4_tokens_of_1280(name):
    spec = backbone_spec(name)
    assert spec.layout.kind == "pooled" and spec.layout.positions == 1
    assert spec.layout.num_tokens == 4 and spec.feature_dim == 1280


def test_an_unknown_name_lists_the_aliases_and_the_forms():
    with pytest.raises(BackboneNameError, match="(?s)no_such_backbone.*efficientnet_lite0.*timm:<model>"):
        backbone_spec("no_such_backbone")


def test_pretrained_lite0_classifies_chelsea_as_a_cat(lite0):
    image = lite0.preprocess(Image.fromarray(skimage.data.chelsea())).unsqueeze(0)
    with torch.no_grad():
        logits = lite0.model.module(image)  # the timm model under the token wrapper, with its classifier
    assert logits.argmax().item() in IMAGENET_CATS


def test_pretrained_lite1_from_its_package_classifies_chelsea_as_a_cat():
    lite1 = create_backbone("efficientnet_lite1")
    assert lite1.spec.image_size == 240
    with torch.no_grad():
        logits = lite1.model.module(lite1.preprocess(Image.fromarray(skimage.data.chelsea())).unsqueeze(0))
    assert logits.argmax().item() in IMAGENET_CATS


def test_feature_layout_and_frozen(lite0):
    images = torch.stack([lite0.preprocess(Image.fromarray(skimage.data.coffee()))] * 2)
    with torch.no_grad():
        features = lite0.model(images)
    assert features.shape == (2, 1, 1280)
    assert not any(p.requires_grad for p in lite0.model.parameters())
    # The pooled output is timm's own pre-logits vector: the classifier's input.
    with torch.no_grad():
        torch.testing.assert_close(lite0.model.module.classifier(features[:, 0]), lite0.model.module(images))


def test_random_backbone_is_seeded_and_differs_from_pretrained(lite0):
    image = lite0.preprocess(Image.fromarray(skimage.data.astronaut())).unsqueeze(0)
    state = torch.random.get_rng_state()
    first, second = create_backbone("efficientnet_lite0_random"), create_backbone("efficientnet_lite0?random")
    other_seed = create_backbone("efficientnet_lite0?random=1")
    assert torch.equal(torch.random.get_rng_state(), state)  # building leaves the global RNG alone
    with torch.no_grad():
        a, b, c, pretrained = first.model(image), second.model(image), other_seed.model(image), lite0.model(image)
    assert torch.equal(a, b)
    assert not torch.allclose(a, pretrained) and not torch.allclose(a, c)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "nfrn50_random"])
def test_size_overrides_the_pretrained_input_size(name):
    spec = backbone_spec(f"{name}?size=160")
    assert spec.image_size == 160
    assert spec.preprocessing.pixels(Image.new("RGB", (300, 200))).shape == (3, 160, 160)
    size = backbone_spec(name).image_size
    assert backbone_spec(name).preprocessing.pixels(Image.new("RGB", (300, 200))).shape == (3, size, size)


def _library_transform(name: str, backbone):
    """Each alias's float transform as its library builds it, independently of pipeline/encoders.py."""
    import open_clip
    import timm.data
    from transformers import BeitImageProcessor

    if name.startswith("efficientnet_lite"):
        return timm.data.create_transform(**timm.data.resolve_model_data_config(backbone.model.module))
    if name == "clip_rn50x16":
        return open_clip.create_model_and_transforms("RN50x16", pretrained=None)[2]
    if name.startswith("nfrn50"):
        config = timm.data.resolve_model_data_config(backbone.model.module)
        return timm.data.create_transform(
            input_size=(3, 384, 384), crop_pct=1.0, interpolation="bicubic", mean=config["mean"],
            std=config["std"], is_training=False,
        )  # fmt: skip
    # The pt22k checkpoints' processor: bilinear resize to 224, no crop, mean/std 0.5.
    processor = BeitImageProcessor(
        size={"height": 224, "width": 224}, resample=2, do_center_crop=False, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    return lambda image: processor(image, return_tensors="pt")["pixel_values"][0]


@pytest.mark.parametrize("name", sorted(ALIASES))
def test_uint8_pixels_normalised_on_the_device_equal_the_library_transform(name):
    backbone = create_backbone(name, pretrained=False)
    photo = PHOTO.resize((640, 480))  # not square: the crop matters
    pixels = backbone.preprocessing.pixels(photo)
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, backbone.spec.image_size, backbone.spec.image_size)
    expected = _library_transform(name, backbone)(photo)
    torch.testing.assert_close(backbone.normalise(pixels.unsqueeze(0))[0], expected, rtol=0, atol=1e-5)


def _features(name):
    backbone = create_backbone(name, pretrained=False)
    pixels = backbone.preprocess(PHOTO).unsqueeze(0)
    with torch.inference_mode():
        return backbone, pixels, backbone.model(pixels)


def test_clip_rn50x16_gives_its_last_conv_stage_as_a_12x12_grid_of_3072():
    backbone, pixels, features = _features("clip_rn50x16")
    assert pixels.shape == (1, 3, 384, 384) and features.shape == (1, 144, 3072)
    spec = backbone.spec
    assert (spec.layout.kind, spec.layout.num_tokens, spec.feature_dim) == ("grid", 144, 3072)
    v = backbone.model.module  # CLIP's ModifiedResNet: its layer4 output, the attention pool dropped
    with torch.inference_mode():
        layer4 = v.layer4(v.layer3(v.layer2(v.layer1(v.stem(pixels)))))
    torch.testing.assert_close(features, layer4.flatten(2).transpose(1, 2))


@pytest.mark.parametrize("name", ["nfrn50", "nfrn50_random"])
def test_nfrn50_pools_to_one_2048_vector_mapped_to_k_tokens(name):
    backbone, pixels, features = _features(name)
    assert pixels.shape == (1, 3, 384, 384) and features.shape == (1, 1, 2048)
    spec = backbone.spec
    with torch.inference_mode():
        tokens = LinearMap(spec.feature_dim, 4096, spec.layout).eval()(features)
    assert tokens.shape == (1, spec.layout.tokens_per_position, 4096)


def test_nfrn50_random_is_seeded():
    assert torch.equal(_features("nfrn50_random")[2], _features("nfrn50_random")[2])


@pytest.mark.parametrize("name", ["beit_large", "beit_large_ft"])
def test_beit_large_gives_196_patches_of_1024_without_cls(name):
    backbone, pixels, features = _features(name)
    assert pixels.shape == (1, 3, 224, 224) and features.shape == (1, 196, 1024)
    with torch.inference_mode():
        hidden = backbone.model.module(pixel_values=pixels).last_hidden_state
    assert hidden.shape == (1, 197, 1024)
    torch.testing.assert_close(features, hidden[:, 1:])


@pytest.mark.parametrize(
    "name, names",
    [
        ("clip_rn50x16", "timm/resnet50x16_clip.openai"),
        ("nfrn50", "timm/nf_resnet50"),
        ("beit_large", "microsoft/beit-large-patch16-224-pt22k"),
        ("beit_large_ft", "microsoft/beit-large-patch16-224-pt22k-ft22k"),
    ],
)
def test_absent_weights_name_what_to_fetch_and_where(name, names, empty_hf_cache):
    with pytest.raises((FileNotFoundError, BackboneNameError), match=f"(?s){names}.*LIMBER_WEIGHTS_{name.upper()}"):
        create_backbone(name)
