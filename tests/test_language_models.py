import pytest

from pipeline.language_models import load_language_model, prepare_language_model


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
