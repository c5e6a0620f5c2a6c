"""pipeline/datasets/nocaps.py: NoCaps's per-domain caption metrics."""

import pytest

from pipeline.datasets import nocaps, read_manifest
from tests.dataset_fixtures import (
    write_nocaps,
)


def test_nocaps_metrics_score_each_domain_as_a_whole(tmp_path, monkeypatch):
    """The standard scorer (tests/test_caption_metrics.py runs it for real, Java and all) is replaced
    by exact-match share, so this checks what NoCaps adds: one whole set per domain, named per domain."""
    scored_sets = []

    def exact_match_share(references, candidates):
        scored_sets.append(sorted(candidates))
        return {"CIDEr-D": sum(candidates[i] in references[i] for i in candidates) / len(candidates)}

    monkeypatch.setattr(nocaps, "standard_caption_metrics", exact_match_share)
    write_nocaps(tmp_path)
    manifest = read_manifest("nocaps", "val", root=tmp_path).manifest
    references = dict(zip(manifest["image_id"], map(list, manifest["captions"]), strict=True))
    candidates = {i: c[0] for i, c in references.items()}
    candidates["1"] = "a plate of pasta on a table"  # wrong, in near-domain with the right "4"
    scores = nocaps.caption_metrics(manifest, references, candidates)
    assert scored_sets == [["0", "3", "6"], ["1", "4"], ["2", "5"]]
    assert scores == {"CIDEr-D (in-domain)": 1.0, "CIDEr-D (near-domain)": 0.5, "CIDEr-D (out-domain)": 1.0}
    with pytest.raises(ValueError, match="not in the NoCaps manifest"):
        nocaps.caption_metrics(manifest, references, {**candidates, "404": "an unknown image"})
