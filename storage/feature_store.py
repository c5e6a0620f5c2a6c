"""Image features in Zarr: one group per (backbone, split) partition, written chunk by chunk.

Layout of a partition group:

- ``features``: float16 (rows, positions, dim), chunked by ``chunk_rows`` rows, zstd level 1
  (the cheapest level: every extraction pays for it on its writer thread).
- ``ids``: str (rows,), the manifest's image ids in manifest order.
- ``finite``: bool (rows,), same chunking: whether every value of the row is finite, recorded as
  the chunk is written so checking a partition never reads its features back.
- ``status``: int8 (rows,), same chunking: 0 pending, 1 ok, 2 skipped. A chunk's status is
  written last, after its features, validity and skip reasons, so it marks the chunk as finished:
  a process killed mid-chunk leaves status 0 there and a rerun recomputes only that chunk.
- attribute ``skipped``: {row: reason} for rows whose image could not be read.
- attribute ``key``: the key of everything the features were computed from (the manifest, the
  encoder and its weights); a store opened under another key is started again.

Exactly one process writes a partition, and chunks are whole-array chunks (no sharding), so no
two writers ever share a chunk.
"""

from dataclasses import dataclass

import numpy as np
import zarr

PENDING, OK, SKIPPED = 0, 1, 2


def finite_rows(features: np.ndarray) -> np.ndarray:
    """Per row of a (rows, ...) array: whether all its values are finite."""
    return np.isfinite(features).reshape(len(features), -1).all(axis=1)


@dataclass
class FeatureArray:
    group: zarr.Group

    @classmethod
    def open(
        cls, path: str, ids: list[str], positions: int, dim: int, chunk_rows: int, key: str = ""
    ) -> "FeatureArray":
        """Opens the partition at ``path``, creating it (or recreating it if its key or ids changed)."""
        try:
            group = zarr.open_group(path, mode="r+")
            same = (
                group.attrs.get("key", "") == key
                and group["features"].shape == (len(ids), positions, dim)
                and group["features"].chunks[0] == chunk_rows
                and list(group["ids"][:]) == list(ids)
            )
            if same:
                store = cls(group)
                if "finite" not in group:  # written before validity was recorded: read back once
                    store._create_finite()
                    for chunk in range(store.num_chunks()):
                        rows = store.chunk_slice(chunk)
                        store.group["finite"][rows] = finite_rows(store.features[rows])
                return store
        except (FileNotFoundError, KeyError, zarr.errors.GroupNotFoundError):
            pass
        group = zarr.open_group(path, mode="w")
        rows = len(ids)
        group.create_array(
            "features",
            shape=(rows, positions, dim),
            chunks=(chunk_rows, positions, dim),
            dtype="float16",
            fill_value=0,
            compressors=zarr.codecs.ZstdCodec(level=1),
        )
        group.create_array("ids", shape=(rows,), chunks=(max(rows, 1),), dtype=str)
        group.create_array("status", shape=(rows,), chunks=(chunk_rows,), dtype="int8", fill_value=PENDING)
        if rows:
            group["ids"][:] = np.asarray(ids, dtype=str)
        group.attrs.update({"skipped": {}, "key": key})
        store = cls(group)
        store._create_finite()
        return store

    def _create_finite(self) -> None:
        rows = self.features.shape[0]
        self.group.create_array("finite", shape=(rows,), chunks=(self.chunk_rows,), dtype=bool, fill_value=False)

    @classmethod
    def read(cls, path: str) -> "FeatureArray":
        return cls(zarr.open_group(path, mode="r"))

    @property
    def features(self) -> zarr.Array:
        return self.group["features"]

    @property
    def ids(self) -> np.ndarray:
        return self.group["ids"][:]

    @property
    def status(self) -> np.ndarray:
        return self.group["status"][:]

    @property
    def finite(self) -> np.ndarray:
        """Per row: every value finite, as recorded when its chunk was written."""
        return self.group["finite"][:]

    @property
    def key(self) -> str:
        return self.group.attrs.get("key", "")

    @property
    def chunk_rows(self) -> int:
        return self.features.chunks[0]

    @property
    def skipped(self) -> dict[int, str]:
        return {int(row): reason for row, reason in self.group.attrs["skipped"].items()}

    def chunk_slice(self, chunk: int) -> slice:
        start = chunk * self.chunk_rows
        return slice(start, min(start + self.chunk_rows, self.features.shape[0]))

    def num_chunks(self) -> int:
        return -(-self.features.shape[0] // self.chunk_rows)

    def pending_chunks(self) -> list[int]:
        status = self.status
        return [c for c in range(self.num_chunks()) if (status[self.chunk_slice(c)] == PENDING).any()]

    def write_chunk(self, chunk: int, features: np.ndarray, reasons: dict[int, str]) -> None:
        """Writes one chunk: features, their validity, skip reasons, then status (the commit marker)."""
        rows = self.chunk_slice(chunk)
        features = np.asarray(features, dtype=np.float16)
        self.features[rows] = features
        self.group["finite"][rows] = finite_rows(features)
        if reasons:
            self.group.attrs["skipped"] = {**self.group.attrs["skipped"], **{str(r): m for r, m in reasons.items()}}
        status = np.full(rows.stop - rows.start, OK, dtype=np.int8)
        for row in reasons:
            status[row - rows.start] = SKIPPED
        self.group["status"][rows] = status

    def is_complete(self) -> bool:
        return bool((self.status != PENDING).all())


@dataclass
class ConcatenatedFeatures:
    """Several partitions' features read as one array, for training across CC3M shards.

    Partition p starts at global row ``offsets[p]``, a multiple of the common chunk size, so every
    global chunk lies inside one partition's Zarr chunk and the trainer's chunk-buffer shuffle reads
    whole stored chunks. Rows between partitions are padding: they are never in the trainable rows.
    """

    parts: list[FeatureArray]

    def __post_init__(self):
        sizes = {part.chunk_rows for part in self.parts}
        if len(sizes) != 1:
            raise ValueError(f"partitions have different chunk sizes {sorted(sizes)}: re-extract with one chunk_rows")
        self.chunk_rows = sizes.pop()
        self.chunks = (self.chunk_rows,)
        self.offsets = []
        offset = 0
        for part in self.parts:
            self.offsets.append(offset)
            offset += part.num_chunks() * self.chunk_rows
        self.rows = offset

    def __len__(self) -> int:
        return self.rows

    def global_rows(self, part: int, local_rows: np.ndarray) -> np.ndarray:
        return self.offsets[part] + np.asarray(local_rows)

    def __getitem__(self, rows: slice) -> np.ndarray:
        """One global chunk (the only access the trainer makes): ``[c * chunk_rows : (c + 1) * chunk_rows]``."""
        part = int(np.searchsorted(self.offsets, rows.start, side="right") - 1)
        start = rows.start - self.offsets[part]
        return self.parts[part].features[start : start + (rows.stop - rows.start)]
