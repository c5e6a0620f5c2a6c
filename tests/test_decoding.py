"""pipeline/decoding.py: a left-padded batch decodes as each prompt alone, the caption prompt is
its string tokenized whole, decoding from shared prefixes stops once every row has ended, and a
closed vocabulary is scored as each whole prompt and candidate would be."""

import pytest
import torch

import pipeline.decoding
from pipeline.decoding import (
    candidate_log_likelihoods,
    embed_prompt,
    greedy_captions,
    greedy_generate,
    greedy_generate_shared,
    prefill_shared,
)
from pipeline.language_models import load_language_model
from tests.conftest import text_ids


def test_left_padded_batch_decodes_like_each_prompt_alone(prepared_lm):
    # float32: bfloat16 rounds a padded row's sums differently from the row alone.
    lm, tokenizer, _ = load_language_model(prepared_lm, "cpu", torch.float32)
    torch.manual_seed(0)
    image = torch.randn(3, lm.config.hidden_size) * 0.05
    prompts = [
        ["The capital of France is"],
        [image, " Q: what colour is the sky? A:"],
        ["Q: ", "How many legs does a cat have?", " A:"],
    ]
    batched = greedy_generate(lm, tokenizer, prompts, max_new_tokens=5)
    alone = [greedy_generate(lm, tokenizer, [p], max_new_tokens=5)[0] for p in prompts]
    assert batched == alone
    assert "Paris" in batched[0]


def test_caption_prompt_is_the_image_then_the_whole_prompt_string(monkeypatch, tiny_llama, counting_map):
    lm, tokenizer = tiny_llama
    prompts = []
    monkeypatch.setattr(pipeline.decoding, "greedy_generate", lambda lm, tok, p, **_: prompts.extend(p) or [""])
    features = torch.randn(2, 3, 16)
    for prompt in ("A picture of", ""):
        prompts.clear()
        greedy_captions(counting_map, lm, tokenizer, features, prompt=prompt, max_new_tokens=1, device="cpu")
        assert len(prompts) == 2 and all(p[0].shape == (3, 64) for p in prompts)
        expected = [tokenizer(prompt, add_special_tokens=False).input_ids] if prompt else []
        assert all(text_ids(tokenizer, p) == expected for p in prompts)


def _after(tokens: int):
    """An ``ended`` predicate true from a row's ``tokens``-th decoded token on."""
    seen = []
    return lambda text: seen.append(text) or len(seen) >= tokens


def test_shared_prefix_decoding_stops_once_every_row_has_ended(tiny_llama):
    lm, tokenizer = tiny_llama
    calls = []
    lm_calls = lm.register_forward_hook(lambda *_: calls.append(1))
    prefixes = [[torch.randn(3, 64), " Q: is it red? A: yes"], ["The sky is"]]
    suffixes, prefix_of = [" Q: what is it? A:", " Q: why? A:", " blue and"], [0, 0, 1]
    try:
        early = greedy_generate_shared(
            lm, tokenizer, prefixes, suffixes, prefix_of, max_new_tokens=10, ended=[_after(n) for n in (1, 3, 2)]
        )
        assert len(calls) == 1 + 3  # the prefixes, then one call per token until the last row ends
        calls.clear()
        full = greedy_generate_shared(
            lm, tokenizer, prefixes, suffixes, prefix_of, max_new_tokens=10, ended=[_after(99) for _ in suffixes]
        )
        assert len(calls) == 1 + 10
    finally:
        lm_calls.remove()
    assert all(f.startswith(e) for e, f in zip(early, full, strict=True))


@pytest.mark.parametrize("sequences_per_call", [1, 256])
def test_candidate_likelihoods_are_each_whole_prompt_and_candidates_log_probability(tiny_llama, sequences_per_call):
    lm, tokenizer = tiny_llama
    torch.manual_seed(0)
    prefixes = [[torch.randn(3, 64), " Q: is it red? A: yes"], ["The sky is"], []]
    suffixes, prefix_of = [" Q: what is it? A:", " Q: why not? A:", " blue and", " Q: shape? A:"], [0, 0, 1, 2]
    candidates = [tokenizer(f" {a}", add_special_tokens=False).input_ids for a in ("red", "teal", "a red circle")]
    assert sorted(len(c) for c in candidates) == [1, 2, 3]  # one token, two, and three
    prompts = prefill_shared(lm, tokenizer, prefixes, suffixes, prefix_of)
    cached = [layer.keys.clone() for layer in prompts.cache.layers]
    scores = candidate_log_likelihoods(lm, prompts, candidates, sequences_per_call=sequences_per_call)
    assert all(torch.equal(c, layer.keys) for c, layer in zip(cached, prompts.cache.layers, strict=True))
    embed = lm.get_input_embeddings()
    for row, (p, suffix) in enumerate(zip(prefix_of, suffixes, strict=True)):
        prompt = embed_prompt(lm, tokenizer, [*prefixes[p], suffix])
        for k, ids in enumerate(candidates):
            ids = torch.as_tensor(ids)
            with torch.inference_mode():
                logits = lm(inputs_embeds=torch.cat([prompt, embed(ids)])[None]).logits[0]
            predicted = logits[len(prompt) - 1 : -1].log_softmax(-1)
            expected = predicted.gather(-1, ids[:, None]).sum()
            assert scores[row, k].item() == pytest.approx(expected.item(), abs=1e-4)
