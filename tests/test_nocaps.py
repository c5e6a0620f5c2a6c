"""pipeline/datasets/nocaps.py: NoCaps's per-domain caption metrics."""

import pandas as pd
import pytest

from pipeline.datasets import nocaps, read_manifest
from pipeline.metrics.intervals import Estimate
from tests.dataset_fixtures import (
    write_nocaps,
)


def test_nocaps_metrics_score_each_domain_as_a_whole(tmp_path, monkeypatch):
    """The standard scorer (tests/test_caption_metrics.py runs it for real, Java and all) is replaced
    by exact-match share, so this checks what NoCaps adds: one whole set per domain, named per domain."""
    scored_sets = []

    def exact_match_share(references, candidates, resamples, seed):
        scored_sets.append(sorted(candidates))
        hits = pd.DataFrame(
            {"CIDEr-D": [float(candidates[i] in references[i]) for i in candidates]},
            index=pd.Index(list(candidates), name="image_id"),
        )
        return {"CIDEr-D": Estimate(hits["CIDEr-D"].mean())}, hits

    monkeypatch.setattr(nocaps, "caption_estimates", exact_match_share)
    write_nocaps(tmp_path)
    manifest = read_manifest("nocaps", "val", root=tmp_path).manifest
    references = dict(zip(manifest["image_id"], map(list, manifest["captions"]), strict=True))
    candidates = {i: c[0] for i, c in references.items()}
    candidates["1"] = "a plate of pasta on a table"  # wrong, in near-domain with the right "4"
    scores, per_image = nocaps.subset_metrics(manifest, references, candidates)
    assert scored_sets == [["0", "3", "6"], ["1", "4"], ["2", "5"]]
    assert {k: v.value for k, v in scores.items()} == {
        "CIDEr-D (in-domain)": 1.0,
        "CIDEr-D (near-domain)": 0.5,
        "CIDEr-D (out-domain)": 1.0,
    }
    assert per_image.loc["1", "CIDEr-D (near-domain)"] == 0.0 and per_image["CIDEr-D (in-domain)"].count() == 3
    with pytest.raises(ValueError, match="not in the NoCaps manifest"):
        nocaps.subset_metrics(manifest, references, {**candidates, "404": "an unknown image"})
