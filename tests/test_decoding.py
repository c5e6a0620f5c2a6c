import torch

from pipeline.decoding import greedy_generate
from pipeline.language_models import load_language_model


def test_left_padded_batch_decodes_like_each_prompt_alone(prepared_lm):
    lm, tokenizer, _ = load_language_model(prepared_lm, "cpu")
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
