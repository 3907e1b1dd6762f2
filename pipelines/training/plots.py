"""Pictures logged with a training run: the convergence plot and a grid of predictions."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image


def convergence_figure(history: Sequence[Mapping[str, float]]) -> Any:
    """AP / AP50 and the training loss against epoch (epochs numbered from 1).

    ``history``: one dict per epoch with ``epoch`` (0-based), ``AP``, ``AP50`` and ``loss``.
    Returns a matplotlib ``Figure`` made without pyplot: no display, no global backend switch,
    nothing to close.
    """
    from matplotlib.figure import Figure

    epochs = [h["epoch"] + 1 for h in history]
    figure = Figure(figsize=(8, 3.2))
    ap_axes, loss_axes = figure.subplots(1, 2)
    for key, style in (("AP", "o-"), ("AP50", "s--")):
        ap_axes.plot(epochs, [100 * h[key] for h in history], style, label=key)
    ap_axes.set_xlabel("epoch")
    ap_axes.set_ylabel("COCO AP (%)")
    ap_axes.set_title("validation")
    ap_axes.legend()
    ap_axes.grid(alpha=0.3)
    loss_axes.plot(epochs, [h["loss"] for h in history], "o-", color="tab:red")
    loss_axes.set_xlabel("epoch")
    loss_axes.set_ylabel("weighted loss (all layers)")
    loss_axes.set_title("training")
    loss_axes.grid(alpha=0.3)
    for axes in (ap_axes, loss_axes):
        axes.xaxis.get_major_locator().set_params(integer=True)
    figure.tight_layout()
    return figure


def image_grid(images: Sequence[Image.Image], columns: int = 2, cell: int = 480) -> Image.Image:
    """Tile pictures (each fitted into ``cell`` x ``cell``) into one RGB image."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    grid = Image.new("RGB", (columns * cell, rows * cell), "white")
    for i, image in enumerate(images):
        tile = image.convert("RGB")
        tile.thumbnail((cell, cell))
        x, y = (i % columns) * cell, (i // columns) * cell
        grid.paste(tile, (x + (cell - tile.width) // 2, y + (cell - tile.height) // 2))
    return grid
