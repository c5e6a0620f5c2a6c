"""Any encoder by name: eight families through the real path, on random weights at their real
architectures. Name -> spec -> features (extracted into a Zarr store) -> linear map -> one training
step into a tiny LM -> a caption. The token count and feature size are checked against the model's
own attributes and output, and the preprocessing against the library's own transform."""

import re

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from pipeline import settings
from pipeline.decoding import greedy_captions
from pipeline.encoders import BackboneNameError, backbone_spec, create_backbone
from pipeline.image_features import extract_image_features
from pipeline.linear_map import LinearMap
from pipeline.training import caption_labels, caption_loss, caption_tokens
from storage.feature_store import FeatureArray

PHOTOS = {"astronaut": skimage.data.astronaut(), "coffee": skimage.data.coffee()}


def _timm_reference(backbone, pixels):
    model = backbone.model.module
    return model.forward_features(pixels)[:, model.num_prefix_tokens :]


def _timm_tokens(backbone):
    model = backbone.model.module
    return int(np.prod(model.patch_embed.grid_size)), model.num_features


def _open_clip_vit(backbone, pixels):
    visual = backbone.model.module
    visual.output_tokens = True
    try:
        return visual(pixels)[1]  # (pooled, tokens): the tokens after ln_post, CLS dropped
    finally:
        visual.output_tokens = False


def _open_clip_resnet(backbone, pixels):
    v = backbone.model.module  # ModifiedResNet: layer4, the attention pool dropped
    return v.layer4(v.layer3(v.layer2(v.layer1(v.stem(pixels))))).flatten(2).transpose(1, 2)


# name -> (reference features from the library model, (positions, dim) from the model's attributes)
TIMM_AND_OPEN_CLIP = {
    "timm:vit_small_patch14_reg4_dinov2.lvd142m?random": (_timm_reference, _timm_tokens),  # 5 prefix tokens
    "timm:deit_tiny_distilled_patch16_224.fb_in1k?random": (_timm_reference, _timm_tokens),  # 2 prefix tokens
    "timm:convnext_atto.d2_in1k?random": (
        lambda b, x: b.model.module.forward_features(x).flatten(2).transpose(1, 2),
        lambda b: ((224 // b.model.module.feature_info[-1]["reduction"]) ** 2, b.model.module.num_features),
    ),
    "timm:resnet18.a1_in1k?layout=pooled&random": (
        lambda b, x: b.model.module.forward_head(b.model.module.forward_features(x), pre_logits=True)[:, None],
        lambda b: (1, b.model.module.num_features),
    ),
    "open_clip:ViT-B-32:openai?random": (
        _open_clip_vit,
        lambda b: (int(np.prod(b.model.module.grid_size)), b.model.module.transformer.width),
    ),
    "open_clip:RN50:openai?random": (
        _open_clip_resnet,
        lambda b: ((224 // 32) ** 2, b.model.module.attnpool.k_proj.in_features),
    ),
}


def _write_hf_siglip(folder):
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    config = SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=224, patch_size=16
    )
    SiglipVisionModel(config).save_pretrained(folder)
    SiglipImageProcessor(size={"height": 224, "width": 224}).save_pretrained(folder)


def _write_hf_dinov2(folder):
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    config = Dinov2Config(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=518, patch_size=14
    )
    Dinov2Model(config).save_pretrained(folder)
    # facebook/dinov2-*'s processor: bicubic resize of the short side to 256, centre crop 224.
    BitImageProcessor(
        size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, resample=3,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], do_convert_rgb=True,
    ).save_pretrained(folder)  # fmt: skip


def _write_hf_mae(folder):
    from transformers import ViTImageProcessor, ViTMAEConfig, ViTMAEModel

    config = ViTMAEConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=224, patch_size=16
    )
    ViTMAEModel(config).save_pretrained(folder)
    ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(folder)


# name -> (the folder the test writes, the prefix tokens to drop, the patch grid)
HF = {
    "hf:google/siglip-base-patch16-224": (_write_hf_siglip, 0, 14 * 14),  # no CLS
    "hf:facebook/dinov2-small": (_write_hf_dinov2, 1, 16 * 16),
    "hf:facebook/vit-mae-base": (_write_hf_mae, 1, 14 * 14),
}


@pytest.fixture
def hf_folder(tmp_path, monkeypatch, empty_hf_cache):
    """Writes a small checkpoint of the family's real class where LIMBER_WEIGHTS_<NAME> points."""

    def write(name):
        folder = tmp_path / "weights"
        HF[name][0](folder)
        monkeypatch.setenv(settings.weights_env(name), str(folder))
        return folder

    return write


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    paths = []
    for name, pixels in PHOTOS.items():
        paths.append(str(folder / f"{name}.png"))
        Image.fromarray(pixels).resize((320, 240)).save(paths[-1])
    return paths


def _library_transform(backbone):
    import open_clip
    import timm.data
    from transformers import AutoImageProcessor

    library = backbone.spec.library
    if library == "timm":
        return timm.data.create_transform(**timm.data.resolve_model_data_config(backbone.model.module))
    if library == "open_clip":
        return open_clip.create_model_and_transforms(backbone.spec.encoder.model, pretrained=None)[2]
    processor = AutoImageProcessor.from_pretrained(settings.weights_path(backbone.spec.name))
    return lambda image: processor(image, return_tensors="pt")["pixel_values"][0]


def _through_the_pipeline(backbone, paths, tmp_path, tiny_llama):
    """Features into a Zarr store, a map, one training step into the tiny LM, greedy captions."""
    spec = backbone.spec
    store = FeatureArray.open(str(tmp_path / "f.zarr"), ["a", "b"], spec.layout.positions, spec.feature_dim, 2, "key")
    extract_image_features(backbone, paths, store, device="cpu", batch_size=2, dtype=torch.float32)
    features = np.asarray(store.features[:])
    assert features.shape == (2, spec.layout.positions, spec.feature_dim) and np.isfinite(features).all()

    lm, tokenizer = tiny_llama
    linear_map = LinearMap(spec.feature_dim, lm.config.hidden_size, spec.layout, dropout=0.0)
    before = linear_map.proj.weight.detach().clone()
    ids = caption_tokens(tokenizer, ["an astronaut", "a cup of coffee"], 8)
    labels = caption_labels(ids, spec.layout.num_tokens, tokenizer.eos_token_id)
    optimizer = torch.optim.AdamW(linear_map.parameters(), lr=1e-3)
    loss = caption_loss(linear_map, lm, features, ids, labels, "cpu")
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and not torch.equal(before, linear_map.proj.weight)
    captions = greedy_captions(
        linear_map, lm, tokenizer, torch.from_numpy(features), prompt="", max_new_tokens=3, device="cpu"
    )
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)
    return features


