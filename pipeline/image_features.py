"""Feature extraction: images through a frozen backbone, chunk by chunk, into a resumable store.

The store is anything with ``pending_chunks()``, ``chunk_slice(chunk)`` and
``write_chunk(chunk, features, reasons)`` (storage.feature_store.FeatureArray in the pipeline), so
this loop knows nothing about Zarr.

Three stages overlap: DataLoader workers decode and resize images to uint8 tensors; the main thread
normalises them on the device, runs the model and copies float16 features back; one background
thread compresses and writes finished chunks, at most ``WRITES_IN_FLIGHT`` behind. A crash loses at
most the chunks not yet written.
"""

import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from pipeline.datasets import load_image
from pipeline.devices import autocast, compute_dtype
from pipeline.encoders import Backbone

WRITES_IN_FLIGHT = 2  # chunks queued for the writer: bounds host memory to about 3 chunks


def chunk_rows_of(features) -> int:
    """Rows per stored chunk of a feature array (Zarr, ``ConcatenatedFeatures``); a plain array is one chunk."""
    return features.chunks[0] if hasattr(features, "chunks") else max(len(features), 1)


class ChunkedRows:
    """Rows of a chunked feature array, read as whole stored chunks.

    Rows come back in the order asked; each call reads the chunks it needs in ascending order and
    keeps the last one, so successive calls for ascending rows (a split captioned in order,
    questions sorted by image) decompress every stored chunk once, and memory holds one chunk plus
    the rows asked for, whatever the array's length.
    """

    def __init__(self, features):
        self.features = features
        self.chunk_rows = chunk_rows_of(features)
        self._chunk, self._data = None, None

    def __getitem__(self, rows) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return np.empty((0, *self.features.shape[1:]), dtype=self.features.dtype)
        chunk_of = rows // self.chunk_rows
        out = None
        for chunk in np.unique(chunk_of):
            if chunk != self._chunk:
                start = int(chunk) * self.chunk_rows
                self._chunk, self._data = chunk, np.asarray(self.features[start : start + self.chunk_rows])
            if out is None:
                out = np.empty((len(rows), *self._data.shape[1:]), dtype=self._data.dtype)
            here = chunk_of == chunk
            out[here] = self._data[rows[here] - int(chunk) * self.chunk_rows]
        return out


def rows_by_id(store_ids, image_ids, where: str) -> np.ndarray:
    """The rows of a feature store holding ``image_ids`` (records join by id, never by position)."""
    row_of = {image_id: row for row, image_id in enumerate(np.asarray(store_ids).tolist())}
    missing = [i for i in image_ids if i not in row_of]
    if missing:
        raise ValueError(
            f"{where}: {len(missing)} image ids have no feature row (first: {missing[0]!r}); "
            "the features were extracted from another manifest: materialize image_features again"
        )
    return np.array([row_of[i] for i in image_ids], dtype=np.int64)


@dataclass
class ExtractionStats:
    chunks_computed: int = 0
    images_encoded: int = 0
    skipped: dict[int, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.images_encoded / self.seconds if self.seconds else 0.0


class ImageFiles(Dataset):
    """Image ``i`` as (i, uint8 pixels or None, skip reason or None); runs in DataLoader workers."""

    def __init__(self, paths: list[str], pixels: Callable):
        self.paths, self.pixels = paths, pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int) -> tuple[int, torch.Tensor | None, str | None]:
        image, reason = load_image(self.paths[row])
        if image is None:
            return row, None, f"{self.paths[row]}: {reason}"
        try:  # inside the per-image guard: one bad image never costs the rest of its batch
            return row, self.pixels(image), None
        except Exception as error:  # MemoryError included
            return row, None, f"{self.paths[row]}: preprocessing failed: {type(error).__name__}: {error}"


