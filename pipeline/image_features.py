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
def encode_images(backbone: Backbone, paths: list[str], device: str, batch_size: int) -> tuple[np.ndarray, dict[int, str]]:
    """Features (len(paths), positions, dim) for a list of image files; unreadable files give zero
    rows and a reason keyed by their index in ``paths``."""
    layout = backbone.spec.layout
    out = np.zeros((len(paths), layout.positions, backbone.spec.feature_dim), dtype=np.float32)
    reasons = {}
    for start in range(0, len(paths), batch_size):
        tensors, rows = [], []
        for row in range(start, min(start + batch_size, len(paths))):
            image, reason = load_image(paths[row])
            if image is None:
                reasons[row] = f"{paths[row]}: {reason}"
                continue
            tensors.append(backbone.preprocess(image))
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
