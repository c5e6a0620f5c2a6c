"""Caption metrics: CIDEr-D, BLEU-1..4, METEOR, ROUGE-L through pycocoevalcap after its PTB tokenizer.

pycocoevalcap's CIDEr *is* CIDEr-D, with IDF from the references of the set being scored, so a
split is always scored whole. Its PTBTokenizer writes temp files next to its jar (inside
site-packages); `ptb_tokenize` runs the same jar with the temp file in a temp directory, so scoring
works from a read-only install.
"""

import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.metrics.intervals import (
    Estimate,
    bleu_from_stats,
    estimates_table,
    meteor_from_stats,
    meteor_segment_stats,
    resamples_of,
)

JAVA_HINT = "Java is needed for the PTB tokenizer and METEOR: apt-get install default-jre-headless (Java 17 works)"
# The Java steps get a time limit, so a stuck process gives an error instead of a hang.
JAVA_TIMEOUT_S = 900


def one_line(text: str) -> str:
    """A caption as the Java tools need it, one per line: every line break Python knows (\n, \r,
    \x0b, \x0c, U+2028, U+2029, ...) becomes a space, as does METEOR's field separator '|||'."""
    return " ".join(" ".join(text.splitlines()).replace("|||", " ").split())


def _require_java() -> None:
    if shutil.which("java") is None:
        raise RuntimeError(f"no 'java' on PATH. {JAVA_HINT}")


def ptb_tokenize(captions: dict[str, list[str]]) -> dict[str, list[str]]:
    """Lower-cased PTB tokens without punctuation, as pycocoevalcap's PTBTokenizer produces them."""
    import pycocoevalcap.tokenizer.ptbtokenizer as ptb

    _require_java()
    jar = Path(ptb.__file__).parent / ptb.STANFORD_CORENLP_3_4_1_JAR
    keys = [k for k, v in captions.items() for _ in v]
    sentences = "\n".join(one_line(c) for v in captions.values() for c in v)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "sentences.txt"
        path.write_text(sentences, encoding="utf-8")
        command = [
            "java",
            "-cp",
            str(jar),
            "edu.stanford.nlp.process.PTBTokenizer",
            "-preserveLines",
            "-lowerCase",
            str(path),
        ]
        try:
            output = subprocess.run(
                command, capture_output=True, check=True, text=True, encoding="utf-8", timeout=JAVA_TIMEOUT_S
            ).stdout
        except subprocess.TimeoutExpired:
            message = f"the PTB tokenizer did not finish in {JAVA_TIMEOUT_S} s ({len(keys)} captions)"
            raise RuntimeError(message) from None
    lines = output.split("\n")
    lines = lines[: len(keys)] if len(lines) == len(keys) + 1 and not lines[-1] else lines
    if len(lines) != len(keys):
        # Captions are paired with their images by position in this file: a count that differs
        # would score every later caption against another image, so it is an error, never a result.
        raise RuntimeError(f"the PTB tokenizer returned {len(lines)} lines for {len(keys)} captions")
    tokenized: dict[str, list[str]] = {k: [] for k in captions}
    for key, line in zip(keys, lines, strict=True):
        tokenized[key].append(" ".join(w for w in line.rstrip().split(" ") if w not in ptb.PUNCTUATIONS))
    return tokenized


def score_captions(references: dict[str, list[str]], candidates: dict[str, str]) -> dict[str, float]:
    """Corpus scores for one whole split; keys are image ids, every candidate needs references."""
    estimates, _ = caption_estimates(references, candidates)
    return {metric: estimate.value for metric, estimate in estimates.items()}


