"""GPT-J's real class, at a tiny size, through the same training, captioning and VQA code as SmolLM2."""

import numpy as np
import pandas as pd
import torch
from transformers import AutoTokenizer, GPTJConfig, GPTJForCausalLM

from pipeline.decoding import greedy_captions
from pipeline.encoders import TokenLayout
from pipeline.language_models import language_model_spec
from pipeline.linear_map import LinearMap
from pipeline.training import train_linear_map
from pipeline.vqa import answer_questions, draw_support


def test_gpt_j_entry():
    spec = language_model_spec("gpt-j-6b")
    assert spec.source == "EleutherAI/gpt-j-6B" and spec.hidden_size == 4096 and spec.gradient_checkpointing


def test_tiny_gpt_j_trains_captions_and_answers(prepared_lm, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(prepared_lm / "checkpoint")
    torch.manual_seed(0)
    lm = GPTJForCausalLM(GPTJConfig(vocab_size=len(tokenizer), n_embd=64, n_layer=2, n_head=4, rotary_dim=8,
                                    n_positions=256, bos_token_id=tokenizer.eos_token_id,
                                    eos_token_id=tokenizer.eos_token_id)).eval().requires_grad_(False)
    features = np.random.default_rng(0).standard_normal((16, 3, 8)).astype(np.float16)
    linear_map = LinearMap(8, 64, TokenLayout("grid", 3, 1))
    result = train_linear_map(
        linear_map, lm, tokenizer, features, ["a red circle", "a blue square"] * 8, np.arange(16), steps=3,
        batch_size=4, lr=1e-3, warmup_steps=1, weight_decay=0.0, betas=(0.9, 0.95), grad_clip=1.0,
        max_caption_tokens=8, buffer_chunks=1, seed=0, checkpoint_every=3, checkpoint_dir=tmp_path, device="cpu",
    )
    assert len(result.losses) == 3 and np.isfinite(result.losses).all()

    captions = greedy_captions(linear_map, lm, tokenizer, torch.from_numpy(features[:2]), prompt="A picture of",
                               max_new_tokens=3, device="cpu")
    assert len(captions) == 2 and all(isinstance(c, str) for c in captions)

    questions = pd.DataFrame({"row": [0, 1], "question": ["what color?", "what shape?"],
                              "answers": [["red"], ["square"]]})
    answers = answer_questions(lm, tokenizer, questions, questions, draw_support(questions, 2, 4, 0), shots=2,
                               batch_size=2, max_new_tokens=2, linear_map=linear_map, features=features,
                               support_features=features)
    assert len(answers) == 2