def _check_preprocessing(backbone):
    photo = Image.fromarray(PHOTOS["astronaut"]).resize((640, 480))  # not square: the crop matters
    pixels = backbone.preprocessing.pixels(photo)
    expected = _library_transform(backbone)(photo)
    assert pixels.dtype == torch.uint8 and pixels.shape == expected.shape
    torch.testing.assert_close(backbone.normalise(pixels.unsqueeze(0))[0], expected, rtol=0, atol=1e-5)
    return expected


@pytest.mark.parametrize("name", list(TIMM_AND_OPEN_CLIP))
def test_timm_and_open_clip_families_end_to_end(name, photo_files, tmp_path, tiny_llama):
    reference, attributes = TIMM_AND_OPEN_CLIP[name]
    backbone = create_backbone(name)
    assert backbone.spec.random_init and backbone.spec.missing_weights() is None
    assert (backbone.spec.layout.positions, backbone.spec.feature_dim) == attributes(backbone)
    pixels = _check_preprocessing(backbone).unsqueeze(0)
    with torch.inference_mode():
        torch.testing.assert_close(backbone.model(pixels), reference(backbone, pixels))
    _through_the_pipeline(backbone, photo_files, tmp_path, tiny_llama)


@pytest.mark.parametrize("name", list(HF))
def test_hugging_face_families_from_a_local_folder_end_to_end(name, hf_folder, photo_files, tmp_path, tiny_llama):
    from transformers import AutoModel

    _, prefix, patches = HF[name]
    folder = hf_folder(name)
    backbone = create_backbone(name)  # the pretrained path: the weights the folder holds
    config = backbone.model.module.config
    assert not backbone.spec.random_init and backbone.spec.fingerprint()["weights"].startswith("file:")
    assert (backbone.spec.layout.positions, backbone.spec.feature_dim) == (patches, config.hidden_size)
    pixels = _check_preprocessing(backbone).unsqueeze(0)
    with torch.inference_mode():
        features = backbone.model(pixels)
        if "mae" not in name:
            hidden = AutoModel.from_pretrained(folder)(pixel_values=pixels).last_hidden_state
            assert hidden.shape[1] == prefix + patches
            torch.testing.assert_close(features, hidden[:, prefix:])
    _through_the_pipeline(backbone, photo_files, tmp_path, tiny_llama)


def test_mae_features_cover_every_patch_in_order_whatever_the_rng(hf_folder):
    """ViT-MAE masks 75% of the patches at random by default: here none, and unshuffled."""
    hf_folder("hf:facebook/vit-mae-base")
    backbone = create_backbone("hf:facebook/vit-mae-base")
    pixels = backbone.preprocess(Image.fromarray(PHOTOS["coffee"])).unsqueeze(0)
    with torch.inference_mode():
        torch.manual_seed(1)
        first = backbone.model(pixels)
        torch.manual_seed(2)
        second = backbone.model(pixels)
    assert first.shape == (1, 196, 32)
    torch.testing.assert_close(first, second)