def caption_estimates(
    references: dict[str, list[str]], candidates: dict[str, str], resamples: int = 0, seed: int = 0
) -> tuple[dict[str, Estimate], pd.DataFrame]:
    """``score_captions`` with a seeded bootstrap interval over the images (``resamples`` of them;
    none when 0), and the per-image scores of the metrics that are means over images (indexed by
    image id). BLEU and METEOR are resampled from per-image statistics (n-grams; alignments),
    ROUGE-L and CIDEr-D (the split's IDF kept) as per-image means."""
    from pycocoevalcap.bleu.bleu_scorer import BleuScorer
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge

    if set(candidates) != set(references):
        raise ValueError(
            f"candidates and references cover different images: {len(set(candidates) ^ set(references))} differ"
        )
    if not candidates:
        raise ValueError("no captions to score")  # METEOR would wait forever on an empty set
    empty = [k for k, refs in references.items() if not any(one_line(r) for r in refs)]
    if empty:
        raise ValueError(f"{len(empty)} images have no non-empty reference, e.g. {empty[:3]}")
    gts = ptb_tokenize(references)
    res = ptb_tokenize({k: [v] for k, v in candidates.items()})
    ids = list(gts)
    n = len(ids)
    rows = resamples_of(n, resamples, seed)
    scores: dict[str, Estimate] = {}

    # pycocoevalcap's Bleu(4): one BleuScorer over the split, reference length "closest".
    bleu = BleuScorer(n=4)
    for i in ids:
        bleu += (res[i][0], gts[i])
    stats = np.array(
        [
            [c["testlen"], bleu._single_reflen(c["reflen"], "closest", c["testlen"]), *c["guess"], *c["correct"]]
            for c in bleu.ctest
        ],
        dtype=float,
    )
    for order in range(1, 5):
        value = float(bleu_from_stats(stats.sum(axis=0), order))
        spread = None if rows is None else bleu_from_stats(stats[rows].sum(axis=1), order)
        scores[f"BLEU-{order}"] = Estimate.of(value, spread)
    value, alignments = _meteor(Meteor, gts, res, ids)
    scores["METEOR"] = Estimate.of(value, None if rows is None else meteor_from_stats(alignments[rows].sum(axis=1)))
    per_image = pd.DataFrame(index=pd.Index(ids, name="image_id"))
    for name, metric in (("ROUGE-L", Rouge()), ("CIDEr-D", Cider())):
        _, values = metric.compute_score({i: gts[i] for i in ids}, {i: res[i] for i in ids})
        per_image[name] = np.asarray(values, dtype=float)
        scores[name] = Estimate.mean(values, rows)
    return scores, per_image


# One METEOR Java process per Python process and class: only its first split pays for starting the
# JVM and loading the paraphrase tables (the first caption_metrics step of `make demo`'s list, against
# the others). Its calls are serialised by the lock.
_METEORS: dict = {}
_METEOR_LOCK = threading.Lock()


def _meteor(meteor_class, gts: dict, res: dict, ids: list) -> tuple[float, np.ndarray]:
    """METEOR of the split through pycocoevalcap's Java process, and each image's alignment
    statistics (n, 23). Runs under the time limit: the wrapper blocks on a pipe forever when the
    process stops answering, so it runs in a thread and is killed on timeout. The process is kept
    for the next split unless it failed."""
    with _METEOR_LOCK:
        meteor = _METEORS.get(meteor_class)
        if meteor is None or meteor.meteor_p.poll() is not None:
            meteor = _METEORS[meteor_class] = meteor_class()
        outcome: dict = {}

        def score() -> None:
            try:
                stats = [meteor._stat(res[i][0], gts[i]) for i in ids]
                process = meteor.meteor_p
                process.stdin.write(("EVAL ||| " + " ||| ".join(stats) + "\n").encode())
                process.stdin.flush()
                for _ in stats:  # per-image scores, then the corpus score
                    process.stdout.readline()
                outcome["score"] = float(process.stdout.readline().strip())
                outcome["stats"] = meteor_segment_stats(np.array([line.split() for line in stats], dtype=float))
            except Exception as error:  # reported below, in the caller's thread
                outcome["error"] = error

        thread = threading.Thread(target=score, daemon=True)
        thread.start()
        thread.join(JAVA_TIMEOUT_S)
        if thread.is_alive() or "error" in outcome:
            del _METEORS[meteor_class]  # its pipes may hold half an answer: never reused
            meteor.meteor_p.kill()
        if thread.is_alive():
            raise RuntimeError(f"METEOR did not answer in {JAVA_TIMEOUT_S} s ({len(res)} captions)")
        if "error" in outcome:
            raise RuntimeError(f"METEOR failed: {outcome['error']}") from outcome["error"]
        return outcome["score"], outcome["stats"]


