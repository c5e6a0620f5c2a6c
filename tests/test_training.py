import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from pipeline.encoders import TokenLayout
from pipeline.linear_map import LinearMap
from pipeline.training import IGNORE, batch_plan, caption_labels, caption_tokens, lr_at, train_linear_map


def test_labels_mask_image_positions_and_everything_after_the_first_eos():
    eos = 2
    ids = torch.tensor([[5, 6, 2, 2, 2], [7, 8, 9, 10, 2], [11, 2, 12, 2, 2]])
    labels = caption_labels(ids, num_image_tokens=3, eos_id=eos)
    assert labels.shape == (3, 8)
    assert (labels[:, :3] == IGNORE).all()
    assert labels[0, 3:].tolist() == [5, 6, 2, IGNORE, IGNORE]
    assert labels[1, 3:].tolist() == [7, 8, 9, 10, 2]
    # A token after the first EOS is masked even when it is not EOS.
    assert labels[2, 3:].tolist() == [11, 2, IGNORE, IGNORE, IGNORE]


def test_caption_tokens_end_with_eos_and_pad_with_eos(prepared_lm):
    tokenizer = AutoTokenizer.from_pretrained(prepared_lm / "checkpoint")
    ids = caption_tokens(tokenizer, ["a red circle", "a teal rectangle in a long caption"], max_tokens=5)
    eos = tokenizer.eos_token_id
    assert ids.shape[1] == 5
    assert ids[1, -1] == eos  # truncated to max_tokens - 1, then EOS
    short = tokenizer("a red circle", add_special_tokens=False).input_ids
    assert ids[0].tolist() == short + [eos] * (5 - len(short))


def test_lr_schedule_warms_up_then_decays_linearly_to_zero():
    lrs = [lr_at(s, lr=1.0, warmup_steps=10, total_steps=110) for s in range(110)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[60] == pytest.approx(0.5)
    assert lrs[109] == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_batch_plan_is_seeded_covers_rows_and_stays_in_its_buffer():
    rows = np.array([r for r in range(100) if r % 7])  # some rows unusable
    plan = batch_plan(rows, chunk_rows=10, batch_size=4, buffer_chunks=3, seed=1)
    first = [next(plan) for _ in range(20)]
    again = batch_plan(rows, chunk_rows=10, batch_size=4, buffer_chunks=3, seed=1)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(first, (next(again) for _ in range(20))))
    for buffer, batch in first:
        assert set(batch // 10) <= set(buffer) and len(buffer) <= 3
        assert set(batch) <= set(rows)
    epoch = batch_plan(rows, chunk_rows=10, batch_size=1, buffer_chunks=3, seed=1)
    seen = [next(epoch)[1][0] for _ in range(len(rows))]
    assert sorted(seen) == rows.tolist()


@pytest.fixture()
def tiny_setup(prepared_lm):
    tokenizer = AutoTokenizer.from_pretrained(prepared_lm / "checkpoint")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2,
                         initializer_range=0.2)  # large enough that input embeddings move the output
    lm = LlamaForCausalLM(config).eval().requires_grad_(False)
    features = np.random.default_rng(0).standard_normal((40, 1, 16)).astype(np.float16)
    captions = [f"a {c} circle" for c in ("red", "blue", "teal", "gray")] * 10
    return lm, tokenizer, features, captions


def _train(setup, directory, steps, stop_after=None, micro_batch_size=0, dropout=0.1):
    lm, tokenizer, features, captions = setup
    torch.manual_seed(1)
    linear_map = LinearMap(16, 32, TokenLayout("pooled", 1, 2), dropout=dropout)

    def on_step(step, loss):
        if stop_after is not None and step == stop_after:
            raise KeyboardInterrupt  # as if the process were stopped here

    result = train_linear_map(
        linear_map, lm, tokenizer, features, captions, np.arange(40), steps=steps, batch_size=4,
        micro_batch_size=micro_batch_size, lr=5e-2,
        warmup_steps=2, weight_decay=0.0, betas=(0.9, 0.95), grad_clip=1.0, max_caption_tokens=8,
        buffer_chunks=2, seed=0, checkpoint_every=3, checkpoint_dir=directory, device="cpu", on_step=on_step,
    )
    return linear_map, result


def test_training_lowers_the_loss_and_only_the_map_learns(tiny_setup, tmp_path):
    lm_before = {k: v.clone() for k, v in tiny_setup[0].state_dict().items()}
    _, result = _train(tiny_setup, tmp_path, steps=30)
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5]) - 0.5
    assert all(torch.equal(v, tiny_setup[0].state_dict()[k]) for k, v in lm_before.items())


def test_interrupted_training_resumes_to_the_same_result(tiny_setup, tmp_path):
    straight, full = _train(tiny_setup, tmp_path / "straight", steps=8)
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_setup, tmp_path / "resumed", steps=8, stop_after=5)  # last checkpoint: step 3
    resumed, rest = _train(tiny_setup, tmp_path / "resumed", steps=8)
    assert rest.resumed_from == 3 and rest.steps_run == 5
    assert rest.losses == pytest.approx(full.losses, rel=1e-5)
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value)


def test_micro_batches_accumulate_to_the_full_batch(tiny_setup, tmp_path):
    """Gradient accumulation (LiMBeR's batch of 2048 on one GPU) takes the same steps as one pass,
    with captions of different lengths (each micro-batch weighted by its share of the tokens)."""
    whole, full = _train(tiny_setup, tmp_path / "whole", steps=4, dropout=0.0)
    split, accumulated = _train(tiny_setup, tmp_path / "split", steps=4, micro_batch_size=2, dropout=0.0)
    assert accumulated.losses == pytest.approx(full.losses, rel=1e-4)
    for name, value in whole.state_dict().items():
        torch.testing.assert_close(split.state_dict()[name], value, rtol=1e-4, atol=1e-5)
