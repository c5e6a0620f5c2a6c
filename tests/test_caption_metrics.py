import json
import os

import numpy as np
import pycocoevalcap.tokenizer.ptbtokenizer as ptb
import pytest

from assets.cli import main
from pipeline.metrics import captions as caption_module
from pipeline.metrics.captions import ptb_tokenize, score_captions
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
    perfect = score_captions(REFERENCES, {k: v[0] for k, v in REFERENCES.items()})
    wrong = score_captions(REFERENCES, {"1": "a dog on the grass", "2": "a red circle", "3": "a blue square"})
    assert perfect["BLEU-1"] > 0.95 and perfect["ROUGE-L"] > 0.9
    assert perfect["CIDEr-D"] > 2 * wrong["CIDEr-D"]
    assert perfect["METEOR"] > wrong["METEOR"]
    assert set(perfect) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr-D"}


def test_scores_match_pycocoevalcap_and_their_intervals_are_seeded_and_hold_them():
    """BLEU and METEOR come from per-image statistics (so they can be resampled): their corpus
    values are pycocoevalcap's, and METEOR's formula reproduces the jar's score from its statistics."""
    import contextlib
    import io
    import random

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.meteor.meteor import Meteor

    from pipeline.metrics.captions import _meteor, caption_estimates
    from pipeline.metrics.intervals import meteor_from_stats

    rng = random.Random(0)
    words = "a red blue green circle square dog dogs cat on the grass left big small running runs".split()
    references = {str(i): [" ".join(rng.choices(words, k=rng.randint(3, 8))) for _ in range(3)] for i in range(60)}
    candidates = {str(i): " ".join(rng.choices(words, k=rng.randint(2, 9))) for i in range(60)}
    candidates.update({str(i): references[str(i)][0] for i in range(0, 60, 3)})  # perfect captions too
    estimates, per_image = caption_estimates(references, candidates, resamples=200, seed=0)
    again, _ = caption_estimates(references, candidates, resamples=200, seed=0)
    assert estimates == again
    gts, res = ptb_tokenize(references), ptb_tokenize({k: [v] for k, v in candidates.items()})
    with contextlib.redirect_stdout(io.StringIO()):
        bleu, _ = Bleu(4).compute_score(gts, res)
    for order in range(1, 5):
        assert estimates[f"BLEU-{order}"].value == pytest.approx(bleu[order - 1], rel=1e-12)
    meteor, alignments = _meteor(Meteor, gts, res, list(gts))
    assert estimates["METEOR"].value == pytest.approx(Meteor().compute_score(gts, res)[0], rel=1e-12)
    assert meteor_from_stats(alignments.sum(axis=0)) == pytest.approx(meteor, rel=1e-9)
    for name, estimate in estimates.items():
        assert estimate.low < estimate.value < estimate.high, name
    assert estimates["CIDEr-D"].value == pytest.approx(per_image["CIDEr-D"].mean())
    assert per_image.index.tolist() == list(references)


def test_one_meteor_process_serves_every_split_and_a_dead_or_failed_one_is_replaced():
    from pycocoevalcap.meteor.meteor import Meteor

    gts = {"1": ["a red circle", "a red round shape"], "2": ["a blue square", "blue box"]}
    res = {"1": ["a red circle"], "2": ["a green square"]}
    first = caption_module._meteor(Meteor, gts, res, list(gts))
    process = caption_module._METEORS[Meteor].meteor_p
    again = caption_module._meteor(Meteor, gts, res, list(gts))
    assert caption_module._METEORS[Meteor].meteor_p is process
    assert again[0] == first[0] and np.array_equal(again[1], first[1])
    process.kill()
    process.wait()
    replaced = caption_module._meteor(Meteor, gts, res, list(gts))
    assert caption_module._METEORS[Meteor].meteor_p is not process
    assert replaced[0] == first[0] and np.array_equal(replaced[1], first[1])

    class Broken(Meteor):
        def _stat(self, hypothesis, references):
            raise OSError("pipe closed")

    with pytest.raises(RuntimeError, match="METEOR failed: pipe closed"):
        caption_module._meteor(Broken, gts, res, list(gts))
    assert Broken not in caption_module._METEORS


