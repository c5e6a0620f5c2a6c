"""pipeline/language_models.py: the LM registry. SmolLM2 prepared once from its package and
reloaded fast; any Hugging Face LM by local path; GPT-J's real class, at a tiny size, through the
same training, captioning and VQA code as SmolLM2."""

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.config import TrainConfig
from pipeline.decoding import greedy_captions
from pipeline.encoders import TokenLayout
from pipeline.language_models import (
    fuse_activations,
    language_model_spec,
    load_language_model,
    prepare_language_model,
)
from pipeline.linear_map import LinearMap
from pipeline.training import train_linear_map
from pipeline.vqa import answer_questions, draw_support


def test_prepared_smollm2_loads_fast_frozen_and_generates(prepared_lm):
    lm, tokenizer, description = load_language_model(prepared_lm, "cpu")
    assert description["architecture"] == "LlamaForCausalLM" and description["hidden_size"] == 576
    assert not any(p.requires_grad for p in lm.parameters())
    assert (prepared_lm / "checkpoint" / "model.safetensors").exists()
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    text = tokenizer.decode(lm.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.eos_token_id)[0])
    assert "Paris" in text
    assert "quantization_config" not in lm.config.to_dict()  # a plain checkpoint, not the GGUF again


def test_preparing_again_reuses_the_checkpoint(prepared_lm):
    before = (prepared_lm / "checkpoint" / "model.safetensors").stat().st_mtime_ns
    prepare_language_model("smollm2-135m", prepared_lm)
    assert (prepared_lm / "checkpoint" / "model.safetensors").stat().st_mtime_ns == before


def test_absent_hugging_face_model_names_what_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="EleutherAI/gpt-j-6B.*huggingface"):
        prepare_language_model("EleutherAI/gpt-j-6B", tmp_path / "gptj")


def test_local_hugging_face_directory_is_accepted(prepared_lm, tmp_path):
    description = prepare_language_model(str(prepared_lm / "checkpoint"), tmp_path / "local")
    assert description["checkpoint"] == str(prepared_lm / "checkpoint")
    lm, _, _ = load_language_model(tmp_path / "local", "cpu")
    assert lm.config.hidden_size == 576


def test_gpt_j_entry():
    spec = language_model_spec("gpt-j-6b")
    assert spec.source == "EleutherAI/gpt-j-6B" and spec.hidden_size == 4096


def test_fused_gelu_computes_the_same_gpt_j(tiny_gptj):
    from transformers.activations import NewGELUActivation

    lm, _ = tiny_gptj
    inputs = torch.randn(2, 7, lm.config.n_embd)
    reference = lm(inputs_embeds=inputs).logits
    fused = fuse_activations(copy.deepcopy(lm))
    assert not any(isinstance(m, NewGELUActivation) for m in fused.modules())
    assert any(isinstance(m, NewGELUActivation) for m in lm.modules())
    torch.testing.assert_close(fused(inputs_embeds=inputs).logits, reference, rtol=1e-5, atol=1e-5)


def test_tiny_gpt_j_trains_captions_and_answers(tiny_gptj, tmp_path):
    lm, tokenizer = tiny_gptj
    torch.manual_seed(0)
    features = np.random.default_rng(0).standard_normal((16, 3, 8)).astype(np.float16)
    linear_map = LinearMap(8, 64, TokenLayout("grid", 3, 1))
    result = train_linear_map(
        linear_map,
        lm,
        tokenizer,
        features,
        ["a red circle", "a blue square"] * 8,
        np.arange(16),
        TrainConfig(
            steps=3,
            batch_size=4,
            lr=1e-3,
            warmup_steps=1,
            max_caption_tokens=8,
            buffer_chunks=1,
            checkpoint_every=3,
        ),
        seed=0,
        checkpoint_dir=tmp_path,
        device="cpu",
    )
    assert len(result.losses) == 3 and np.isfinite(result.losses).all()

    captions = greedy_captions(
        linear_map, lm, tokenizer, torch.from_numpy(features[:2]), prompt="A picture of", max_new_tokens=3, device="cpu"
    )
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)

    questions = pd.DataFrame(
        {"row": [0, 1], "image": [0, 1], "question": ["what color?", "what shape?"], "answers": [["red"], ["square"]]}
    )
    answers = answer_questions(
        lm,
        tokenizer,
        questions,
        questions,
        draw_support(questions, 2, 4, 0),
        shots=2,
        batch_size=2,
        max_new_tokens=2,
        linear_map=linear_map,
        features=features,
        support_features=features,
    )
    assert len(answers) == 2
