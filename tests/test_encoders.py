import pytest
import skimage.data
import torch
from PIL import Image

from pipeline.encoders import backbone_spec, create_backbone

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
    _, preprocess = spec.factory(spec, False)
    assert preprocess(Image.new("RGB", (300, 200))).shape == (3, 160, 160)
    _, preprocess = backbone_spec(name).factory(backbone_spec(name), False)
    size = backbone_spec(name).image_size
    assert preprocess(Image.new("RGB", (300, 200))).shape == (3, size, size)