def score_caption_files(annotations_path: str, results_path: str) -> dict[str, float]:
    """Scores a COCO results file ([{"image_id", "caption"}]) against COCO caption annotations,
    over the images the results cover (as COCOEvalCap does). Captions are paired with references
    by image id; a malformed file, a duplicate image or an image without references is an error."""
    from pipeline.datasets.manifest import DatasetError, json_records

    image_id = (int, str)
    references: dict = {}
    for a in json_records(annotations_path, {"image_id": image_id, "caption": str}, key="annotations"):
        references.setdefault(a["image_id"], []).append(a["caption"])
    candidates = {}
    for index, record in enumerate(json_records(results_path, {"image_id": image_id, "caption": str})):
        if record["image_id"] in candidates:
            raise DatasetError(f"{results_path}: record[{index}]: image {record['image_id']!r} is captioned twice")
        if record["image_id"] not in references:
            raise DatasetError(
                f"{results_path}: record[{index}]: image {record['image_id']!r} has no reference in {annotations_path}"
            )
        candidates[record["image_id"]] = record["caption"]
    if not candidates:
        raise DatasetError(f"{results_path}: no captions to score")
    return score_captions({k: references[k] for k in candidates}, candidates)


# Part of every stored caption-metrics table's key: a table scored under other rules is not reused.
SCORING = "dataset subsets (easy-vqa colours and shapes, NoCaps domains), each counting its own images"

# (manifest, references, candidates, resamples, seed) -> (Estimate by metric, per-image scores)
SubsetMetrics = Callable[[pd.DataFrame, dict, dict, int, int], tuple[dict, pd.DataFrame]]


def split_caption_metrics(
    manifest,
    captions,
    subset_metrics: SubsetMetrics | None,
    clip_weights: str | None,
    device: str = "cpu",
    resamples: int = 0,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``split_caption_estimates`` as rows ``(metric, value, ci_low, ci_high, n, note, ...)``
    (``pipeline.metrics.intervals.estimates_table``), and the per-image scores."""
    scores, per_image, notes = split_caption_estimates(
        manifest, captions, subset_metrics, clip_weights, device, resamples, seed
    )
    return estimates_table(scores, notes, n=len(per_image)), per_image


CLIP_METRICS = ("CLIP-S", "RefCLIP-S")


def split_caption_estimates(
    manifest,
    captions,
    subset_metrics: SubsetMetrics | None,
    clip_weights: str | None,
    device: str = "cpu",
    resamples: int = 0,
    seed: int = 0,
) -> tuple[dict[str, Estimate], pd.DataFrame, dict[str, str]]:
    """Every caption metric of one whole split: ``Estimate`` by metric (seeded bootstrap 95%
    intervals over the images, ``resamples`` of them), the per-image scores of the metrics that are
    means over images (``image_id`` and one column per metric), from which paired differences
    between systems are drawn, and a note by metric where a value is NaN.

    ``manifest`` has ``image_id``, ``image_path`` and reference ``captions``; ``captions`` has
    ``image_id`` and ``caption``. They are joined by image id (a reordered table scores the same),
    over the images that have references. CLIP-S and RefCLIP-S are NaN with a note saying why when
    the CLIP ViT-B/32 weights are not on the machine. ``subset_metrics`` adds the dataset's own
    (``pipeline.datasets.CaptionSubsets``: NoCaps's domains), with their per-image scores.
    """
    from pipeline.metrics.clip_score import ClipScorer, ClipUnavailable, clip_scores

    caption_of = dict(zip(captions["image_id"], captions["caption"], strict=True))
    scored = manifest[manifest["captions"].str.len() > 0]
    missing = [i for i in scored["image_id"] if i not in caption_of]
    if missing:
        raise ValueError(
            f"{len(missing)} images of the split have no caption (first: {missing[0]!r}): materialize captions again"
        )
    references = {i: list(c) for i, c in zip(scored["image_id"], scored["captions"], strict=True)}
    candidates = {i: caption_of[i] for i in scored["image_id"]}
    scores, per_image = caption_estimates(references, candidates, resamples, seed)
    if subset_metrics:
        extra, extra_per_image = subset_metrics(manifest, references, candidates, resamples, seed)
        scores.update(extra)
        per_image = per_image.join(extra_per_image)
    notes = {}
    try:
        scorer = ClipScorer(clip_weights or None, device)
        clip = clip_scores(scorer, scored["image_path"].tolist(), list(candidates.values()), list(references.values()))
        for metric, values in clip.items():
            readable = values[np.isfinite(values)]
            scores[metric] = Estimate.mean(readable, resamples_of(len(readable), resamples, seed))
            per_image[metric] = pd.Series(values, index=scored["image_id"].to_numpy())
    except ClipUnavailable as error:
        scores.update({metric: Estimate(float("nan"), n=len(candidates)) for metric in CLIP_METRICS})
        notes = dict.fromkeys(CLIP_METRICS, str(error))
    return scores, per_image.reset_index(), notes
