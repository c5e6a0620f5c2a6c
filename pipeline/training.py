"""Training the linear map on cached features (nanoGPT style: one explicit loop, no framework).

Input per example: ``[image tokens, caption tokens, EOS, EOS padding]``; no text prompt. Loss is
the LM's causal cross-entropy on the caption tokens and the first EOS only: image positions and
everything after the first EOS are masked to -100. Only the linear map has gradients.
"""

import itertools
import math
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.adapters import adapted
from pipeline.config import TrainConfig
from pipeline.devices import autocast
from pipeline.image_features import chunk_rows_of, rows_by_id
from pipeline.linear_map import LinearMap

IGNORE = -100


def training_set(parts: list) -> tuple:
    """Every train part's features as one array, with each row's caption and the trainable rows.

    ``parts`` is a list of ``(store, manifest)``: a FeatureArray and its part's manifest (image_id,
    reference captions). A manifest record joins its feature row by image id; a row is trainable
    when its image was encoded and it has a reference caption (the first one is trained on).
    """
    from storage.feature_store import OK, ConcatenatedFeatures

    features = ConcatenatedFeatures([store for store, _ in parts])
    captions = [""] * len(features)
    rows = []
    for index, (store, manifest) in enumerate(parts):
        with_caption = manifest[manifest["captions"].str.len() > 0]
        local = rows_by_id(store.ids, with_caption["image_id"].tolist(), "training set")
        encoded = store.status[local] == OK
        trainable = features.global_rows(index, local[encoded])
        for row, references in zip(trainable, with_caption["captions"][encoded], strict=True):
            captions[row] = references[0]
        rows.append(np.sort(trainable))
    return features, captions, np.concatenate(rows) if rows else np.zeros(0, np.int64)


