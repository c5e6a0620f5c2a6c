"""NoCaps validation: 4,500 Open Images photos with ten captions each, in three domains by how
far their objects are from COCO's classes: in-domain, near-domain, out-domain.

``nocaps/nocaps_val_4500_captions.json`` is in the COCO caption format plus each image's
``domain``; images at ``nocaps/images/{file_name}``. One part, "val"; the manifest has a
``domain`` column, and ``subset_metrics`` scores each domain on its own.
"""

import pandas as pd

from pipeline.datasets.coco import read_coco_format
from pipeline.datasets.manifest import ReadResult, dataset_dir
from pipeline.metrics.captions import caption_estimates

DOMAINS = ("in-domain", "near-domain", "out-domain")
ANNOTATIONS = "nocaps_val_4500_captions.json"
HOW_TO_GET = (
    f"Get it from https://s3.amazonaws.com/nocaps/{ANNOTATIONS} into <root>/nocaps/, and each image "
    "(its coco_url in that file) into <root>/nocaps/images/{file_name}."
)


OPTIONS = ()  # read with no settings of the manifests asset


def how_to_get(part: str) -> str:
    return HOW_TO_GET


def list_parts(root) -> list[str]:
    return ["val"] if (dataset_dir(root, "nocaps") / ANNOTATIONS).is_file() else []


def read_manifest(part: str, *, root) -> ReadResult:
    if part != "val":
        raise KeyError(f"NoCaps has the part 'val' (its test captions are not public), not {part!r}")
    directory = dataset_dir(root, "nocaps")
    return read_coco_format(directory / ANNOTATIONS, directory / "images", HOW_TO_GET, columns={"domain": DOMAINS})


def subset_metrics(
    manifest: pd.DataFrame,
    references: dict[str, list[str]],
    candidates: dict[str, str],
    resamples: int = 0,
    seed: int = 0,
) -> tuple[dict, pd.DataFrame]:
    """The standard metrics per domain ("CIDEr-D (out-domain)", ...), with their intervals and
    per-image scores (NaN outside the domain). Each domain is scored as a whole set, so its CIDEr
    IDF comes from that domain's references, as in the NoCaps evaluation."""
    domain_of = dict(zip(manifest["image_id"], manifest["domain"], strict=True))
    unknown = sorted(set(candidates) - set(domain_of))
    if unknown:
        raise ValueError(f"candidates for images not in the NoCaps manifest: {unknown[:5]}")
    scores, per_image = {}, []
    for domain in DOMAINS:
        ids = [image_id for image_id in candidates if domain_of[image_id] == domain]
        if ids:
            domain_scores, domain_per_image = caption_estimates(
                {i: references[i] for i in ids}, {i: candidates[i] for i in ids}, resamples, seed
            )
            scores.update({f"{name} ({domain})": value for name, value in domain_scores.items()})
            per_image.append(domain_per_image.rename(columns=lambda name, d=domain: f"{name} ({d})"))
    return scores, pd.concat(per_image) if per_image else pd.DataFrame(index=pd.Index([], name="image_id"))
