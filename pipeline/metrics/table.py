"""Shaping the tidy metric table for reading: the paper-style comparison and a bar chart."""

import io

import pandas as pd

from pipeline.plots import plt

# Columns in the order the paper's tables use: captioning first, then VQA by shots.
CAPTION_COLUMNS = ["CIDEr-D", "BLEU-4", "METEOR", "ROUGE-L", "CLIP-S", "RefCLIP-S", "names colour+shape (%)"]


def comparison_table(tidy: pd.DataFrame) -> pd.DataFrame:
    """One row per backbone; columns like 'test CIDEr-D' and 'VQA 0-shot'."""
    captions = tidy[(tidy["task"] == "captioning") & tidy["metric"].isin(CAPTION_COLUMNS)]
    # Splits are named by their dataset too when several datasets are captioned (NoCaps "val" is not COCO's).
    several = captions["dataset"].nunique() > 1
    captions = captions.assign(
        split=(captions["dataset"] + " " + captions["split"]) if several else captions["split"]
    )
    caption_wide = captions.pivot_table(index="backbone", columns=["split", "metric"], values="value")
    caption_wide.columns = [f"{split} {metric}" for split, metric in caption_wide.columns]
    order = [f"{s} {m}" for s in sorted(captions["split"].unique(), reverse=True) for m in CAPTION_COLUMNS]
    caption_wide = caption_wide[[c for c in order if c in caption_wide.columns]]
    vqa = tidy[(tidy["task"] == "vqa") & (tidy["metric"] == "VQA accuracy")]
    vqa_wide = vqa.pivot_table(index="backbone", columns="shots", values="value")
    vqa_wide.columns = [f"VQA {n}-shot" for n in vqa_wide.columns]
    return caption_wide.join(vqa_wide, how="outer")


def metrics_bar_chart(tidy: pd.DataFrame) -> bytes:
    """PNG: one panel per headline metric, one bar per backbone."""
    wide = comparison_table(tidy)
    headline = [c for c in wide.columns if c.endswith(("CIDEr-D", "colour+shape (%)")) or c.startswith("VQA")]
    figure, axes = plt.subplots(1, len(headline), figsize=(3 * len(headline), 3.2), dpi=100, squeeze=False)
    for axis, column in zip(axes[0], headline):
        values = wide[column].dropna()
        axis.bar(range(len(values)), values.to_numpy(), color=[f"C{i}" for i in range(len(values))])
        axis.set_xticks(range(len(values)), values.index, rotation=30, ha="right", fontsize=7)
        axis.set_title(column, fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()
