import io

import pandas as pd
from PIL import Image

from pipeline.gallery import REFERENCE, caption_samples, gallery_pngs, vqa_samples


def _manifest(tmp_path, ids):
    paths = []
    for image_id in ids:
        path = tmp_path / f"{image_id}.png"
        Image.new("RGB", (16, 16), (200, 30, 30)).save(path)
        paths.append(str(path))
    return pd.DataFrame({"image_id": ids, "image_path": paths, "captions": [[f"a red {i}", "red"] for i in ids]})


def _answers(question_ids, prediction, closed=True):
    table = pd.DataFrame(
        {
            "question_id": question_ids,
            "image_id": [f"i{q % 3}" for q in question_ids],
            "question": [f"question {q}?" for q in question_ids],
            "answers": [["yes"] * 7 + ["no"] * 3 for _ in question_ids],
            "prediction": prediction,
        }
    )
    return table.assign(closed_prediction="yes") if closed else table


def test_caption_samples_show_every_system_on_the_images_all_captioned(tmp_path):
    manifest = _manifest(tmp_path, ["i0", "i1", "i2", "i3"])
    captions = {
        "lite0": pd.DataFrame({"image_id": ["i0", "i1", "i2", "i3"], "caption": ["c0", "c1", "c2", "c3"]}),
        "blind": pd.DataFrame({"image_id": ["i3", "i2", "i0"], "caption": ["b", "b", "b"]}),  # no i1
    }
    gallery = caption_samples(manifest, captions, images=2, seed=0)
    shown = set(gallery["image_id"])
    assert len(shown) == 2 and "i1" not in shown
    for image_id, rows in gallery.groupby("image_id"):
        assert rows[rows["system"] == REFERENCE]["text"].tolist() == [f"a red {image_id}", "red"]
        assert set(rows["system"]) == {REFERENCE, "lite0", "blind"}
    # The sample does not depend on the manifest's order.
    again = caption_samples(manifest.iloc[::-1].reset_index(drop=True), captions, images=2, seed=0)
    assert set(again["image_id"]) == shown


def test_vqa_samples_ask_the_same_questions_of_every_system_and_shot_count():
    answers = {
        ("lite0", 0): _answers([1, 2, 3, 4], ["yes", "", "no", "yes"]),
        ("lite0", 4): _answers([4, 3, 2, 1], ["no", "no", "no", "no"]),
        ("blind", 0): _answers([2, 3, 4], ["yes"] * 3, closed=False),  # no question 1
    }
    two = vqa_samples(answers, questions=2, seed=0)
    assert len(set(two["question"])) == 2 and "question 1?" not in set(two["question"])
    gallery = vqa_samples(answers, questions=10, seed=0)  # every question all three answered
    assert set(gallery["question"]) == {"question 2?", "question 3?", "question 4?"}
    references = gallery[gallery["system"] == REFERENCE]
    assert (references["text"] == "yes").all()  # the most common of the ten answers
    outputs = gallery[gallery["system"] != REFERENCE]
    assert sorted(set(zip(outputs["system"], outputs["shots"], strict=True))) == [
        ("blind", 0),
        ("lite0", 0),
        ("lite0", 4),
    ]
    empty = outputs[(outputs["system"] == "lite0") & (outputs["shots"] == 0) & (outputs["question"] == "question 2?")]
    assert empty["text"].tolist() == ["''/yes"]  # an empty answer is shown as ''


def test_gallery_pngs_render_one_picture_per_task(tmp_path):
    manifest = _manifest(tmp_path, ["i0", "i1", "i2"])
    captions = {"lite0": pd.DataFrame({"image_id": ["i0", "i1", "i2"], "caption": ["a", "b", "c"]})}
    gallery = pd.concat(
        [caption_samples(manifest, captions, 2, 0), vqa_samples({("lite0", 0): _answers([1, 2], ["yes", "no"])}, 2, 0)]
    )
    paths = dict(zip(manifest["image_id"], manifest["image_path"], strict=True))
    pngs = gallery_pngs(gallery, paths)
    assert set(pngs) == {"captioning", "vqa"}
    for png in pngs.values():
        assert png.startswith(b"\x89PNG")
        assert Image.open(io.BytesIO(png)).size[0] >= 1100  # 15 in at 80 dpi
