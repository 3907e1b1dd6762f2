"""Generated photos for the inference tests."""

from __future__ import annotations

import io

import torch
from PIL import Image


def random_jpeg(width: int, height: int, seed: int) -> bytes:
    """A ``width`` x ``height`` JPEG of uniform noise, the same for the same ``seed``."""
    pixels = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(seed))
    buffer = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buffer, format="JPEG")
    return buffer.getvalue()
