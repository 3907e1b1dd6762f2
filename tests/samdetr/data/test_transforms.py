"""Property tests of the DETR augmentation (samdetr.data.transforms) and of image decoding."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from samdetr.data.images import decode_image, decode_image_draft, to_rgb
from samdetr.data.transforms import (
    ClipBoxes,
    Compose,
    RandomHorizontalFlip,
    RandomResize,
    RandomSizeCrop,
    Resize,
    ToTensorNormalize,
    crop,
    eval_transforms,
    rescale_target,
    resized_shape,
    train_transforms,
)

SMALL = {
    "scales": tuple(range(96, 161, 16)),
    "max_size": 256,
    "crop_sizes": (80, 100, 120),
    "crop_range": (64, 120),
}
BACKGROUND = np.array([128, 128, 128])
# fills whose offsets from the background are orthogonal or opposite, so a blend of two fills at
# an edge never looks like a third one
FILLS = [(255, 128, 128), (128, 255, 128), (128, 128, 255), (0, 128, 128), (128, 0, 128)]


def geometric(transforms: Compose) -> Compose:
    """The pipeline without its final ToTensorNormalize: uint8 image, absolute xyxy boxes."""
    assert isinstance(transforms.transforms[-1], ToTensorNormalize)
    return Compose(transforms.transforms[:-1])


@st.composite
def scenes(draw, max_boxes: int = len(FILLS)):
    """An image with non-overlapping filled boxes (each at least 8 px, >= 4 px apart) of unique
    fills on a uniform background; labels index FILLS."""
    width, height = draw(st.integers(64, 320)), draw(st.integers(64, 320))
    cols, rows = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    cells = draw(st.permutations(range(cols * rows)))[: draw(st.integers(0, max_boxes))]
    pixels = np.broadcast_to(BACKGROUND.astype(np.uint8), (height, width, 3)).copy()
    boxes = []
    for cell in cells:
        cw, ch = width // cols, height // rows
        left, top = (cell % cols) * cw + 2, (cell // cols) * ch + 2
        x1 = draw(st.integers(left, left + cw - 12))
        y1 = draw(st.integers(top, top + ch - 12))
        x2 = draw(st.integers(x1 + 8, left + cw - 4))
        y2 = draw(st.integers(y1 + 8, top + ch - 4))
        pixels[y1:y2, x1:x2] = FILLS[len(boxes)]
        boxes.append((x1, y1, x2, y2))
    target = {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.arange(len(boxes), dtype=torch.int64),
        "iscrowd": torch.zeros(len(boxes), dtype=torch.int64),
        "area": torch.tensor([(b[2] - b[0]) * (b[3] - b[1]) for b in boxes], dtype=torch.float32),
        "image_id": 7,
        "orig_size": torch.tensor([height, width]),
    }
    return Image.fromarray(pixels), target


def fill_weight(image: torch.Tensor, fill) -> np.ndarray:
    """Per-pixel share of ``fill`` (projection of pixel - background on fill - background)."""
    offset = np.asarray(fill) - BACKGROUND
    pixels = image.permute(1, 2, 0).numpy().astype(np.float64) - BACKGROUND
    return pixels @ offset / (offset @ offset)


@settings(max_examples=40, deadline=None)
@given(scenes(), st.integers(0, 2**31 - 1))
def test_boxes_follow_pixels_through_flip_resize_crop(scene, seed):
    image, target = scene
    out, result = geometric(train_transforms(**SMALL))(
        image, target, torch.Generator().manual_seed(seed)
    )
    assert out.dtype == torch.uint8 and out.shape[0] == 3
    height, width = out.shape[1:]
    for box, label in zip(result["boxes"].tolist(), result["labels"].tolist(), strict=True):
        if min(box[2] - box[0], box[3] - box[1]) < 3:
            continue  # slivers left by a crop may vanish in a downscale
        ys, xs = np.nonzero(fill_weight(out, FILLS[label]) > 0.5)
        found = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert np.allclose(found, box, atol=2.0), (found, box)
    assert result["iscrowd"].shape == result["labels"].shape == result["area"].shape
    for label in set(target["labels"].tolist()) - set(result["labels"].tolist()):
        assert not (fill_weight(out, FILLS[label]) > 0.5).any()  # removed boxes left no pixels
    assert result["image_id"] == 7 and torch.equal(result["orig_size"], target["orig_size"])


boxes_anywhere = st.lists(
    st.tuples(*[st.floats(-50, 400, allow_nan=False, width=32)] * 4), min_size=0, max_size=12
)


@settings(max_examples=40, deadline=None)
@given(st.integers(40, 300), st.integers(40, 300), boxes_anywhere, st.integers(0, 2**31 - 1))
def test_train_boxes_stay_inside_image(width, height, corners, seed):
    # arbitrary boxes, partly outside the image or degenerate: ClipBoxes cleans them first
    boxes = torch.tensor(corners, dtype=torch.float32).reshape(-1, 4)
    target = {"boxes": boxes, "labels": torch.arange(len(boxes))}
    image = Image.new("RGB", (width, height), (90, 10, 200))
    transforms = train_transforms(**SMALL)
    out, pixel = geometric(transforms)(image, target, torch.Generator().manual_seed(seed))
    h, w = out.shape[1:]
    b = pixel["boxes"]
    assert ((b[:, 0] >= 0) & (b[:, 0] < b[:, 2]) & (b[:, 2] <= w)).all()
    assert ((b[:, 1] >= 0) & (b[:, 1] < b[:, 3]) & (b[:, 3] <= h)).all()

    normed, final = transforms(image, target, torch.Generator().manual_seed(seed))
    assert normed.dtype == torch.float32 and normed.shape == (3, h, w)
    assert final["size"].tolist() == [h, w]
    cx, cy, bw, bh = final["boxes"].unbind(-1)
    eps = 1e-5
    assert ((bw > 0) & (bh > 0)).all()
    assert ((cx - bw / 2 >= -eps) & (cx + bw / 2 <= 1 + eps)).all()
    assert ((cy - bh / 2 >= -eps) & (cy + bh / 2 <= 1 + eps)).all()
    assert torch.equal(final["labels"], pixel["labels"])


@settings(max_examples=15, deadline=None)
@given(scenes(), st.integers(0, 2**31 - 1))
def test_same_seed_same_output(scene, seed):
    image, target = scene
    transforms = train_transforms(**SMALL)
    for make in (lambda: torch.Generator().manual_seed(seed), lambda: random.Random(seed)):
        first, second = transforms(image, target, make()), transforms(image, target, make())
        assert torch.equal(first[0], second[0])
        assert torch.equal(first[1]["boxes"], second[1]["boxes"])
        assert torch.equal(first[1]["labels"], second[1]["labels"])


@settings(max_examples=40, deadline=None)
@given(scenes(), st.data())
def test_crop_keeps_labels_aligned(scene, data):
    image, target = scene
    width, height = image.size
    top, left = data.draw(st.integers(0, height - 1)), data.draw(st.integers(0, width - 1))
    h, w = data.draw(st.integers(1, height - top)), data.draw(st.integers(1, width - left))
    out, result = crop(image, target, top, left, h, w)
    assert out.shape == (3, h, w)
    for box, label, area in zip(result["boxes"], result["labels"], result["area"], strict=True):
        x1, y1, x2, y2 = target["boxes"][label].tolist()
        expected = [max(x1 - left, 0), max(y1 - top, 0), min(x2 - left, w), min(y2 - top, h)]
        assert box.tolist() == pytest.approx(expected)
        kept = (expected[2] - expected[0]) * (expected[3] - expected[1])
        assert float(area) == pytest.approx(kept, rel=1e-5)  # area shrinks with the clipped box
    dropped = set(range(len(target["labels"]))) - set(result["labels"].tolist())
    for label in dropped:  # dropped boxes are exactly those outside the window
        x1, y1, x2, y2 = target["boxes"][label].tolist()
        assert x2 <= left or x1 >= left + w or y2 <= top or y1 >= top + h


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 3000), st.integers(1, 3000), st.integers(1, 1000), st.integers(1, 2000))
def test_eval_resize_shape(width, height, size, max_size):
    new_w, new_h = resized_shape(width, height, size, max_size)
    short, long = min(width, height), max(width, height)
    if long * size / short <= max_size:
        assert min(new_w, new_h) == size
    else:
        assert max(new_w, new_h) == max_size and min(new_w, new_h) <= size
    assert max(new_w, new_h) <= max_size and min(new_w, new_h) >= 1
    scale = min(size / short, max_size / long)  # aspect kept: each side within rounding
    for new, old in ((new_w, width), (new_h, height)):
        assert abs(new - old * scale) <= max(0.5, 1 - old * scale) + 1e-9


@pytest.mark.parametrize(("width", "height"), [(640, 480), (480, 640), (300, 1200), (50, 50)])
def test_eval_transforms_sizes(width, height):
    image = Image.new("RGB", (width, height), (1, 2, 3))
    target = {"boxes": torch.tensor([[0.0, 0.0, width, height]]), "labels": torch.tensor([3])}
    out, result = eval_transforms(size=128, max_size=200)(image, target)
    assert tuple(out.shape[1:]) == resized_shape(width, height, 128, 200)[::-1]
    assert result["boxes"][0].tolist() == pytest.approx([0.5, 0.5, 1.0, 1.0])
    assert torch.equal(result["size"], torch.tensor(out.shape[1:]))


def test_normalisation_values_and_flip():
    image = Image.new("RGB", (4, 2), (255, 0, 128))
    target = {"boxes": torch.tensor([[0.0, 0.0, 1.0, 2.0]]), "labels": torch.tensor([1])}
    out, _ = ToTensorNormalize()(image, target)
    assert out[:, 0, 0].tolist() == pytest.approx(
        [(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (128 / 255 - 0.406) / 0.225], rel=1e-5
    )
    _, flipped = RandomHorizontalFlip(p=1.0)(image, target, torch.Generator())
    assert flipped["boxes"].tolist() == [[3.0, 0.0, 4.0, 2.0]]
    assert target["boxes"].tolist() == [[0.0, 0.0, 1.0, 2.0]]  # input not modified


def test_bad_inputs_raise_helpful_errors():
    image = Image.new("RGB", (8, 8))
    target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    with pytest.raises(TypeError, match="torch.Generator"):
        RandomResize([4])(image, target)
    with pytest.raises(ValueError, match="RGB"):
        Resize(4)(Image.new("L", (8, 8)), target)
    with pytest.raises(ValueError, match="boxes"):
        Resize(4)(image, {"labels": target["labels"]})
    with pytest.raises(TypeError, match="float"):
        Resize(4)(image, {**target, "boxes": torch.zeros(0, 4, dtype=torch.int64)})
    with pytest.raises(ValueError, match="one entry per box"):
        Resize(4)(image, {**target, "area": torch.ones(3)})
    with pytest.raises(ValueError):
        RandomSizeCrop(10, 5)
    with pytest.raises(ValueError):
        RandomHorizontalFlip(p=1.5)
    with pytest.raises(TypeError):
        decode_image("not bytes")
    with pytest.raises(ValueError, match="decode"):
        decode_image(b"definitely not an image")


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def test_decode_modes():
    gray = decode_image(encode(Image.new("L", (5, 3), 77), "PNG"))
    assert gray.mode == "RGB" and gray.size == (5, 3) and gray.getpixel((0, 0)) == (77, 77, 77)

    rgba = Image.new("RGBA", (2, 1), (10, 20, 30, 255))
    rgba.putpixel((1, 0), (10, 20, 30, 0))  # fully transparent: composited over white
    decoded = decode_image(encode(rgba, "PNG"))
    assert decoded.getpixel((0, 0)) == (10, 20, 30) and decoded.getpixel((1, 0)) == (255,) * 3

    cmyk = decode_image(encode(Image.new("CMYK", (16, 16), (0, 0, 0, 0)), "JPEG", quality=100))
    assert cmyk.mode == "RGB" and min(cmyk.getpixel((8, 8))) >= 250  # no ink -> white

    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    sixteen = Image.fromarray(values)
    assert sixteen.mode == "I;16"
    decoded = np.asarray(decode_image(encode(sixteen, "PNG")))
    assert decoded[0, :, 0].tolist() == [0, 1, 128, 255]  # full range, not clipped at 255
    as_int = np.asarray(to_rgb(Image.fromarray(values.astype(np.int32), mode="I")))
    assert as_int[0, :, 0].tolist() == [0, 1, 128, 255]

    palette = Image.new("P", (2, 2), 0)
    palette.putpalette([200, 0, 0] + [0, 0, 0] * 255)
    assert decode_image(encode(palette, "PNG")).getpixel((1, 1)) == (200, 0, 0)


@pytest.mark.parametrize("exif_transpose", [True, False])
def test_decode_exif_orientation(exif_transpose):
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 8, 20))  # red stripe on the stored left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    decoded = decode_image(encode(stored, "JPEG", exif=exif, quality=95), exif_transpose)
    if exif_transpose:
        assert decoded.size == (20, 40)
        red, green, blue = decoded.getpixel((10, 2))  # the left edge is now the top edge
    else:
        assert decoded.size == (40, 20)
        red, green, blue = decoded.getpixel((2, 10))
    assert red > 200 and blue < 60


def test_draft_decoding_keeps_boxes_consistent():
    stored = Image.new("RGB", (641, 479), (128, 128, 128))
    stored.paste((255, 128, 128), (101, 53, 333, 301))
    target = {"boxes": torch.tensor([[101.0, 53.0, 333.0, 301.0]]), "labels": torch.tensor([0])}
    data = encode(stored, "JPEG", quality=95)
    image, reduction = decode_image_draft(data, min_side=100)
    assert reduction == 4 and image.size == (161, 120)
    scaled = rescale_target(target, 1 / reduction, 1 / reduction)
    ys, xs = np.nonzero(
        fill_weight(torch.from_numpy(np.array(image)).permute(2, 0, 1), FILLS[0]) > 0.5
    )
    found = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert np.allclose(found, scaled["boxes"][0].tolist(), atol=1.0)
    assert decode_image_draft(data, min_side=479)[1] == 1
    assert decode_image_draft(encode(stored, "PNG"), min_side=50)[1] == 1  # only JPEG


def test_normalisation_drops_boxes_that_collapse_to_zero_size():
    # Found by hypothesis: a 1.4e-45 px high box survives the pixel-space steps but its
    # normalised height underflows to 0.
    target = {
        "boxes": torch.tensor([[0.0, 0.0, 1.0, 1.401298464324817e-45], [0, 0, 20, 20.0]]),
        "labels": torch.tensor([3, 5]),
    }
    _, out = ToTensorNormalize()(Image.new("RGB", (40, 40)), target)
    assert out["labels"].tolist() == [5]
    assert (out["boxes"][:, 2:] > 0).all()
    # ClipBoxes, the first step of both pipelines, already drops it.
    _, clipped = ClipBoxes()(Image.new("RGB", (40, 40)), target)
    assert clipped["labels"].tolist() == [5]
