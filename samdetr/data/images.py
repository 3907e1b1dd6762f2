"""Decoding encoded image bytes (any mode, optional EXIF orientation) into RGB PIL images."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageOps

# ----------------------------------------------------------------------------- decoding
#: The EXIF orientation tag, and its values that swap width and height.
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED = {5, 6, 7, 8}
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _open(data: bytes) -> Image.Image:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be encoded image bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ValueError("cannot decode an image from empty bytes")
    try:
        return Image.open(io.BytesIO(data))
    except (OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise ValueError(f"could not decode image bytes ({len(data)} bytes): {error}") from error


def oriented_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` of encoded image ``data`` as shown, after its EXIF orientation: the
    size a label file's normalised or pixel boxes refer to. Reads the header only.

    Raises:
        PIL.UnidentifiedImageError, OSError: the bytes are not a readable image.
    """
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        if image.getexif().get(_EXIF_ORIENTATION) in _TRANSPOSED:
            width, height = height, width
    return width, height


def _finish(image: Image.Image, exif_transpose: bool) -> Image.Image:
    try:
        image.load()
    except (OSError, SyntaxError) as error:
        raise ValueError(f"could not decode image data: {error}") from error
    if exif_transpose:
        image = ImageOps.exif_transpose(image)
    return to_rgb(image)


def decode_image(data: bytes, exif_transpose: bool = False) -> Image.Image:
    """Decode encoded image bytes (JPEG, PNG, ...) to an RGB PIL image of the stored size.

    EXIF orientation is applied only when ``exif_transpose`` is true (COCO boxes refer to the
    stored pixel orientation, so leave it off for COCO). Modes are converted by :func:`to_rgb`.
    """
    return _finish(_open(data), exif_transpose)


def decode_image_draft(
    data: bytes, min_side: int, exif_transpose: bool = False
) -> tuple[Image.Image, int]:
    """Like :func:`decode_image`, but JPEGs are decoded at a reduced scale when that keeps the
    shorter side ``>= min_side``: returns ``(image, reduction)`` with ``reduction`` in 1, 2, 4, 8.

    libjpeg's DCT scaling makes decoded pixel ``i`` cover stored pixels ``[k*i, k*(i+1))`` (the
    last one partly), so boxes stay exactly consistent when divided by ``k``:
    ``rescale_target(target, 1 / k, 1 / k)``. Worth it when sources are much larger than the
    training sizes (for 640 x 480 COCO images at 480..800 it never reduces).
    """
    if int(min_side) != min_side or min_side < 1:
        raise ValueError(f"min_side must be a positive int, got {min_side!r}")
    image = _open(data)
    width, height = image.size
    reduction = 1
    if image.format == "JPEG":
        wanted = max(k for k in (1, 2, 4, 8) if min(width, height) // k >= min_side or k == 1)
        if wanted > 1:
            image.draft(image.mode, (width // wanted, height // wanted))
            for k in (1, 2, 4, 8):
                if image.size == (math.ceil(width / k), math.ceil(height / k)):
                    reduction = k
                    break
            else:  # pragma: no cover - libjpeg always scales by a power of two
                raise ValueError(f"unexpected draft size {image.size} for {width}x{height}")
    return _finish(image, exif_transpose), reduction


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a PIL image of any mode to RGB.

    - 16-bit grayscale (``I;16*``, and ``I``, which Pillow uses for 16-bit data) is scaled
      linearly 0..65535 -> 0..255 (rounded), not clipped; ``F`` is clipped to 0..255.
    - Modes with transparency (``RGBA``, ``LA``, ``PA``, ``P`` with a transparent index) are
      composited over white instead of dropping alpha (colours under alpha 0 are arbitrary).
    - ``CMYK`` (Adobe-inverted JPEGs are un-inverted by Pillow) and the rest use Pillow's
      conversion; ICC profiles are not applied.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL.Image, got {type(image).__name__}")
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT:
        values = np.clip(np.asarray(image).astype(np.int64), 0, 65535)
        return Image.fromarray(((values * 255 + 32767) // 65535).astype(np.uint8)).convert("RGB")
    if mode == "F":
        values = np.clip(np.rint(np.asarray(image)), 0, 255).astype(np.uint8)
        return Image.fromarray(values).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise ValueError(f"cannot convert an image of mode {mode!r} to RGB: {error}") from error