def test_options_pick_the_layer_and_pool_the_grid():
    name = "timm:deit_tiny_distilled_patch16_224.fb_in1k?layer=-2&pool=2&random"
    backbone = create_backbone(name)
    assert backbone.spec.layout.positions == 4 and backbone.spec.feature_dim == 192
    pixels = backbone.preprocess(Image.fromarray(PHOTOS["coffee"])).unsqueeze(0)
    model = backbone.model.module
    with torch.inference_mode():
        second_last = model.forward_intermediates(pixels, indices=[-2], intermediates_only=True)[0]
        expected = torch.nn.functional.adaptive_avg_pool2d(second_last, 2).flatten(2).transpose(1, 2)
        torch.testing.assert_close(backbone.model(pixels), expected)


def test_a_model_needing_remote_code_is_refused(tmp_path, monkeypatch, empty_hf_cache):
    folder = tmp_path / "remote"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "custom", "auto_map": {"AutoModel": "modeling.Custom"}}')
    monkeypatch.setenv("LIMBER_WEIGHTS_HF_SOMEONE_CUSTOM_VISION", str(folder))
    with pytest.raises(BackboneNameError, match="(?s)hf:someone/custom-vision.*remote code.*timm or OpenCLIP"):
        backbone_spec("hf:someone/custom-vision")


@pytest.mark.parametrize(
    "name, problem",
    [
        ("timm:no_such_model_anywhere", "timm has no model"),
        ("timm:resnet18.no_such_tag", "no pretrained tag.*a1_in1k"),
        ("open_clip:ViT-B-32:no_such_tag", "no tag.*openai"),
        ("open_clip:NoSuchArch", "no architecture"),
        ("hf:../..", "not a Hugging Face repo id"),
        ("hf:someone/absent", "not on this machine.*huggingface-cli download someone/absent.*LIMBER_WEIGHTS_HF_SOME"),
        ("timm:resnet18?layer=-40&random", "layer=-40 does not exist"),
        ("timm:resnet18?layer=2", "layer counted from the end"),
        ("timm:resnet18?colour=red", "unknown option 'colour'"),
        ("timm:resnet18?layout=pooled&pool=2", "pool= applies to a grid"),
        ("vit_base", "not an alias and not in a library form"),
        ("timm:", "no model after timm:"),
        ("timm:a|b", "not a backbone name"),
    ],
)
def test_bad_names_say_the_name_the_problem_and_the_fix(name, problem, empty_hf_cache):
    with pytest.raises(BackboneNameError, match=f"(?s)^backbone {re.escape(repr(name))}: .+\\. [A-Z]") as error:
        backbone_spec(name)  # the name, then the problem, then the fix
    assert re.search(problem, str(error.value), flags=re.DOTALL)


def test_a_tag_without_weights_here_says_where_to_put_them(empty_hf_cache):
    spec = backbone_spec("timm:convnext_atto.d2_in1k")
    assert not spec.random_init
    missing = spec.missing_weights()
    assert "timm/convnext_atto.d2_in1k" in missing and "LIMBER_WEIGHTS_TIMM_CONVNEXT_ATTO_D2_IN1K" in missing
    with pytest.raises(FileNotFoundError, match="LIMBER_WEIGHTS_TIMM_CONVNEXT_ATTO_D2_IN1K"):
        create_backbone("timm:convnext_atto.d2_in1k")


def test_every_part_of_the_spec_is_in_the_key():
    base = backbone_spec("timm:convnext_atto.d2_in1k?random").fingerprint()
    assert base["library"] == "timm" and base["library_version"] and base["model"] == "convnext_atto"
    assert base["weights"] == "random:seed0" and base["preprocessing"]["crop_pct"] == 0.875
    assert backbone_spec("timm:convnext_atto.d2_in1k?random=1").fingerprint() != base
    for change in ("layer=-2", "pool=2", "size=160", "crop_pct=1.0", "interpolation=bilinear"):
        assert backbone_spec(f"timm:convnext_atto.d2_in1k?random&{change}").fingerprint() != base, change
    a1, a2 = (backbone_spec(f"timm:resnet18.{tag}?random").fingerprint() for tag in ("a1_in1k", "a2_in1k"))
    assert a1 != a2 and a2["tag"] == "a2_in1k"


def test_size_replaces_a_processors_resize_and_crop(hf_folder):
    hf_folder("hf:facebook/dinov2-small")
    cropped = backbone_spec("hf:facebook/dinov2-small").preprocessing
    resized = backbone_spec("hf:facebook/dinov2-small?size=112").preprocessing
    assert cropped.settings["crop"] == (224, 224) and resized.settings["crop"] is None
    assert resized.pixels(Image.fromarray(PHOTOS["coffee"])).shape == (3, 112, 112)
