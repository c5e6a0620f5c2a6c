import json
import os

import numpy as np
import pycocoevalcap.tokenizer.ptbtokenizer as ptb
import pytest

from assets.cli import main
from pipeline.metrics import captions as caption_module
from pipeline.metrics.captions import caption_metrics, ptb_tokenize
from pipeline.metrics.clip_score import ClipScorer, ClipUnavailable, clip_s, ref_clip_s

REFERENCES = {
    "1": ["a red circle on white", "a red round shape"],
    "2": ["a blue square", "a blue rectangle on a white background"],
    "3": ["a dog on the grass", "a brown dog sitting on green grass"],
}


def test_ptb_tokenizer_matches_pycocoevalcap_without_writing_into_site_packages():
    captions = {"a": ["A Dog, running!", "two  dogs"], "b": ["It's (very) big."]}
    package_dir = os.path.dirname(ptb.__file__)
    before = sorted(os.listdir(package_dir))
    tokens = ptb_tokenize(captions)
    assert sorted(os.listdir(package_dir)) == before  # no temp file written next to the jar
    assert tokens["a"] == ["a dog running", "two dogs"]
    original = ptb.PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in captions.items()})
    assert tokens == original


def test_perfect_captions_score_high_and_wrong_ones_low():
    perfect = caption_metrics(REFERENCES, {k: v[0] for k, v in REFERENCES.items()})
    wrong = caption_metrics(REFERENCES, {"1": "a dog on the grass", "2": "a red circle", "3": "a blue square"})
    assert perfect["BLEU-1"] > 0.95 and perfect["ROUGE-L"] > 0.9
    assert perfect["CIDEr-D"] > 2 * wrong["CIDEr-D"]
    assert perfect["METEOR"] > wrong["METEOR"]
    assert set(perfect) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D"}


def test_mismatched_images_are_rejected():
    with pytest.raises(ValueError, match="different images"):
        caption_metrics(REFERENCES, {"1": "a red circle"})


def test_missing_java_names_the_fix(monkeypatch):
    monkeypatch.setattr(caption_module.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install"):
        ptb_tokenize({"a": ["x"]})


def test_score_captions_command(tmp_path, capsys):
    pairs = [(int(k), c) for k, cs in REFERENCES.items() for c in cs]
    annotations = {
        "images": [{"id": i} for i in (1, 2, 3)],
        "annotations": [{"image_id": k, "id": n, "caption": c} for n, (k, c) in enumerate(pairs)],
    }
    results = [{"image_id": int(k), "caption": v[0]} for k, v in REFERENCES.items()]
    (tmp_path / "a.json").write_text(json.dumps(annotations))
    (tmp_path / "r.json").write_text(json.dumps(results))
    assert (
        main(
            [
                "score-captions",
                "--annotations",
                str(tmp_path / "a.json"),
                "--results",
                str(tmp_path / "r.json"),
                "--json",
            ]
        )
        == 0
    )
    scores = json.loads(capsys.readouterr().out)
    assert scores["BLEU-1"] > 0.95 and scores["CIDEr-D"] > 1


def test_clip_s_formula_on_fixed_embeddings():
    images = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    candidates = np.array([[1.0, 1.0], [-1.0, 0.0], [0.0, 5.0]])
    np.testing.assert_allclose(clip_s(images, candidates), [2.5 / np.sqrt(2), 0.0, 2.5])


def test_ref_clip_s_is_the_harmonic_mean_with_the_best_reference():
    candidates = np.array([[1.0, 0.0], [0.0, 1.0]])
    references = [np.array([[1.0, 1.0], [1.0, 0.0]]), np.array([[1.0, 0.0]])]
    scores = np.array([2.0, 1.0])
    # Image 1: best reference cosine 1.0 -> 2*2*1/(2+1); image 2: cosine 0 -> 0.
    np.testing.assert_allclose(ref_clip_s(scores, candidates, references), [4 / 3, 0.0])


def test_clip_scorer_refuses_to_run_without_the_real_weights(empty_hf_cache, monkeypatch):
    monkeypatch.delenv("LIMBER_WEIGHTS_CLIP_VIT_B32", raising=False)
    with pytest.raises(ClipUnavailable, match="timm/vit_base_patch32_clip_224.openai.*LIMBER_WEIGHTS_CLIP_VIT_B32"):
        ClipScorer()


class _FixedScorer:
    """Embeds an image as its mean colour and a text by which colour word it names."""

    COLOURS = {"red": [1.0, 0.0, 0.0], "green": [0.0, 1.0, 0.0], "blue": [0.0, 0.0, 1.0]}

    def embed_images(self, images):
        return np.stack([np.asarray(image, dtype=float).reshape(-1, 3).mean(0) + 1e-3 for image in images])

    def embed_texts(self, texts):
        return np.stack([self.COLOURS[t.split()[-1]] for t in texts]) + 1e-3


def test_clip_scores_stream_batches_and_skip_unreadable_images(tmp_path):
    from PIL import Image

    from pipeline.metrics.clip_score import clip_scores

    paths = []
    for i, rgb in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)] * 3):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", (4, 4), rgb).save(paths[-1])
    paths.append(str(tmp_path / "missing.png"))
    candidates = ["a red", "a green", "a red"] * 3 + ["a blue"]
    references = [["a red"], ["a green"], ["a blue"]] * 3 + [["a blue"]]
    whole = clip_scores(_FixedScorer(), paths, candidates, references, batch_size=100)
    batched = clip_scores(_FixedScorer(), paths, candidates, references, batch_size=4)
    assert batched == pytest.approx(whole)
    # Two in three captions name the image's colour (CLIP-S 2.5 x ~1), the third names another (~0).
    assert whole["CLIP-S"] == pytest.approx(2.5 * 2 / 3, abs=0.01)


def test_a_split_is_scored_by_image_id_whatever_the_order(tmp_path, empty_hf_cache):
    """split_caption_metrics joins captions to references by id: reordered captions score the same;
    images without references are left out; no CLIP weights give NaN with the reason."""
    import pandas as pd

    from pipeline.metrics.captions import split_caption_metrics

    manifest = pd.DataFrame(
        {
            "image_id": ["1", "2", "3", "4"],
            "image_path": [str(tmp_path / f"{i}.png") for i in range(4)],
            "captions": [REFERENCES["1"], REFERENCES["2"], REFERENCES["3"], []],
        }
    )
    captions = pd.DataFrame(
        {"image_id": ["1", "2", "3", "4"], "caption": ["a red circle", "a blue square", "a dog on grass", "unscored"]}
    )
    table = split_caption_metrics(manifest, captions, "coco", clip_weights="")
    shuffled = split_caption_metrics(manifest, captions.iloc[[3, 1, 0, 2]], "coco", clip_weights="")
    pd.testing.assert_frame_equal(table, shuffled)
    assert set(table["n"]) == {3}
    scores = dict(zip(table["metric"], table["value"], strict=True))
    assert (
        scores["CIDEr-D"]
        == caption_metrics(
            {k: REFERENCES[k] for k in "123"},
            dict(zip("123", ["a red circle", "a blue square", "a dog on grass"], strict=True)),
        )["CIDEr-D"]
    )
    clip = table[table["metric"].isin(["CLIP-S", "RefCLIP-S"])]
    assert clip["value"].isna().all() and clip["note"].str.contains("CLIP ViT-B/32").all()
    with pytest.raises(ValueError, match="1 images of the split have no caption"):
        split_caption_metrics(manifest, captions.iloc[1:], "coco", clip_weights="")