def lr_at(step: int, *, lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up over ``warmup_steps``, then linear decay to zero at ``total_steps``."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    return lr * max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def caption_tokens(tokenizer, captions: list[str], max_tokens: int) -> torch.Tensor:
    """Token ids (B, L): each caption, then EOS, padded with EOS to the longest (at most max_tokens)."""
    eos = tokenizer.eos_token_id
    rows = [tokenizer(c, add_special_tokens=False).input_ids[: max_tokens - 1] + [eos] for c in captions]
    length = max(len(r) for r in rows)
    return torch.tensor([r + [eos] * (length - len(r)) for r in rows], dtype=torch.long)


def caption_labels(caption_ids: torch.Tensor, num_image_tokens: int, eos_id: int) -> torch.Tensor:
    """Labels (B, num_image_tokens + L): caption tokens up to and including the first EOS."""
    is_eos = caption_ids == eos_id
    # Position of the first EOS per row (the row's length if it has none).
    first_eos = torch.where(is_eos.any(1), is_eos.int().argmax(1), caption_ids.shape[1])
    after_first_eos = torch.arange(caption_ids.shape[1]).unsqueeze(0) > first_eos.unsqueeze(1)
    labels = caption_ids.masked_fill(after_first_eos, IGNORE)
    image = torch.full((caption_ids.shape[0], num_image_tokens), IGNORE, dtype=torch.long)
    return torch.cat([image, labels], dim=1)


def batch_plan(
    rows: np.ndarray, chunk_rows: int, batch_size: int, buffer_chunks: int, seed: int
) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
    """Endless shuffled batches of row indices that never need the whole array in memory.

    Each epoch visits the storage chunks in a seeded random order, ``buffer_chunks`` at a time, and
    shuffles rows within that buffer (a buffer's rows that do not fill a last batch wait for the
    next epoch's grouping). Yields (buffer's chunk ids, row indices). The sequence depends only on
    the seed, so a resumed run skips ahead to the same batches. Raises ``ValueError`` naming the
    sizes when no batch can ever be formed, instead of looping forever.
    """
    rows = np.sort(np.asarray(rows, dtype=np.int64))
    if batch_size < 1 or buffer_chunks < 1 or chunk_rows < 1:
        raise ValueError(
            f"batch_size ({batch_size}), buffer_chunks ({buffer_chunks}) and chunk_rows ({chunk_rows}) must be positive"
        )
    if len(rows) < batch_size:
        raise ValueError(
            f"{len(rows)} trainable rows cannot fill one batch of {batch_size}: lower batch_size "
            "or add training data (a part whose images are all unreadable has no trainable rows)"
        )
    if buffer_chunks * chunk_rows < batch_size:
        raise ValueError(
            f"a shuffle buffer of {buffer_chunks} chunks x {chunk_rows} rows holds fewer rows than "
            f"one batch of {batch_size}: raise buffer_chunks to at least {-(-batch_size // chunk_rows)}"
        )
    # Rows are sorted, so each chunk's rows are one contiguous run: O(rows) grouping.
    chunk_of = rows // chunk_rows
    starts = np.flatnonzero(np.diff(chunk_of)) + 1
    chunk_ids = chunk_of[np.concatenate([[0], starts])]
    by_chunk = dict(zip(chunk_ids.tolist(), np.split(rows, starts), strict=True))
    batches = 0
    for epoch in itertools.count():
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(chunk_ids)
        for start in range(0, len(order), buffer_chunks):
            buffer = tuple(int(c) for c in np.sort(order[start : start + buffer_chunks]))
            buffer_rows = rng.permutation(np.concatenate([by_chunk[c] for c in buffer]))
            for b in range(0, len(buffer_rows) - batch_size + 1, batch_size):
                batches += 1
                yield buffer, np.sort(buffer_rows[b : b + batch_size])
        if not batches:  # after the first epoch: later groupings of the same chunks can fill a batch too
            raise ValueError(
                f"no shuffle buffer of {buffer_chunks} chunks holds {batch_size} trainable rows "
                f"({len(rows)} rows spread over {len(chunk_ids)} chunks of {chunk_rows}): raise "
                "buffer_chunks or lower batch_size"
            )


def training_batches(
    features,
    rows: np.ndarray,
    *,
    batch_size: int,
    buffer_chunks: int,
    seed: int,
    start: int = 0,
    stop: int | None = None,
    prefetch: bool = True,
    share: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Iterator[tuple[tuple[int, ...], np.ndarray, np.ndarray]]:
    """(buffer's chunk ids, row indices, features[row indices]) of batches ``start`` to ``stop``
    (None: endless) of ``batch_plan``.

    ``features`` is any array with numpy slicing and ``chunks`` (Zarr, ``ConcatenatedFeatures``;
    a plain array is one chunk). Each buffer is read as whole stored chunks, once; with
    ``prefetch`` the next buffer is read on a thread while the current one trains. ``share`` maps
    a batch's rows to the rows this process trains on (a data-parallel rank's share): only those
    rows are yielded, and only the chunks that hold them are read.
    """
    chunk_rows = chunk_rows_of(features)
    share = share or (lambda batch_rows: batch_rows)
    plan = itertools.islice(batch_plan(rows, chunk_rows, batch_size, buffer_chunks, seed), start, stop)
    # A buffer's batches are few (buffer rows / batch size), so each group is listed up front.
    groups = (
        (buffer, [share(r) for _, r in batches]) for buffer, batches in itertools.groupby(plan, key=lambda b: b[0])
    )

    def read(batches: list[np.ndarray]) -> dict[int, np.ndarray]:
        needed = np.unique(np.concatenate(batches) // chunk_rows)
        return {int(c): np.asarray(features[c * chunk_rows : (c + 1) * chunk_rows]) for c in needed}

    with ThreadPoolExecutor(max_workers=1) as pool:

        def later(batches):  # the read, started now on the thread (prefetch) or when its result is asked for
            return pool.submit(read, batches).result if prefetch else lambda: read(batches)

        current = next(groups, None)
        pending = later(current[1]) if current else None
        while current is not None:
            chunks = pending()
            upcoming = next(groups, None)
            pending = later(upcoming[1]) if upcoming else None
            buffer, batches = current
            for batch_rows in batches:
                yield buffer, batch_rows, np.stack([chunks[r // chunk_rows][r % chunk_rows] for r in batch_rows])
            current = upcoming


def caption_loss(
    linear_map: LinearMap,
    lm,
    features: np.ndarray,
    ids: torch.Tensor,
    labels: torch.Tensor,
    device: str,
    all_logits: bool = False,
) -> torch.Tensor:
    """The captioning LM loss of one batch: ``[image tokens, caption]`` through the frozen LM.

    The LM head runs only at the positions that predict a label (a caption token or the first
    EOS): at GPT-J's 144 image positions and the EOS padding there is no loss to compute.
    ``all_logits`` computes them everywhere, through the model's own loss (the reference).
    """
    embed = lm.get_input_embeddings()
    with autocast(device, embed.weight.dtype):  # the map's output in the frozen LM's dtype
        image_tokens = linear_map(torch.from_numpy(features).float().to(device))
        inputs = torch.cat([image_tokens.to(embed.weight.dtype), embed(ids.to(device))], dim=1)
        labels = labels.to(device)
        if all_logits:
            return lm(inputs_embeds=inputs, labels=labels).loss
        hidden = lm.base_model(inputs_embeds=inputs).last_hidden_state
        targets = labels[:, 1:]
        predicting = targets != IGNORE  # position t predicts label t + 1
        logits = lm.get_output_embeddings()(hidden[:, :-1][predicting])
        return torch.nn.functional.cross_entropy(logits.float(), targets[predicting])


def activation_bytes_per_token(lm, linear_map: LinearMap, features: np.ndarray, ids, labels, device: str) -> float:
    """Activation memory per token of a training step without recompute, measured on CUDA with
    one example (peak allocated during its forward and backward, less what was allocated before)."""
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    caption_loss(linear_map, lm, features[:1], ids[:1], labels[:1], device).backward()
    linear_map.zero_grad(set_to_none=True)
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - before) / labels.shape[1]


def needs_recompute(bytes_per_token: float | None, tokens: int, device: str, headroom: float = 0.8) -> bool:
    """Gradient checkpointing only when a micro-batch's activations would not fit in what is free
    on the device (with ``headroom``); on CPU never (host memory, and nothing to gain)."""
    if bytes_per_token is None or not device.startswith("cuda"):
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return bytes_per_token * tokens > headroom * free


@dataclass
class TrainingResult:
    losses: list[float] = field(default_factory=list)
    steps_run: int = 0
    resumed_from: int = 0
    seconds: float = 0.0
    samples: int = 0
    buffers: int = 0  # shuffle buffers loaded by this run
    recompute: bool = False  # gradient checkpointing was on
    activation_bytes_per_token: float | None = None  # measured on CUDA, decides ``recompute``

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0

    def summary(self, **about) -> dict:
        """What the run reports, stored beside its map (JSON): ``about`` (its settings, data and
        machine) and its own measurements."""
        return {
            **about,
            "losses": self.losses,
            "resumed_from_step": self.resumed_from,
            "samples_per_second": round(self.samples_per_second, 2),
            "shuffle_buffers": self.buffers,
            "recompute": self.recompute,
            "activation_bytes_per_token": self.activation_bytes_per_token,
        }


def final_loss(losses: list[float], window: int) -> float:
    """The mean loss of the last ``window`` steps: a single step's loss is one batch's."""
    return float(np.mean(losses[-window:]))


@dataclass(frozen=True)
class Rank:
    """This process's place among the data-parallel processes training one map (``world`` of them).

    Every process walks the same batches. A batch is cut into micro-batches as on one process, and
    rank r trains the r-th contiguous block of them, so 1 and N processes compute the same
    micro-batches from the same rows (and, seeded per micro-batch, the same dropout), and a rank's
    rows, sorted, come from about 1/N of the buffer's chunks. The ranks' weighted losses and
    gradients are summed: the full batch's, as gradient accumulation on one process.
    """

    index: int = 0
    world: int = 1

    def micro_batches(self, rows: int, micro: int) -> range:
        """The indices of this rank's micro-batches of a batch of ``rows`` rows."""
        count = -(-rows // micro)
        if count < self.world:
            raise ValueError(
                f"a batch of {rows} makes {count} micro-batches of {micro}, fewer than the {self.world} "
                f"processes: set training.micro_batch_size to at most {rows // self.world}"
            )
        return range(self.index * count // self.world, (self.index + 1) * count // self.world)

    def share(self, micro: int) -> Callable[[np.ndarray], np.ndarray]:
        """A batch's rows -> this rank's rows (its micro-batches' rows)."""

        def rows_of(batch_rows: np.ndarray) -> np.ndarray:
            mine = self.micro_batches(len(batch_rows), micro)
            return batch_rows[mine.start * micro : mine.stop * micro]

        return rows_of

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks, in place (one all-reduce; nothing on one process)."""
        if self.world > 1:
            torch.distributed.all_reduce(tensor)
        return tensor


def _save_state(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a kill mid-save leaves the previous checkpoint intact


def _set_recompute(
    lm, linear_map, micro_batch, device: str, recompute: bool | None, tokens: int, result: TrainingResult
) -> bool:
    """Turns gradient checkpointing on for this run if asked, or when ``recompute`` is None, if the
    longest micro-batch (``tokens``) would not fit at the activation memory per token measured here."""
    features, ids, labels = micro_batch
    if recompute is None:
        if device.startswith("cuda"):
            result.activation_bytes_per_token = activation_bytes_per_token(
                lm, linear_map, features, ids, labels, device
            )
        recompute = needs_recompute(result.activation_bytes_per_token, tokens, device)
    if recompute:
        lm.activation_checkpointing_enable()
        # Hugging Face checkpoints activations only in training mode; the frozen LM's dropout stays off.
        lm.train()
        for module in lm.modules():
            if isinstance(module, torch.nn.Dropout):
                module.eval()
    return recompute


def train_linear_map(
    linear_map: LinearMap,
    lm,
    tokenizer,
    features,
    captions: list[str],
    rows: np.ndarray,
    config: TrainConfig,
    *,
    seed: int,
    checkpoint_dir: str | Path,
    device: str,
    recompute: bool | None = None,
    prefetch: bool = True,
    all_logits: bool = False,
    rank: Rank = Rank(),
    on_step: Callable[[int, float], None] | None = None,
    on_checkpoint: Callable[[], None] | None = None,
) -> TrainingResult:
    """Trains ``linear_map`` (and its adapters, if it has them) in place on ``features[rows]`` (any
    array with numpy slicing, e.g. Zarr) with ``captions`` (aligned with ``features``), as ``config``
    says, from ``seed`` (batch order and dropout). Resumes from ``checkpoint_dir/state.pt``;
    ``on_checkpoint`` runs after each checkpoint is written (e.g. to upload it).

    ``recompute`` (gradient checkpointing) is decided from the activation memory per token
    measured on the first micro-batch when None; ``prefetch`` reads the next shuffle buffer on a
    thread; ``all_logits`` computes logits at every position (see ``caption_loss``). None of the
    three changes the result, only the speed and memory of a step.

    ``rank``: this process's place among data-parallel processes (``pipeline.distributed`` starts
    them; see ``Rank``). Each trains its share of every batch, and only rank 0 writes checkpoints;
    they hold the same state whatever the process count, so a run resumes under any other.
    """
    checkpoint = Path(checkpoint_dir) / "state.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    with adapted(lm, linear_map):  # the tuned baseline trains its adapters inside the LM
        linear_map.to(device).train()
        optimizer = torch.optim.AdamW(
            linear_map.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
        )
        result = TrainingResult()
        if checkpoint.exists():
            # weights_only: a checkpoint pulled from shared storage must not be able to run code.
            state = torch.load(checkpoint, map_location=device, weights_only=True)
            linear_map.load_state_dict(state["linear_map"])
            optimizer.load_state_dict(state["optimizer"])
            result.losses = state["losses"]
            result.resumed_from = len(result.losses)
        steps, batch_size = config.steps, config.batch_size
        micro = config.micro_batch_size or batch_size
        batches = training_batches(
            features,
            rows,
            batch_size=batch_size,
            buffer_chunks=config.buffer_chunks,
            seed=seed,
            start=result.resumed_from,
            stop=max(steps, result.resumed_from),
            prefetch=prefetch,
            share=rank.share(micro),
        )
        started = time.perf_counter()
        progress = tqdm(
            batches,
            total=steps,
            initial=result.resumed_from,
            desc="linear map",
            unit="step",
            disable=rank.index > 0,
        )
        parameters = [p for p in linear_map.parameters() if p.requires_grad]
        buffer = None
        for step, (batch_buffer, batch_rows, batch_features) in enumerate(progress, start=result.resumed_from):
            result.buffers += batch_buffer != buffer
            buffer = batch_buffer
            # Gradient accumulation: a large batch (LiMBeR's 2048) runs as micro-batches that fit the device.
            micro_batches = []
            for start in range(0, len(batch_rows), micro):
                ids = caption_tokens(
                    tokenizer, [captions[r] for r in batch_rows[start : start + micro]], config.max_caption_tokens
                )
                labels = caption_labels(ids, linear_map.layout.num_tokens, tokenizer.eos_token_id)
                micro_batches.append((batch_features[start : start + micro], ids, labels))
            if step == result.resumed_from:  # before the step's seed, so a resumed run's dropout is the same
                longest = micro * (linear_map.layout.num_tokens + config.max_caption_tokens)
                result.recompute = _set_recompute(lm, linear_map, micro_batches[0], device, recompute, longest, result)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, lr=config.lr, warmup_steps=config.warmup_steps, total_steps=steps)
            optimizer.zero_grad(set_to_none=True)
            # Each micro-batch's mean loss weighted by its share of the predicted tokens: the full batch's mean.
            predicted = sum(int((labels[:, 1:] != IGNORE).sum()) for _, _, labels in micro_batches)
            predicted = int(rank.sum(torch.tensor([predicted], device=device)))
            first_micro = rank.micro_batches(batch_size, micro).start
            loss = torch.zeros(1, dtype=torch.float64, device=device)
            for k, (micro_features, ids, labels) in enumerate(micro_batches, start=first_micro):
                # Dropout depends on the step and the micro-batch only: resume, and any process count, is exact.
                torch.manual_seed(seed * 1_000_003 + step + k * 2**32)
                share = int((labels[:, 1:] != IGNORE).sum()) / predicted
                micro_loss = caption_loss(linear_map, lm, micro_features, ids, labels, device, all_logits) * share
                micro_loss.backward()
                loss += micro_loss.detach()
            if rank.world > 1:  # one all-reduce of every gradient and the loss
                grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in parameters]
                flat = rank.sum(torch.cat([g.reshape(-1) for g in grads] + [loss.to(grads[0].dtype)]))
                loss = flat[-1:]
                for p, summed in zip(parameters, flat[:-1].split([p.numel() for p in parameters]), strict=True):
                    p.grad = summed.view_as(p)
            loss = loss.item()
            torch.nn.utils.clip_grad_norm_(linear_map.parameters(), config.grad_clip)
            optimizer.step()

            result.losses.append(loss)
            result.steps_run += 1
            result.samples += batch_size
            progress.set_postfix(loss=f"{result.losses[-1]:.3f}")
            if on_step:
                on_step(step + 1, result.losses[-1])
            if rank.index == 0 and ((step + 1) % config.checkpoint_every == 0 or step + 1 == steps):
                _save_state(
                    checkpoint,
                    {
                        "linear_map": linear_map.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "losses": result.losses,
                    },
                )
                if on_checkpoint:
                    on_checkpoint()
        result.seconds = time.perf_counter() - started
        linear_map.eval()
        if result.recompute:
            lm.activation_checkpointing_disable()
        lm.eval()
        if not math.isfinite(result.losses[-1] if result.losses else 0.0):
            raise FloatingPointError(f"training diverged: last loss {result.losses[-1]}")
        return result