def collate_images(items) -> tuple[list[int], torch.Tensor | None, dict[int, str]]:
    """A batch: the rows that decoded, their pixels stacked (None if none did), the others' reasons."""
    rows = [row for row, pixels, _ in items if pixels is not None]
    pixels = torch.stack([pixels for _, pixels, _ in items if pixels is not None]) if rows else None
    return rows, pixels, {row: reason for row, _, reason in items if reason is not None}


@torch.inference_mode()
def encode_chunks(
    backbone: Backbone,
    paths: list[str],
    chunks: list[slice],
    *,
    device: str,
    batch_size: int,
    workers: int,
    dtype: torch.dtype | None = None,
) -> Iterator[tuple[slice, np.ndarray, dict[int, str]]]:
    """(rows, float16 features (rows, positions, dim), {row: skip reason}) for each slice of ``paths``
    in ``chunks``, in order; batches never cross a chunk, so a chunk's numbers do not depend on which
    other chunks are pending. Unreadable images give zero rows and a reason. The model computes in
    ``dtype`` (``compute_dtype(device)`` by default)."""
    dtype = dtype or compute_dtype(device)
    batches = [
        list(range(start, min(start + batch_size, rows.stop)))
        for rows in chunks
        for start in range(rows.start, rows.stop, batch_size)
    ]
    loader = DataLoader(
        ImageFiles(paths, backbone.preprocessing.pixels),
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=collate_images,
        pin_memory=torch.device(device).type == "cuda",  # page-locked, so the copy below can be asynchronous
    )
    layout = backbone.spec.layout
    loaded = iter(loader)
    for rows in chunks:
        out = np.zeros((rows.stop - rows.start, layout.positions, backbone.spec.feature_dim), dtype=np.float16)
        reasons = {}
        for _ in range(-(-(rows.stop - rows.start) // batch_size)):
            batch_rows, pixels, batch_reasons = next(loaded)
            reasons.update(batch_reasons)
            if pixels is None:
                continue
            images = backbone.normalise(pixels.to(device, non_blocking=True))
            with autocast(device, dtype):
                features = backbone.model(images)
            out[np.asarray(batch_rows) - rows.start] = features.to(torch.float16).cpu().numpy()
        yield rows, out, reasons


def extract_image_features(
    backbone: Backbone,
    image_paths: list[str],
    store,
    *,
    device: str,
    batch_size: int,
    workers: int = 0,
    dtype: torch.dtype | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
) -> ExtractionStats:
    """Encodes every pending chunk of ``store``; finished chunks are never recomputed. ``workers``
    DataLoader processes decode images (0: the main process does); the model computes in ``dtype``
    (``compute_dtype(device)`` by default)."""
    pending = store.pending_chunks()
    stats = ExtractionStats()
    started = time.perf_counter()
    written: deque[tuple[Future, slice, dict[int, str]]] = deque()

    def finish_oldest():
        future, rows, reasons = written.popleft()
        future.result()  # a failed write raises here, in the caller
        stats.chunks_computed += 1
        stats.images_encoded += (rows.stop - rows.start) - len(reasons)
        stats.skipped.update(reasons)
        if on_chunk:
            on_chunk(stats.chunks_computed, len(pending))

    chunks = encode_chunks(
        backbone,
        image_paths,
        [store.chunk_slice(c) for c in pending],
        device=device,
        batch_size=batch_size,
        workers=workers,
        dtype=dtype,
    )
    # One writer thread, so chunks are written in order; leaving the block waits for every write.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="feature-writer") as writer:
        try:
            for chunk, (rows, features, reasons) in zip(
                tqdm(pending, desc=f"{backbone.spec.name} features", unit="chunk"), chunks, strict=True
            ):
                if len(written) == WRITES_IN_FLIGHT:
                    finish_oldest()
                written.append((writer.submit(store.write_chunk, chunk, features, reasons), rows, reasons))
            while written:
                finish_oldest()
        finally:  # on an error, queued writes are dropped (their chunks stay pending)
            for future, _, _ in written:
                future.cancel()
    stats.seconds = time.perf_counter() - started
    return stats
