"""Feature extraction: images through a frozen backbone, chunk by chunk, into a resumable store.

The store is anything with ``pending_chunks()``, ``chunk_slice(chunk)`` and
``write_chunk(chunk, features, reasons)`` (storage.feature_store.FeatureArray in the pipeline), so
this loop knows nothing about Zarr and a crash loses at most the chunk in flight.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.datasets import load_image
from pipeline.encoders import Backbone


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


@torch.inference_mode()
def encode_images(
    backbone: Backbone, paths: list[str], device: str, batch_size: int
) -> tuple[np.ndarray, dict[int, str]]:
    """Features (len(paths), positions, dim) for a list of image files; unreadable files give zero
    rows and a reason keyed by their index in ``paths``."""
    layout = backbone.spec.layout
    out = np.zeros((len(paths), layout.positions, backbone.spec.feature_dim), dtype=np.float32)
    reasons = {}
    for start in range(0, len(paths), batch_size):
        tensors, rows = [], []
        for row in range(start, min(start + batch_size, len(paths))):
            image, reason = load_image(paths[row])
            if image is not None:
                try:  # inside the per-image guard: one bad image never costs the rest of its batch
                    tensors.append(backbone.preprocess(image))
                except Exception as error:  # MemoryError included
                    reason = f"preprocessing failed: {type(error).__name__}: {error}"
            if reason:
                reasons[row] = f"{paths[row]}: {reason}"
                continue
            rows.append(row)
        if tensors:
            batch = torch.stack(tensors).to(device)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=batch.is_cuda):
                out[rows] = backbone.model(batch).float().cpu().numpy()
    return out, reasons


def extract_image_features(
    backbone: Backbone,
    image_paths: list[str],
    store,
    *,
    device: str,
    batch_size: int,
    on_chunk: Callable[[int, int], None] | None = None,
) -> ExtractionStats:
    """Encodes every pending chunk of ``store``; finished chunks are never recomputed."""
    pending = store.pending_chunks()
    stats = ExtractionStats()
    started = time.perf_counter()
    for done, chunk in enumerate(tqdm(pending, desc=f"{backbone.spec.name} features", unit="chunk"), start=1):
        rows = store.chunk_slice(chunk)
        features, reasons = encode_images(backbone, image_paths[rows], device, batch_size)
        reasons = {rows.start + row: reason for row, reason in reasons.items()}
        store.write_chunk(chunk, features, reasons)
        stats.chunks_computed += 1
        stats.images_encoded += (rows.stop - rows.start) - len(reasons)
        stats.skipped.update(reasons)
        if on_chunk:
            on_chunk(done, len(pending))
    stats.seconds = time.perf_counter() - started
    return stats
