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
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def markdown_image(png: bytes, alt: str) -> str:
    """Markdown that embeds a PNG inline, so the Dagster UI shows it in the metadata panel."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"
