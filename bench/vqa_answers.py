"""4-shot VQA answers per second: the production path (pipeline.vqa: each image's prefix prefilled
once and reused through the KV cache, decoding stopped once every answer is complete) against the
old one (each question's whole prompt prefilled, decoded for all ``max_new_tokens`` steps, then
truncated), on the same easy-vqa questions; the answers must be identical.

    python bench/vqa_answers.py [--device cpu|cuda] [--iters N] [--json out.json]

The LM is the embedded SmolLM2-135M (prepared into a temporary folder, about 20 s, unless
``lm_dir`` holds it); the map is a random LinearMap at efficientnet_lite0's layout (1280-d pooled
-> 4 tokens) and the image features are random: the timing does not depend on their values.
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.datasets import read_manifest
from pipeline.decoding import greedy_generate
from pipeline.encoders import backbone_spec
from pipeline.language_models import load_language_model, prepare_language_model
from pipeline.linear_map import LinearMap
from pipeline.settings import DEFAULT
from pipeline.vqa import (
    SHOTS,
    answer_questions,
    draw_support,
    flatten_questions,
    prompt_batches,
    sample_by_image,
    truncate_answer,
    vqa_question,
)

IMAGES = 4  # easy-vqa test images asked about, all their questions (about 9.7 per image)
SUPPORT_IMAGES = 64  # easy-vqa train images the solved examples come from
SHOTS_TIMED = 4
BACKBONE = "efficientnet_lite0"
VQA = DEFAULT["vqa"]  # the demo's batch size and answer length


def full_prompt_answers(lm, tokenizer, questions, support_questions, support, *, max_new_tokens, **prompting):
    """The old path, on the prompts ``answer_questions`` builds: every question's whole prompt
    prefilled from scratch and decoded for ``max_new_tokens`` steps, then truncated."""
    answers = []
    for batch, prefixes, prefix_of in prompt_batches(questions, support_questions, support, **prompting):
        prompts = [prefixes[p] + [vqa_question(q)] for p, q in zip(prefix_of, batch["question"], strict=True)]
        generated = greedy_generate(lm, tokenizer, prompts, max_new_tokens=max_new_tokens)
        answers += [truncate_answer(a, gt) for a, gt in zip(generated, batch["answers"], strict=True)]
    return answers


def vqa_inputs(lm, images: int, support_images: int, device: str) -> tuple[dict, int]:
    """``answer_questions``' arguments for all questions of ``images`` easy-vqa test images at 4
    shots, and the number of questions."""
    spec = backbone_spec(BACKBONE)
    torch.manual_seed(0)
    linear_map = LinearMap(spec.feature_dim, lm.config.hidden_size, spec.layout)
    rng = np.random.default_rng(0)
    test = read_manifest("easy_vqa", "test", val_size=1, seed=0).manifest.iloc[:images]
    train = read_manifest("easy_vqa", "train", val_size=1, seed=0).manifest.iloc[:support_images]
    questions = sample_by_image(flatten_questions(test), 0, seed=0).sort_values("row", kind="stable")
    support_questions = flatten_questions(train)
    features = (spec.layout.positions, spec.feature_dim)
    arguments = {
        "questions": questions.reset_index(drop=True),
        "support_questions": support_questions,
        "support": draw_support(support_questions, images, max(SHOTS), seed=0),
        "shots": SHOTS_TIMED,
        "batch_size": VQA["batch_size"],
        "max_new_tokens": VQA["max_new_tokens"],
        "linear_map": linear_map,
        "features": rng.standard_normal((images, *features)).astype(np.float16),
        "support_features": rng.standard_normal((support_images, *features)).astype(np.float16),
        "device": device,
    }
    return arguments, len(questions)


def timed(fn, iters: int, lm, device: str) -> tuple[float, list[str], int]:
    """Median seconds of ``fn()`` over ``iters`` runs, its result, and the LM forward calls of one run."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    calls = []
    hook = lm.register_forward_hook(lambda *_: calls.append(1))
    result = fn()  # warm-up, and the calls of one run
    hook.remove()
    times = []
    for _ in range(iters):
        sync()
        started = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result, len(calls)


def run(device: str, iters: int, lm_dir: Path | None = None, images: int = IMAGES) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        lm_dir = lm_dir or Path(tmp) / "smollm2-135m"
        prepare_language_model("smollm2-135m", lm_dir)  # a no-op when lm_dir already holds it
        # float32, where the two paths' answers must be identical: bfloat16 rounds a prefix's
        # cached keys and a whole prompt's differently, so an answer can flip on a near-tie.
        lm, tokenizer, _ = load_language_model(lm_dir, device, torch.float32)
    arguments, questions = vqa_inputs(lm, images, SUPPORT_IMAGES, device)
    batches = -(-questions // arguments["batch_size"])
    answer = lambda: answer_questions(lm, tokenizer, **arguments)["prediction"].tolist()  # noqa: E731
    new_s, new, new_calls = timed(answer, iters, lm, device)
    old_s, old, old_calls = timed(lambda: full_prompt_answers(lm, tokenizer, **arguments), iters, lm, device)
    assert new == old, "prefix reuse and early stop changed an answer"
    return {
        "lm": "smollm2-135m",
        "shots": SHOTS_TIMED,
        "images": images,
        "questions": questions,
        "batch_size": arguments["batch_size"],
        "max_new_tokens": arguments["max_new_tokens"],
        "iters": iters,
        "identical_answers": new == old,
        "answers_per_s": questions / new_s,
        "old_answers_per_s": questions / old_s,
        "vqa_speedup": old_s / new_s,
        # Decoding steps per batch, as many as its longest answer needs (on the new path the rows
        # already complete leave the batch): one per LM call but, on the new path, the call that
        # prefills the batch's prefixes.
        "tokens_per_row": (new_calls - batches) / batches,
        "old_tokens_per_row": old_calls / batches,
    }


def report_rows(result: dict) -> list[tuple[str, str]]:
    r = result
    return [
        (
            "vqa_speedup",
            f"{r['vqa_speedup']:.2f}x: {r['shots']}-shot answers {r['answers_per_s']:,.1f}/s with prefix reuse + "
            f"early stop, {r['old_answers_per_s']:,.1f}/s with whole prompts (answers identical)",
        ),
        (
            "VQA tokens/row",
            f"{r['tokens_per_row']:.2f} decoded (old {r['old_tokens_per_row']:.2f}, max_new_tokens "
            f"{r['max_new_tokens']}); {r['questions']} questions of {r['images']} images, batch {r['batch_size']}",
        ),
    ]


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, default=3, help="timed runs of each path (median reported)")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args()
    result = run(args.device, args.iters)
    print("\n".join(f"{k:22s} {v}" for k, v in report_rows(result)))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
