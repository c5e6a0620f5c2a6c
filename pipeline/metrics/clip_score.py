"""CLIP-S and RefCLIP-S (Hessel et al. 2021) with CLIP ViT-B/32 (open_clip ``ViT-B-32-quickgelu``).

CLIP-S(c, v) = 2.5 * max(cos(E_v, E_c), 0), text prefixed with "A photo depicts ".
RefCLIP-S(c, R, v) = harmonic mean of CLIP-S(c, v) and max(max_r cos(E_c, E_r), 0).
Scores are only computed with the real OpenAI weights: random weights would give numbers that look
like scores and mean nothing.
"""

import numpy as np

from pipeline.weights import Weights

PREFIX = "A photo depicts "
WEIGHT = 2.5
CLIP_MODEL = "ViT-B-32-quickgelu"
CLIP_PRETRAINED = "openai"


CLIP_VIT_B32 = Weights(
    "clip_vit_b32",
    "timm/vit_base_patch32_clip_224.openai",
    ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"),
    f"the OpenAI CLIP ViT-B/32 weights (open_clip '{CLIP_MODEL}', '{CLIP_PRETRAINED}'; a file)",
)


class ClipUnavailable(RuntimeError):
    """The CLIP ViT-B/32 weights are not on this machine."""


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def clip_s(image_embeddings: np.ndarray, candidate_embeddings: np.ndarray) -> np.ndarray:
    """Per-image CLIP-S from (N, d) image and candidate embeddings."""
    cos = (_normalise(image_embeddings) * _normalise(candidate_embeddings)).sum(-1)
    return WEIGHT * np.maximum(cos, 0.0)


def ref_clip_s(
    clip_scores: np.ndarray, candidate_embeddings: np.ndarray, reference_embeddings: list[np.ndarray]
) -> np.ndarray:
    """Per-image RefCLIP-S from CLIP-S, candidate embeddings (N, d) and each image's references (R_i, d)."""
    candidates = _normalise(candidate_embeddings)
    ref_scores = np.array(
        [
            max(float((_normalise(refs) @ c).max()), 0.0)
            for c, refs in zip(candidates, reference_embeddings, strict=True)
        ]
    )
    total = clip_scores + ref_scores
    return np.where(total > 0, 2 * clip_scores * ref_scores / np.where(total > 0, total, 1), 0.0)


class ClipScorer:
    """Embeds images and texts with CLIP ViT-B/32; construction fails with ClipUnavailable offline."""

    def __init__(self, weights: str | None = None, device: str = "cpu"):
        import open_clip
        import torch

        weights = weights or CLIP_VIT_B32.local()
        # Checked first: building the model only to fail offline costs seconds.
        if not weights and (missing := CLIP_VIT_B32.missing()):
            raise ClipUnavailable(f"CLIP-S: {missing}")
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                CLIP_MODEL, pretrained=weights or CLIP_PRETRAINED, device=device
            )
        except Exception as error:  # open_clip raises several types for absent weights offline
            raise ClipUnavailable(f"CLIP-S: {CLIP_VIT_B32.error(error)}") from error
        self.model, self.preprocess, self.device = model.eval(), preprocess, device
        self.tokenizer = open_clip.get_tokenizer(CLIP_MODEL)
        self.torch = torch

    def embed_images(self, images) -> np.ndarray:
        with self.torch.inference_mode():
            batch = self.torch.stack([self.preprocess(i) for i in images]).to(self.device)
            return self.model.encode_image(batch).float().cpu().numpy()

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        with self.torch.inference_mode():
            tokens = self.tokenizer([PREFIX + t for t in texts]).to(self.device)
            return self.model.encode_text(tokens).float().cpu().numpy()


def clip_scores(
    scorer: ClipScorer, image_paths: list[str], candidates: list[str], references: list[list[str]], batch_size: int = 64
) -> dict[str, np.ndarray]:
    """Per-image CLIP-S and RefCLIP-S, aligned with ``image_paths`` (NaN for an unreadable image),
    a batch of images at a time (memory does not grow with the split)."""
    from pipeline.datasets.manifest import load_image

    clip, ref = np.full(len(image_paths), np.nan), np.full(len(image_paths), np.nan)
    for start in range(0, len(image_paths), batch_size):
        stop = min(start + batch_size, len(image_paths))
        images = {i: load_image(image_paths[i])[0] for i in range(start, stop)}
        ok = [i for i, image in images.items() if image is not None]
        if not ok:
            continue
        candidate_embeddings = scorer.embed_texts([candidates[i] for i in ok])
        per_image = clip_s(scorer.embed_images([images[i] for i in ok]), candidate_embeddings)
        clip[ok] = per_image
        ref[ok] = ref_clip_s(per_image, candidate_embeddings, [scorer.embed_texts(references[i]) for i in ok])
    return {"CLIP-S": clip, "RefCLIP-S": ref}
