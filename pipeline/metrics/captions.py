"""Caption metrics: CIDEr-D, BLEU-1..4, METEOR, ROUGE-L through pycocoevalcap after its PTB tokenizer.

pycocoevalcap's CIDEr *is* CIDEr-D, with IDF from the references of the set being scored, so a
split is always scored whole. Its PTBTokenizer writes temp files next to its jar (inside
site-packages); `ptb_tokenize` runs the same jar with the temp file in a temp directory, so scoring
works from a read-only install.
"""

import contextlib
import io
import shutil
import subprocess
import tempfile
from pathlib import Path

JAVA_HINT = "Java is needed for the PTB tokenizer and METEOR: apt-get install default-jre-headless (Java 17 works)"


def _require_java() -> None:
    if shutil.which("java") is None:
        raise RuntimeError(f"no 'java' on PATH. {JAVA_HINT}")


def ptb_tokenize(captions: dict[str, list[str]]) -> dict[str, list[str]]:
    """Lower-cased PTB tokens without punctuation, as pycocoevalcap's PTBTokenizer produces them."""
    import pycocoevalcap.tokenizer.ptbtokenizer as ptb

    _require_java()
    jar = Path(ptb.__file__).parent / ptb.STANFORD_CORENLP_3_4_1_JAR
    keys = [k for k, v in captions.items() for _ in v]
    sentences = "\n".join(c.replace("\n", " ") for v in captions.values() for c in v)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "sentences.txt"
        path.write_text(sentences)
        output = subprocess.run(
            ["java", "-cp", str(jar), "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase",
             str(path)],
            capture_output=True, check=True, text=True,
        ).stdout
    tokenized: dict[str, list[str]] = {k: [] for k in captions}
    for key, line in zip(keys, output.split("\n")):
        tokenized[key].append(" ".join(w for w in line.rstrip().split(" ") if w not in ptb.PUNCTUATIONS))
    return tokenized


def caption_metrics(references: dict[str, list[str]], candidates: dict[str, str]) -> dict[str, float]:
    """Corpus scores for one whole split; keys are image ids, every candidate needs references."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge

    if set(candidates) != set(references):
        raise ValueError(
            f"candidates and references cover different images: {len(set(candidates) ^ set(references))} differ"
        )
    gts = ptb_tokenize(references)
    res = ptb_tokenize({k: [v] for k, v in candidates.items()})
    scores: dict[str, float] = {}
    with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its n-gram counts
        bleu, _ = Bleu(4).compute_score(gts, res)
    scores.update({f"BLEU-{n}": float(b) for n, b in enumerate(bleu, start=1)})
    scores["METEOR"] = float(Meteor().compute_score(gts, res)[0])  # its __del__ ends the Java process
    scores["ROUGE-L"] = float(Rouge().compute_score(gts, res)[0])
    scores["CIDEr-D"] = float(Cider().compute_score(gts, res)[0])
    return scores


def score_caption_files(annotations_path: str, results_path: str) -> dict[str, float]:
    """Scores a COCO results file ([{"image_id", "caption"}]) against COCO caption annotations,
    over the images the results cover (as COCOEvalCap does)."""
    import json

    references: dict = {}
    for a in json.load(open(annotations_path))["annotations"]:
        references.setdefault(a["image_id"], []).append(a["caption"])
    candidates = {}
    for index, record in enumerate(json.load(open(results_path))):
        if "image_id" not in record or "caption" not in record:
            raise ValueError(f"{results_path}: record {index} lacks image_id or caption: {record}")
        if record["image_id"] not in references:
            raise ValueError(f"{results_path}: image {record['image_id']} has no reference in {annotations_path}")
        candidates[record["image_id"]] = record["caption"]
    return caption_metrics({k: references[k] for k in candidates}, candidates)
