"""One weight-resolution rule for every registry: LIMBER_WEIGHTS_<NAME>, else the Hugging Face cache."""

import pytest

from pipeline.encoders import BACKBONES, backbone_spec
from pipeline.language_models import language_model_spec
from pipeline.weights import Weights

WEIGHTS = Weights("gpt-j-6b", "EleutherAI/gpt-j-6B", ("config.json",), "the GPT-J checkpoint")


def test_the_variable_is_the_name_upper_cased_with_underscores():
    assert WEIGHTS.env == "LIMBER_WEIGHTS_GPT_J_6B"
    assert backbone_spec("clip_rn50x16").pretrained.env == "LIMBER_WEIGHTS_CLIP_RN50X16"
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


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_random_and_packaged_backbones_need_nothing_to_fetch(name, empty_hf_cache):
    spec = backbone_spec(name)
    if spec.pretrained is None:
        assert spec.missing_weights() is None  # random init, or weights from an installed package
    else:
        assert spec.pretrained.env in spec.missing_weights()
