import itertools
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from pipeline.config import TrainConfig
from pipeline.encoders import TokenLayout
from pipeline.linear_map import LinearMap
from pipeline.training import (
    IGNORE,
    batch_plan,
    caption_labels,
    caption_loss,
    caption_tokens,
    lr_at,
    needs_recompute,
    train_linear_map,
    training_batches,
)
from storage.feature_store import ConcatenatedFeatures, FeatureArray
from tests.tiny_models import tiny_lm


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
    assert all(a >= b for a, b in zip(lrs[10:-1], lrs[11:], strict=True))


def test_batch_plan_is_seeded_covers_rows_and_stays_in_its_buffer():
    rows = np.array([r for r in range(100) if r % 7])  # some rows unusable
    plan = batch_plan(rows, chunk_rows=10, batch_size=4, buffer_chunks=3, seed=1)
    first = [next(plan) for _ in range(20)]
    again = batch_plan(rows, chunk_rows=10, batch_size=4, buffer_chunks=3, seed=1)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(first, (next(again) for _ in range(20)), strict=True))
    for buffer, batch in first:
        assert set(batch // 10) <= set(buffer) and len(buffer) <= 3
        assert set(batch) <= set(rows)
    epoch = batch_plan(rows, chunk_rows=10, batch_size=1, buffer_chunks=3, seed=1)
    seen = [next(epoch)[1][0] for _ in range(len(rows))]
    assert sorted(seen) == rows.tolist()


@pytest.fixture()
def tiny_setup(prepared_lm):
    lm, tokenizer = tiny_lm(prepared_lm / "checkpoint")
    features = np.random.default_rng(0).standard_normal((40, 1, 16)).astype(np.float16)
    captions = [f"a {c} circle" for c in ("red", "blue", "teal", "gray")] * 10
    return lm, tokenizer, features, captions


def _train(setup, directory, steps, stop_after=None, micro_batch_size=0, dropout=0.1, **speed):
    lm, tokenizer, features, captions = setup
    torch.manual_seed(1)
    linear_map = LinearMap(16, 32, TokenLayout("pooled", 1, 2), dropout=dropout)

    def on_step(step, loss):
        if stop_after is not None and step == stop_after:
            raise KeyboardInterrupt  # as if the process were stopped here

    result = train_linear_map(
        linear_map,
        lm,
        tokenizer,
        features,
        captions,
        np.arange(40),
        TrainConfig(
            steps=steps,
            batch_size=4,
            micro_batch_size=micro_batch_size,
            lr=5e-2,
            warmup_steps=2,
            max_caption_tokens=8,
            buffer_chunks=2,
            checkpoint_every=3,
        ),
        seed=0,
        checkpoint_dir=directory,
        device="cpu",
        on_step=on_step,
        **speed,
    )
    return linear_map, result


def test_training_lowers_the_loss_and_only_the_map_learns(tiny_setup, tmp_path):
    lm_before = {k: v.clone() for k, v in tiny_setup[0].state_dict().items()}
    _, result = _train(tiny_setup, tmp_path, steps=30)
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5]) - 0.5
    assert all(torch.equal(v, tiny_setup[0].state_dict()[k]) for k, v in lm_before.items())


def test_the_trained_map_carries_the_image_the_loss_on_shuffled_features_is_higher(tiny_setup, tmp_path):
    """Each image's features say its caption's colour: the trained map must use them, so the loss
    on each image's own features beats the loss on another image's by a margin (the test fails if
    training zeroes or drops the features)."""
    lm, tokenizer, _, captions = tiny_setup
    colour = np.arange(40) % 4
    features = (np.eye(16)[colour] * 4 + 0.1 * np.random.default_rng(0).standard_normal((40, 16)))[:, None]
    setup = (lm, tokenizer, features.astype(np.float16), captions)
    trained, _ = _train(setup, tmp_path, steps=60, dropout=0.0)
    ids = caption_tokens(tokenizer, captions, 8)
    labels = caption_labels(ids, trained.layout.num_tokens, tokenizer.eos_token_id)
    shuffled = features[np.random.default_rng(1).permutation(40)]
    with torch.no_grad():
        own = caption_loss(trained, lm, features.astype(np.float16), ids, labels, "cpu").item()
        other = caption_loss(trained, lm, shuffled.astype(np.float16), ids, labels, "cpu").item()
    assert own < other - 0.3, (own, other)


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


