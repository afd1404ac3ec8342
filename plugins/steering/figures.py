"""Figures 5 and 9 as PNG files: grids of original and steered images with their labels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

LABEL_HEIGHT = 14
MIN_CELL = 128


def image_grid(
    rows: Sequence[Sequence[Image.Image]],
    column_labels: Sequence[str],
    row_labels: Sequence[str] = (),
) -> Image.Image:
    """A grid, one labelled column per entry of ``column_labels`` (rows may differ in length);
    small images are enlarged (nearest neighbour) to ``MIN_CELL`` pixels so labels fit."""
    side = max(MIN_CELL, max(im.width for row in rows for im in row))
    left = 0 if not row_labels else 6 * max(len(s) for s in row_labels) + 8
    columns = max(len(column_labels), max(len(row) for row in rows))
    width = left + side * columns
    height = LABEL_HEIGHT + side * len(rows)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for j, label in enumerate(column_labels):
        draw.text((left + j * side + 2, 1), label[: side // 6], fill="black")
    for i, row in enumerate(rows):
        if row_labels:
            draw.text(
                (2, LABEL_HEIGHT + i * side + side // 2), row_labels[i][: left // 6], fill="black"
            )
        for j, im in enumerate(row):
            cell = im if im.width == side else im.resize((side, side), Image.Resampling.NEAREST)
            canvas.paste(cell.convert("RGB"), (left + j * side, LABEL_HEIGHT + i * side))
    return canvas


def save_png(image: Image.Image, path: Path) -> Path:
    import io

    from saebench_vision_plugins.steering.steering import _atomic_write

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    _atomic_write(path, buf.getvalue())
    return path
