"""The manifest contract shared by every dataset reader, and image loading with skip reasons."""

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

MANIFEST_COLUMNS = ["image_id", "image_path", "captions", "questions"]


class DatasetError(ValueError):
    """A dataset file is malformed; the message names the file, the record and the fix."""


def validate_manifest(manifest: pd.DataFrame, source: str) -> pd.DataFrame:
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise DatasetError(f"{source}: manifest lacks columns {missing}")
    duplicated = manifest["image_id"][manifest["image_id"].duplicated()]
    if len(duplicated):
        raise DatasetError(
            f"{source}: duplicate image ids {duplicated.head(5).tolist()}; ids must be unique per split"
        )
    return manifest.reset_index(drop=True)


def split_off_validation(manifest: pd.DataFrame, size: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Carves a fixed, seeded validation split out of a training manifest: (train, val)."""
    if not 0 < size < len(manifest):
        raise ValueError(f"validation size {size} must be between 1 and {len(manifest) - 1}")
    order = np.random.default_rng(seed).permutation(len(manifest))
    val_rows = np.sort(order[:size])
    is_val = np.zeros(len(manifest), dtype=bool)
    is_val[val_rows] = True
    return manifest[~is_val].reset_index(drop=True), manifest[is_val].reset_index(drop=True)


def load_image(path: str) -> tuple[Image.Image | None, str | None]:
    """Opens an image as RGB. Returns (image, None), or (None, reason) for a file to skip."""
    try:
        with Image.open(path) as image:
            image.load()  # decode now, so truncated files fail here and not inside a batch
            return image.convert("RGB"), None
    except FileNotFoundError:
        return None, "missing file"
    except UnidentifiedImageError:
        return None, "not an image"
    except (OSError, SyntaxError, ValueError) as error:
        return None, f"corrupt image: {error}"