def test_the_fast_step_trains_the_same_map_as_the_reference_step(tiny_setup, tmp_path):
    """Logits only where a label is, no recompute and the prefetched buffer change the speed of a
    step, never its result: the same losses and weights as HF's own loss with checkpointing and
    synchronous reads."""
    fast, fast_run = _train(tiny_setup, tmp_path / "fast", steps=6, micro_batch_size=2)
    reference, reference_run = _train(
        tiny_setup, tmp_path / "reference", steps=6, micro_batch_size=2, recompute=True, prefetch=False, all_logits=True
    )
    assert (fast_run.recompute, reference_run.recompute) == (False, True)
    assert not tiny_setup[0].is_activation_checkpointing  # switched off again after the run
    assert fast_run.losses == pytest.approx(reference_run.losses, rel=1e-5)
    # Weights to the accumulation test's tolerance: AdamW divides by the root of the squared
    # gradients, so a rounding difference in a near-zero gradient moves its weight by up to ~lr x 1e-4.
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(fast.state_dict()[name], value, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("lm_fixture", ["tiny_setup", "tiny_gptj"])
def test_caption_loss_equals_the_models_own_loss_and_gradient(lm_fixture, request):
    lm, tokenizer = request.getfixturevalue(lm_fixture)[:2]
    torch.manual_seed(0)
    linear_map = LinearMap(16, lm.config.hidden_size, TokenLayout("grid", 3, 1), dropout=0.0)
    features = np.random.default_rng(0).standard_normal((3, 3, 16)).astype(np.float16)
    ids = caption_tokens(tokenizer, ["a red circle", "a blue triangle on the left", "gray"], 8)
    labels = caption_labels(ids, 3, tokenizer.eos_token_id)
    gradients = []
    for all_logits in (False, True):
        linear_map.zero_grad()
        loss = caption_loss(linear_map, lm, features, ids, labels, "cpu", all_logits)
        loss.backward()
        gradients.append((loss.detach(), linear_map.proj.weight.grad.clone()))
    (fast, fast_grad), (reference, reference_grad) = gradients
    torch.testing.assert_close(fast, reference)
    torch.testing.assert_close(fast_grad, reference_grad)


@pytest.mark.parametrize("recompute, passes", [(True, 2), (False, 1)])
def test_recompute_reruns_each_block_in_backward(tiny_setup, tmp_path, recompute, passes):
    calls = []
    # HF keeps a block's own hooks outside the checkpoint, and the recompute stops once it has the
    # tensors backward needs: count the start of each block's first submodule.
    hooks = [
        layer.self_attn.register_forward_pre_hook(lambda *_: calls.append(1)) for layer in tiny_setup[0].model.layers
    ]
    try:
        _, result = _train(tiny_setup, tmp_path, steps=1, recompute=recompute)
    finally:
        for hook in hooks:
            hook.remove()
    assert result.recompute == recompute
    assert len(calls) == passes * len(hooks)


def test_recompute_is_off_on_cpu_and_without_a_measurement():
    assert not needs_recompute(None, 10**9, "cuda")
    assert not needs_recompute(1e12, 10**9, "cpu")


def test_prefetched_batches_equal_synchronous_ones_and_stop_where_asked(sharded_store):
    features, rows, _ = sharded_store
    kwargs = dict(batch_size=2, buffer_chunks=1, seed=0, start=3, stop=15)
    prefetched = list(training_batches(features, rows, prefetch=True, **kwargs))
    synchronous = list(training_batches(features, rows, prefetch=False, **kwargs))
    assert len(prefetched) == len(synchronous) == 12
    for (a_buffer, a_rows, a), (b_buffer, b_rows, b) in zip(prefetched, synchronous, strict=True):
        assert a_buffer == b_buffer and np.array_equal(a_rows, b_rows) and np.array_equal(a, b)


# --- Training from real Zarr stores, across shards and shuffle buffers --------------------------

SHARD_ROWS, CHUNK_ROWS, DIM = (10, 9), 4, 8


@pytest.fixture()
def sharded_store(tmp_path):
    """Two CC3M-like train shards in Zarr (4-row chunks, an unreadable image in each), read as one
    array as the linear_map asset reads them: (array, trainable global rows, {global row: (shard, local row)})."""
    rng = np.random.default_rng(0)
    stores, rows, where = [], [], {}
    for shard, count in enumerate(SHARD_ROWS):
        store = FeatureArray.open(
            str(tmp_path / f"{shard:05d}.zarr"),
            [f"{shard}-{i}" for i in range(count)],
            positions=1,
            dim=DIM,
            chunk_rows=CHUNK_ROWS,
        )
        for chunk in range(store.num_chunks()):
            part = store.chunk_slice(chunk)
            skipped = {part.start: "corrupt image"} if chunk == 1 else {}
            store.write_chunk(chunk, rng.standard_normal((part.stop - part.start, 1, DIM)), skipped)
        stores.append(store)
    features = ConcatenatedFeatures(stores)
    for shard, store in enumerate(stores):
        local = np.flatnonzero(store.status == 1)
        rows.append(features.global_rows(shard, local))
        where.update({int(g): (shard, int(r)) for g, r in zip(rows[-1], local, strict=True)})
    return features, np.concatenate(rows), where


def test_every_batch_is_the_stores_rows_across_buffers_and_shards(sharded_store):
    features, rows, where = sharded_store
    plan = batch_plan(rows, CHUNK_ROWS, 2, 1, seed=0)
    buffers, shards = set(), set()
    for (buffer, batch_rows, batch), (planned_buffer, planned) in zip(
        itertools.islice(training_batches(features, rows, batch_size=2, buffer_chunks=1, seed=0), 30),
        itertools.islice(plan, 30),
        strict=True,
    ):
        assert buffer == planned_buffer and np.array_equal(batch_rows, planned)
        expected = [np.asarray(features.parts[where[r][0]].features[where[r][1]]) for r in batch_rows]
        np.testing.assert_array_equal(batch, np.stack(expected))
        buffers.add(buffer)
        shards |= {where[r][0] for r in batch_rows}
    assert len(buffers) >= 3 and shards == {0, 1}


def test_a_resumed_run_skips_to_the_same_batches(sharded_store):
    features, rows, _ = sharded_store
    straight = list(itertools.islice(training_batches(features, rows, batch_size=2, buffer_chunks=1, seed=0), 12))
    resumed = list(
        itertools.islice(training_batches(features, rows, batch_size=2, buffer_chunks=1, seed=0, start=5), 7)
    )
    for (_, a_rows, a), (_, b_rows, b) in zip(straight[5:], resumed, strict=True):
        assert np.array_equal(a_rows, b_rows) and np.array_equal(a, b)


def test_training_on_zarr_shards_resumes_mid_buffer(sharded_store, tiny_gptj, tmp_path):
    """Several buffers of one chunk over two shards (the released demo never needed a second
    buffer, and crashed when it did); killed after a checkpoint that falls inside a buffer."""
    features, rows, _ = sharded_store
    lm, tokenizer = tiny_gptj
    captions = [f"a {c} shape" for c in ("red", "blue", "teal", "gray")] * 6
    plan = [buffer for buffer, _ in itertools.islice(batch_plan(rows, CHUNK_ROWS, 2, 1, seed=0), 9)]
    assert len(set(plan)) >= 3 and plan[4] == plan[5]  # the step-5 checkpoint is inside a buffer

    def train(directory, stop_after=None):
        torch.manual_seed(1)
        linear_map = LinearMap(DIM, 64, TokenLayout("pooled", 1, 2))

        def on_step(step, loss):
            if step == stop_after:
                raise KeyboardInterrupt

        result = train_linear_map(
            linear_map,
            lm,
            tokenizer,
            features,
            captions,
            rows,
            TrainConfig(
                steps=9,
                batch_size=2,
                lr=1e-2,
                warmup_steps=2,
                max_caption_tokens=8,
                buffer_chunks=1,
                checkpoint_every=5,
            ),
            seed=0,
            checkpoint_dir=directory,
            device="cpu",
            on_step=on_step,
        )
        return linear_map, result

    straight, full = train(tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "resumed", stop_after=7)
    resumed, rest = train(tmp_path / "resumed")
    assert rest.resumed_from == 5 and rest.steps_run == 4 and len(full.losses) == 9 and full.buffers >= 3
    assert rest.losses == pytest.approx(full.losses, rel=1e-5)
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value)


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "rows, chunk_rows, batch_size, buffer_chunks, message",
    [
        (np.array([], dtype=np.int64), 4, 2, 1, "0 trainable rows cannot fill one batch of 2"),
        (np.arange(3), 4, 8, 4, "3 trainable rows cannot fill one batch of 8"),
        (np.arange(100), 4, 16, 2, "2 chunks x 4 rows holds fewer rows than one batch of 16"),
        # One usable row per chunk (the rest unreadable): no buffer of 2 chunks ever holds 3 rows.
        (np.arange(0, 100, 10), 10, 3, 2, "no shuffle buffer of 2 chunks holds 3 trainable rows"),
    ],
)
def test_impossible_batch_plans_raise_naming_the_sizes(rows, chunk_rows, batch_size, buffer_chunks, message):
    with pytest.raises(ValueError, match=message):
        next(batch_plan(rows, chunk_rows, batch_size, buffer_chunks, seed=0))


class _Payload:
    """What a hostile checkpoint in a shared bucket could hold: unpickling it would run code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    torch.save({"linear_map": _Payload(marker)}, tmp_path / "state.pt")
    with pytest.raises(pickle.UnpicklingError):
        train_linear_map(
            LinearMap(16, 32, TokenLayout("pooled", 1, 2)),
            None,
            None,
            np.zeros((4, 1, 16)),
            [""] * 4,
            np.arange(4),
            TrainConfig(
                steps=1,
                batch_size=2,
                lr=1e-3,
                warmup_steps=1,
                max_caption_tokens=4,
                buffer_chunks=1,
                checkpoint_every=1,
            ),
            seed=0,
            checkpoint_dir=tmp_path,
            device="cpu",
        )
    assert not marker.exists()
