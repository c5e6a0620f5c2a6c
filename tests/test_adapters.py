import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.adapters import AdaptedMap, adapted, feed_forward_blocks, load_map
from pipeline.config import TrainConfig
from pipeline.decoding import greedy_captions
from pipeline.encoders import TokenLayout
from pipeline.linear_map import LinearMap
from pipeline.training import train_linear_map
from pipeline.vqa import answer_questions, draw_support

LAYOUT = TokenLayout("grid", 3, 1)


def tuned_map(lm, seed: int = 0) -> AdaptedMap:
    torch.manual_seed(seed)
    return AdaptedMap(8, lm.config.hidden_size, LAYOUT, 0.1, layers=lm.config.num_hidden_layers, reduction=4).eval()


def perturb(mapping: AdaptedMap) -> AdaptedMap:
    """Adapters far from identity, so whether the LM ran them shows in every output."""
    with torch.no_grad():
        for adapter in mapping.adapters:
            adapter.up.bias.normal_(0.0, 5.0)
    return mapping


@pytest.mark.parametrize("lm_fixture", ["tiny_llama", "tiny_gptj"])
def test_adapters_run_inside_the_lm_only_while_adapted(lm_fixture, request):
    lm, _ = request.getfixturevalue(lm_fixture)
    inputs = torch.randn(2, 5, lm.config.hidden_size)
    reference = lm(inputs_embeds=inputs).logits
    mlps = [block.mlp for block in feed_forward_blocks(lm)]
    mapping = tuned_map(lm)
    with adapted(lm, mapping):
        near = lm(inputs_embeds=inputs).logits
    with adapted(lm, perturb(mapping)):
        far = lm(inputs_embeds=inputs).logits
    # MAGMA's init: the adapted LM starts as the frozen one, but the adapters are in the path.
    torch.testing.assert_close(near, reference, atol=0.05, rtol=0.0)
    assert not torch.equal(near, reference)
    assert (far - reference).abs().max() > 1.0
    # Afterwards the shared LM is exactly as it was.
    assert [block.mlp for block in feed_forward_blocks(lm)] == mlps
    assert torch.equal(lm(inputs_embeds=inputs).logits, reference)
    with adapted(lm, LinearMap(8, lm.config.hidden_size, LAYOUT)):  # LiMBeR's map: no adapters
        assert torch.equal(lm(inputs_embeds=inputs).logits, reference)


def test_the_tuned_baseline_trains_its_prefix_and_adapters_not_the_lm(tiny_llama, tmp_path):
    lm, tokenizer = tiny_llama
    frozen = {name: value.clone() for name, value in lm.state_dict().items()}
    mapping = tuned_map(lm)
    initial = {name: value.clone() for name, value in mapping.state_dict().items()}
    features = np.random.default_rng(0).standard_normal((16, 3, 8)).astype(np.float16)
    result = train_linear_map(
        mapping,
        lm,
        tokenizer,
        features,
        ["a red circle", "a blue square"] * 8,
        np.arange(16),
        TrainConfig(
            steps=4,
            batch_size=4,
            lr=1e-2,
            warmup_steps=1,
            max_caption_tokens=8,
            buffer_chunks=1,
            checkpoint_every=4,
        ),
        seed=0,
        checkpoint_dir=tmp_path,
        device="cpu",
    )
    assert np.isfinite(result.losses).all()
    moved = {name for name, value in mapping.state_dict().items() if not torch.equal(value, initial[name])}
    assert {"proj.weight", "norm.weight"} <= moved
    assert all(f"adapters.{i}.{part}.weight" in moved for i in range(2) for part in ("down", "up"))
    assert all(torch.equal(value, frozen[name]) for name, value in lm.state_dict().items())
    assert not any(isinstance(block.mlp, torch.nn.Sequential) for block in feed_forward_blocks(lm))


def test_the_tuned_prefix_applies_dropout_then_layernorm_as_magma():
    """MAGMA's image prefix (Aleph-Alpha/magma, ``magma/image_prefix.py``) is the projection, then
    dropout, then LayerNorm: in training every image token still reaches the LM normalised. The
    other order would zero entries after the norm and scale the rest by 1 / (1 - p)."""
    torch.manual_seed(0)
    mapping = AdaptedMap(8, 32, LAYOUT, 0.5, layers=2, reduction=4).train()
    features = torch.randn(4, 3, 8)
    tokens = mapping(features)
    assert not torch.equal(tokens, mapping(features))  # dropout is on
    torch.testing.assert_close(tokens.mean(-1), torch.zeros(4, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(tokens.var(-1, unbiased=False), torch.ones(4, 3), atol=1e-3, rtol=0)
    assert mapping.config()["prefix"] == "dropout, LayerNorm"


def test_a_saved_tuned_baseline_loads_with_its_norm_and_adapters(tiny_llama, tmp_path):
    lm, _ = tiny_llama
    mapping = perturb(tuned_map(lm))
    mapping.save(tmp_path, extra={"key": "k"})
    loaded = load_map(tmp_path).eval()
    assert type(loaded) is AdaptedMap and loaded.config() == mapping.config()
    assert loaded.config()["adapters"] == {"layers": 2, "reduction": 4}
    assert loaded.config()["prefix"] == "dropout, LayerNorm"
    for name, value in mapping.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    features = torch.randn(2, 3, 8)
    torch.testing.assert_close(loaded(features), mapping(features))


def test_captions_and_answers_come_from_the_adapted_lm(tiny_llama):
    """A tuned baseline whose adapters move every hidden state captions and answers unlike the same
    prefix without them: evaluation runs the adapters (they are not left out of the LM)."""
    lm, tokenizer = tiny_llama
    features = np.random.default_rng(1).standard_normal((4, 3, 8)).astype(np.float16)
    with_adapters = perturb(tuned_map(lm))
    prefix_only = tuned_map(lm)
    prefix_only.load_state_dict(
        {k: v for k, v in with_adapters.state_dict().items() if "adapters" not in k}, strict=False
    )
    caption = {
        name: greedy_captions(m, lm, tokenizer, torch.from_numpy(features), prompt="", max_new_tokens=4, device="cpu")
        for name, m in (("adapters", with_adapters), ("prefix", prefix_only))
    }
    assert caption["adapters"] != caption["prefix"]
    questions = pd.DataFrame(
        {"row": [0, 1, 2, 3], "image": [0, 1, 2, 3], "question": ["what color?"] * 4, "answers": [["red blue"]] * 4}
    )
    answers = {
        name: answer_questions(
            lm,
            tokenizer,
            questions,
            questions,
            draw_support(questions, 4, 4, 0),
            shots=1,
            batch_size=4,
            max_new_tokens=2,
            linear_map=m,
            features=features,
            support_features=features,
        )["prediction"].tolist()
        for name, m in (("adapters", with_adapters), ("prefix", prefix_only))
    }
    assert answers["adapters"] != answers["prefix"]


def test_an_lm_without_a_feed_forward_block_per_layer_is_refused():
    class NoBlocks(torch.nn.Module):
        config = type("Config", (), {"num_hidden_layers": 2})()

    with pytest.raises(TypeError, match="found 0 blocks with a feed-forward `.mlp` for 2 layers"):
        feed_forward_blocks(NoBlocks())
