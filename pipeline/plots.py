"""Small PNG plots for asset metadata (rendered headless)."""

import base64
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def loss_curve_png(losses: list[float], title: str) -> bytes:
    figure, axis = plt.subplots(figsize=(6, 3.2), dpi=100)
    axis.plot(range(1, len(losses) + 1), losses, linewidth=1)
    axis.set(xlabel="step", ylabel="caption LM loss", title=title)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure_png(figure)


def markdown_image(png: bytes, alt: str) -> str:
    """Markdown that embeds a PNG inline, so the Dagster UI shows it in the metadata panel."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def figure_png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def gallery_png(items: list[tuple], title: str) -> bytes:
    """One row per item ``(image, heading, lines)``: the image (a PIL image, or None when it could
    not be read) beside its heading and its lines of text (each system's output)."""
    rows = max(1, len(items))
    figure, axes = plt.subplots(rows, 2, figsize=(15, 1.9 * rows), dpi=80, width_ratios=[1, 8], squeeze=False)
    for (image, heading, lines), (picture, text) in zip(items, axes, strict=False):
        picture.axis("off")
        text.axis("off")
        if image is not None:
            picture.imshow(image)
        text.text(0, 1, heading, fontsize=9, fontweight="bold", va="top", family="monospace")
        text.text(0, 0.82, "\n".join(lines), fontsize=7.5, va="top", family="monospace")
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    return figure_png(figure)
