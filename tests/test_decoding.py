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


def test_shared_prefix_decoding_feeds_only_the_rows_still_running(tiny_llama):
    """One call for the prefixes, one for the suffixes, then one per token for the rows that have
    not ended, until none is left; the texts start the undisturbed decoding's."""
    lm, tokenizer = tiny_llama
    fed = []  # (rows, tokens) of each LM call

    def record(module, args, kwargs):
        fed.append(tuple(kwargs["inputs_embeds"].shape[:2]))

    prefixes = [[torch.randn(3, 64), " Q: is it red? A: yes"], ["The sky is"]]
    suffixes, prefix_of = [" Q: what is it? A:", " Q: why? A:", " blue and"], [0, 0, 1]
    prefix_tokens = max(len(embed_prompt(lm, tokenizer, p)) for p in prefixes)
    suffix_tokens = max(len(tokenizer(s, add_special_tokens=False).input_ids) for s in suffixes)
    hook = lm.register_forward_pre_hook(record, with_kwargs=True)
    try:
        early = greedy_generate_shared(
            lm, tokenizer, prefixes, suffixes, prefix_of, max_new_tokens=10, ended=[_after(n) for n in (1, 3, 2)]
        )
        # Rows end after 1, 3 and 2 tokens: two rows fed for the second token, one for the third.
        assert fed == [(2, prefix_tokens), (3, suffix_tokens), (2, 1), (1, 1)]
        fed.clear()
        full = greedy_generate_shared(
            lm, tokenizer, prefixes, suffixes, prefix_of, max_new_tokens=10, ended=[_after(99) for _ in suffixes]
        )
        assert fed == [(2, prefix_tokens), (3, suffix_tokens), *[(3, 1)] * 9]
    finally:
        hook.remove()
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


def test_bounded_candidate_scores_keep_each_rows_most_likely_and_skip_candidates_that_cannot_win(tiny_llama):
    lm, tokenizer = tiny_llama
    torch.manual_seed(0)
    prefixes = [[torch.randn(3, 64), " Q: is it red? A: yes"], ["The sky is"], []]
    suffixes, prefix_of = [" Q: what is it? A:", " Q: why not? A:", " blue and", " Q: shape? A:"], [0, 0, 1, 2]
    words = ("red", "blue", "no", "teal", "a red circle", "dark green")
    candidates = [tokenizer(f" {a}", add_special_tokens=False).input_ids for a in words]
    prompts = prefill_shared(lm, tokenizer, prefixes, suffixes, prefix_of)
    greedy = prompts.logits.argmax(-1)
    candidates.append([int(greedy[0]), int(greedy[1])])  # its first token is row 0's most likely: never skipped
    exact = candidate_log_likelihoods(lm, prompts, candidates)
    single = [k for k, c in enumerate(candidates) if len(c) == 1]
    longer = [k for k, c in enumerate(candidates) if len(c) > 1]
    first = prompts.logits.float().log_softmax(-1)[:, [c[0] for c in candidates]]
    may_win = first[:, longer] >= first[:, single].max(-1, keepdim=True).values
    assert 0 < may_win.sum() < may_win.numel()  # some (row, candidate) pairs are run, some skipped
    fed = []
    hook = lm.register_forward_pre_hook(
        lambda _, args, kwargs: fed.append(len(kwargs["inputs_embeds"])), with_kwargs=True
    )
    try:
        bounded = candidate_log_likelihoods(lm, prompts, candidates, bound=True)
    finally:
        hook.remove()
    assert sum(fed) == may_win.sum()  # only the pairs that can still win are run
    assert torch.equal(bounded.argmax(-1), exact.argmax(-1))
    kept = torch.ones_like(exact, dtype=torch.bool)
    kept[:, longer] = may_win
    assert torch.allclose(bounded[kept], exact[kept])
    assert (bounded[~kept] >= exact[~kept]).all()  # skipped: the first token's score, an upper bound