def test_mismatched_images_are_rejected():
    with pytest.raises(ValueError, match="different images"):
        score_captions(REFERENCES, {"1": "a red circle"})


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
    for metric in ("CLIP-S", "RefCLIP-S"):
        np.testing.assert_allclose(batched[metric], whole[metric])
        assert np.isnan(whole[metric][-1]) and np.isfinite(whole[metric][:-1]).all()  # the missing image
    # Two in three captions name the image's colour (CLIP-S 2.5 x ~1), the third names another (~0).
    np.testing.assert_allclose(whole["CLIP-S"][:3], [2.5, 2.5, 0.0], atol=0.01)


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
    table, per_image = split_caption_metrics(manifest, captions, None, clip_weights="", resamples=50)
    shuffled = split_caption_metrics(manifest, captions.iloc[[3, 1, 0, 2]], None, clip_weights="", resamples=50)
    pd.testing.assert_frame_equal(table, shuffled[0])
    pd.testing.assert_frame_equal(per_image, shuffled[1])
    assert per_image["image_id"].tolist() == ["1", "2", "3"]
    assert set(table["n"]) == {3}
    scores = dict(zip(table["metric"], table["value"], strict=True))
    assert (
        scores["CIDEr-D"]
        == score_captions(
            {k: REFERENCES[k] for k in "123"},
            dict(zip("123", ["a red circle", "a blue square", "a dog on grass"], strict=True)),
        )["CIDEr-D"]
    )
    clip = table[table["metric"].isin(["CLIP-S", "RefCLIP-S"])]
    assert clip["value"].isna().all() and clip["note"].str.contains("CLIP ViT-B/32").all()
    with pytest.raises(ValueError, match="1 images of the split have no caption"):
        split_caption_metrics(manifest, captions.iloc[1:], None, clip_weights="")


@pytest.fixture(scope="module")
def random_clip_weights(tmp_path_factory):
    """Random ViT-B/32 weights in a local file, given as ``clip_weights`` the way real ones are:
    they run the real scorer (image filter, pairing, prefix) without monkeypatching it."""
    import open_clip
    import torch

    from pipeline.metrics.clip_score import CLIP_MODEL

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("clip") / "random_vit_b32.pt"
    torch.save(open_clip.create_model(CLIP_MODEL, pretrained=None).state_dict(), path)
    return str(path)


def test_clip_s_runs_the_real_scorer_pairing_each_caption_with_its_image(tmp_path, random_clip_weights):
    import pandas as pd
    import torch
    from PIL import Image

    from pipeline.metrics.captions import split_caption_metrics

    paths = [str(tmp_path / f"{i}.png") for i in range(4)]
    for path, rgb in zip(paths[:3], [(255, 0, 0), (0, 90, 255), (20, 200, 20)], strict=True):
        Image.new("RGB", (64, 48), rgb).save(path)  # paths[3] is missing: left out of CLIP-S
    manifest = pd.DataFrame({"image_id": list("1234"), "image_path": paths, "captions": [REFERENCES["1"]] * 4})
    texts = ["a red circle", "a blue square", "a dog on grass", "unreadable"]
    captions = pd.DataFrame({"image_id": list("1234"), "caption": texts})
    table, per_image = split_caption_metrics(manifest, captions, None, clip_weights=random_clip_weights)
    scores = dict(zip(table["metric"], table["value"], strict=True))
    assert (table.loc[table["metric"] == "CLIP-S", "note"] == "").all()

    scorer = ClipScorer(random_clip_weights)
    images = [Image.open(p).convert("RGB") for p in paths[:3]]
    paired = clip_s(scorer.embed_images(images), scorer.embed_texts(texts[:3]))
    assert scores["CLIP-S"] == pytest.approx(paired.mean(), rel=1e-5)
    np.testing.assert_allclose(per_image["CLIP-S"].to_numpy()[:3], paired, rtol=1e-5)
    # Each caption with its own image, not another's.
    crossed = clip_s(scorer.embed_images(images[::-1]), scorer.embed_texts(texts[:3]))
    assert abs(crossed.mean() - paired.mean()) > 1e-4
    # Texts are embedded as "A photo depicts <caption>".
    with torch.inference_mode():
        prefixed = scorer.model.encode_text(scorer.tokenizer([f"A photo depicts {t}" for t in texts[:3]])).numpy()
        bare = scorer.model.encode_text(scorer.tokenizer(texts[:3])).numpy()
    np.testing.assert_allclose(scorer.embed_texts(texts[:3]), prefixed, rtol=1e-5, atol=1e-6)
    assert not np.allclose(prefixed, bare, atol=1e-3)
