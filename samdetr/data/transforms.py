"""DETR's data augmentation as composable transforms seeded by the caller.

Every transform is called as ``transform(image, target, generator=None)`` and returns
``(image, target)``:

- ``image``: a ``PIL.Image`` in mode RGB or a ``uint8`` tensor ``(3, H, W)``. The geometric
  transforms convert a PIL image to a ``uint8`` tensor once and work on tensors from then on
  (resizing a ``uint8`` tensor with torchvision's antialiased bilinear kernel is ~7x faster on
  CPU than PIL's resize of the same image and agrees with it within one grey level), so their
  output image is always a ``uint8 (3, H, W)`` tensor. :class:`ToTensorNormalize` turns it into
  the ``float32 (3, H, W)`` ImageNet-normalised tensor the model takes.
- ``target``: a dict with ``boxes`` (float32 ``(N, 4)``, absolute ``(x1, y1, x2, y2)`` pixels of
  the current image), ``labels`` (int64 ``(N,)``) and optional per-box ``iscrowd`` ``(N,)`` and
  ``area`` ``(N,)``; other keys (``image_id``, ``orig_size``, ...) pass through unchanged. Inputs
  are never modified in place. After :class:`ToTensorNormalize`, ``boxes`` are normalised
  ``(cx, cy, w, h)`` of the final image and ``size`` is ``(h, w)``.
- ``generator``: a ``torch.Generator`` or ``random.Random``. Random transforms require it (no
  global RNG is used), so the same seed gives the same output; deterministic ones ignore it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, Union

import torch
import torchvision.transforms.v2.functional as F
from PIL import Image
from torch import Tensor
from torchvision.ops import box_convert

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PER_BOX_KEYS = ("labels", "iscrowd", "area")  # filtered together with ``boxes``
DEFAULT_SCALES = tuple(range(480, 801, 32))  # 480, 512, ..., 800

RandomSource = Union[torch.Generator, random.Random]  # noqa: UP007 (runtime isinstance use)
ImageLike = Union[Image.Image, Tensor]  # noqa: UP007
Target = dict[str, Any]


# ----------------------------------------------------------------------------- random numbers
def _require(generator: RandomSource | None, who: str) -> RandomSource:
    if isinstance(generator, (torch.Generator, random.Random)):
        return generator
    raise TypeError(
        f"{who} is random: pass a torch.Generator or random.Random as the third "
        f"argument, e.g. torch.Generator().manual_seed(0); got {generator!r}"
    )


def _check_p(p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"probability p must be in [0, 1], got {p}")
    return p


def _randint(generator: RandomSource, low: int, high: int) -> int:
    """A uniform integer in ``[low, high]`` (both inclusive)."""
    if isinstance(generator, random.Random):
        return generator.randint(low, high)
    return int(torch.randint(low, high + 1, (1,), generator=generator).item())


def _uniform(generator: RandomSource) -> float:
    """A uniform float in ``[0, 1)``."""
    if isinstance(generator, random.Random):
        return generator.random()
    return float(torch.rand((), generator=generator).item())


# ----------------------------------------------------------------------------- checks and helpers
def as_uint8_tensor(image: ImageLike) -> Tensor:
    """An RGB PIL image or ``uint8 (3, H, W)`` tensor as a ``uint8 (3, H, W)`` tensor."""
    if isinstance(image, Image.Image):
        if image.mode != "RGB":
            raise ValueError(
                f"expected an RGB PIL image, got mode {image.mode!r}; decode with "
                "samdetr.data.images.decode_image or call image.convert('RGB') first"
            )
        return F.pil_to_tensor(image)
    if isinstance(image, Tensor):
        if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(
                f"expected a uint8 (3, H, W) image tensor, got {image.dtype} {tuple(image.shape)}"
            )
        return image
    raise TypeError(f"image must be a PIL.Image or a uint8 tensor, got {type(image).__name__}")


def image_size(image: ImageLike) -> tuple[int, int]:
    """``(width, height)`` of a PIL image or a ``(C, H, W)`` tensor."""
    if isinstance(image, Image.Image):
        return image.size
    if isinstance(image, Tensor) and image.dim() == 3:
        return int(image.shape[-1]), int(image.shape[-2])
    raise TypeError(f"image must be a PIL.Image or a (C, H, W) tensor, got {type(image).__name__}")


def _checked(target: Target) -> Target:
    """A shallow copy of ``target`` after validating boxes, labels and the per-box keys."""
    if not isinstance(target, dict):
        raise TypeError(f"target must be a dict, got {type(target).__name__}")
    if "boxes" not in target or "labels" not in target:
        raise ValueError(f"target needs 'boxes' and 'labels', got keys {sorted(target)}")
    boxes, labels = target["boxes"], target["labels"]
    if not isinstance(boxes, Tensor) or not boxes.is_floating_point() or boxes.shape[-1:] != (4,):
        raise TypeError(f"target['boxes'] must be a float (N, 4) tensor, got {boxes!r:.80}")
    if boxes.dim() != 2:
        raise ValueError(f"target['boxes'] must be (N, 4), got shape {tuple(boxes.shape)}")
    if not isinstance(labels, Tensor) or labels.is_floating_point() or labels.dim() != 1:
        raise TypeError(f"target['labels'] must be an int64 (N,) tensor, got {labels!r:.80}")
    out = dict(target)
    out["boxes"] = boxes.to(torch.float32)
    for key in PER_BOX_KEYS:
        if key in out and (not isinstance(out[key], Tensor) or len(out[key]) != len(boxes)):
            raise ValueError(f"target[{key!r}] must be a tensor with one entry per box")
    return out


def _select(target: Target, keep: Tensor) -> Target:
    for key in ("boxes", *PER_BOX_KEYS):
        if key in target:
            target[key] = target[key][keep]
    return target


def _drop_collapsed(target: Target, old: Tensor) -> Target:
    """Remove boxes that had positive size in ``old`` but lost it to float32 round-off."""
    sides, old_sides = target["boxes"][:, 2:] - target["boxes"][:, :2], old[:, 2:] - old[:, :2]
    return _select(target, (sides > 0).all(1) | (old_sides <= 0).any(1))


def rescale_target(target: Target, scale_x: float, scale_y: float) -> Target:
    """Scale absolute xyxy ``boxes`` by ``(scale_x, scale_y)`` and ``area`` by their product.

    Use it after :func:`decode_image_draft` with ``1 / reduction`` for both scales.
    """
    out = _checked(target)
    factors = torch.tensor([scale_x, scale_y, scale_x, scale_y], dtype=torch.float32)
    out["boxes"] = out["boxes"] * factors
    if "area" in out:
        out["area"] = out["area"] * (scale_x * scale_y)
    return out


def resized_shape(width: int, height: int, size: int, max_size: int | None) -> tuple[int, int]:
    """``(new_width, new_height)`` with the shorter side ``size`` and the longer ``<= max_size``.

    The aspect ratio is kept (sides rounded to whole pixels). When the longer side would exceed
    ``max_size`` the image is scaled so that the longer side is exactly ``max_size`` (DETR's
    rule, except that DETR's truncation can overshoot ``max_size`` by a pixel).
    """
    if width < 1 or height < 1 or size < 1 or (max_size is not None and max_size < 1):
        raise ValueError(
            f"sizes must be positive: image {width}x{height}, size {size}, max_size {max_size}"
        )
    short, long = min(width, height), max(width, height)
    scale = size / short
    if max_size is not None and long * scale > max_size:
        scale = max_size / long
    new_short = size if scale == size / short else max(1, round(short * scale))
    new_long = min(round(long * scale), max_size) if max_size is not None else round(long * scale)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def _resize(image: ImageLike, target: Target, size: int, max_size: int | None):
    tensor, target = as_uint8_tensor(image), _checked(target)
    width, height = image_size(tensor)
    new_w, new_h = resized_shape(width, height, size, max_size)
    if (new_w, new_h) == (width, height):
        return tensor, target
    resized = F.resize(tensor.contiguous(), [new_h, new_w], antialias=True)
    old = target["boxes"]
    target = rescale_target(target, new_w / width, new_h / height)
    # float32 round-off must not push a box that was inside the image past the new border, nor
    # collapse a (very thin) box to zero size
    limits = torch.tensor([new_w, new_h, new_w, new_h], dtype=torch.float32)
    inside = old <= torch.tensor([width, height, width, height], dtype=torch.float32)
    target["boxes"] = torch.where(inside, torch.minimum(target["boxes"], limits), target["boxes"])
    return resized, _drop_collapsed(target, old)


# ----------------------------------------------------------------------------- transforms
class Compose:
    """Apply ``transforms`` in order, passing the same generator to each."""

    def __init__(self, transforms: Sequence[Callable]):
        transforms = list(transforms)
        if not transforms or not all(callable(t) for t in transforms):
            raise TypeError(f"Compose needs a non-empty list of callables, got {transforms!r}")
        self.transforms = transforms

    def __call__(self, image: ImageLike, target: Target, generator: RandomSource | None = None):
        for transform in self.transforms:
            image, target = transform(image, target, generator)
        return image, target


class RandomSelect:
    """Apply ``first`` with probability ``p``, otherwise ``second`` (one draw per call)."""

    def __init__(self, first: Callable, second: Callable, p: float = 0.5):
        if not (callable(first) and callable(second)):
            raise TypeError("RandomSelect needs two callable transforms")
        self.first, self.second, self.p = first, second, _check_p(p)

    def __call__(self, image: ImageLike, target: Target, generator: RandomSource | None = None):
        generator = _require(generator, "RandomSelect")
        chosen = self.first if _uniform(generator) < self.p else self.second
        return chosen(image, target, generator)


class RandomHorizontalFlip:
    """Mirror the image left-right with probability ``p``; boxes become ``(w-x2, y1, w-x1, y2)``."""

    def __init__(self, p: float = 0.5):
        self.p = _check_p(p)

    def __call__(self, image: ImageLike, target: Target, generator: RandomSource | None = None):
        generator = _require(generator, "RandomHorizontalFlip")
        tensor, target = as_uint8_tensor(image), _checked(target)
        if _uniform(generator) >= self.p:
            return tensor, target
        width = image_size(tensor)[0]
        x1, y1, x2, y2 = target["boxes"].unbind(-1)
        target["boxes"] = torch.stack([width - x2, y1, width - x1, y2], dim=-1)
        return tensor.flip(-1), _drop_collapsed(target, torch.stack([x1, y1, x2, y2], dim=-1))


class Resize:
    """Resize so the shorter side is ``size`` and the longer ``<= max_size`` (see
    :func:`resized_shape`); boxes and ``area`` are scaled with the image."""

    def __init__(self, size: int, max_size: int | None = None):
        if int(size) != size or size < 1 or (max_size is not None and max_size < 1):
            raise ValueError(
                f"size must be a positive int and max_size positive or None, got "
                f"{size!r}, {max_size!r}"
            )
        self.size, self.max_size = int(size), max_size

    def __call__(self, image: ImageLike, target: Target, generator: RandomSource | None = None):
        return _resize(image, target, self.size, self.max_size)


class RandomResize:
    """Resize the shorter side to a size drawn uniformly from ``sizes`` (longer side
    ``<= max_size``, aspect kept); boxes and ``area`` are scaled with the image."""

    def __init__(self, sizes: Sequence[int], max_size: int | None = None):
        sizes = tuple(sizes)
        if not sizes or any(int(s) != s or s < 1 for s in sizes):
            raise ValueError(f"sizes must be a non-empty sequence of positive ints, got {sizes}")
        if max_size is not None and max_size < 1:
            raise ValueError(f"max_size must be positive or None, got {max_size}")
        self.sizes, self.max_size = tuple(int(s) for s in sizes), max_size

    def __call__(self, image: ImageLike, target: Target, generator: RandomSource | None = None):
        generator = _require(generator, "RandomResize")
        size = self.sizes[_randint(generator, 0, len(self.sizes) - 1)]
        return _resize(image, target, size, self.max_size)


class RandomSizeCrop:
    """Crop a random window whose width and height are each drawn uniformly from
    ``[min_size, max_size]`` clipped to the image, at a uniformly random position.

    Boxes are shifted and clipped to the window; boxes left with zero width or height are removed
    with their ``labels``/``iscrowd``/``area``. ``area`` of a clipped box is scaled by the fraction
    of its box area that survives (DETR replaces it by the box area instead).
    """

    def __init__(self, min_size: int, max_size: int):
        if not (isinstance(min_size, int) and isinstance(max_size, int)):
            raise TypeError(f"crop sizes must be ints, got {min_size!r}, {max_size!r}")
        if not 1 <= min_size <= max_size:
            raise ValueError(f"need 1 <= min_size <= max_size, got {min_size}, {max_size}")
        self.min_size, self.max_size = min_size, max_size

    def __call__(self, image: ImageLike, target: Target, generator: RandomSource | None = None):
        generator = _require(generator, "RandomSizeCrop")
        tensor, target = as_uint8_tensor(image), _checked(target)
        width, height = image_size(tensor)
        crop_w = _randint(generator, min(self.min_size, width), min(self.max_size, width))
        crop_h = _randint(generator, min(self.min_size, height), min(self.max_size, height))
        top = _randint(generator, 0, height - crop_h)
        left = _randint(generator, 0, width - crop_w)
        return crop(tensor, target, top, left, crop_h, crop_w)


def crop(image: ImageLike, target: Target, top: int, left: int, height: int, width: int):
    """Crop the window ``[left, left+width) x [top, top+height)``; see :class:`RandomSizeCrop`."""
    tensor, target = as_uint8_tensor(image), _checked(target)
    boxes = target["boxes"]
    shifted = boxes - torch.tensor([left, top, left, top], dtype=torch.float32)
    limits = torch.tensor([width, height, width, height], dtype=torch.float32)
    clipped = torch.minimum(shifted.clamp(min=0), limits)
    sides = clipped[:, 2:] - clipped[:, :2]
    keep = (sides > 0).all(dim=1)
    target["boxes"] = clipped
    if "area" in target:
        before = (boxes[:, 2:] - boxes[:, :2]).prod(dim=1)
        after = sides.clamp(min=0).prod(dim=1)
        ratio = torch.where(before > 0, after / before.clamp(min=1e-12), torch.ones_like(before))
        target["area"] = target["area"] * ratio.to(target["area"].dtype)
    return tensor[:, top : top + height, left : left + width], _select(target, keep)


class ClipBoxes:
    """Clip boxes to the image and drop those with width or height ``<= min_side`` pixels
    (annotations may reach past the border; degenerate boxes break the GIoU loss)."""

    def __init__(self, min_side: float = 0.0):
        self.min_side = float(min_side)

    def __call__(self, image: ImageLike, target: Target, generator: RandomSource | None = None):
        target = _checked(target)
        width, height = image_size(image)
        boxes = target["boxes"].clone()
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        target["boxes"] = boxes
        sides = boxes[:, 2:] - boxes[:, :2]
        # A side so thin that it is 0 relative to the image would reach the loss as w or h = 0.
        relative = sides / torch.tensor([width, height], dtype=sides.dtype)
        keep = ((sides > self.min_side) & (relative > 0)).all(dim=1)
        return image, _select(target, keep)


class ToTensorNormalize:
    """Image -> float32 ``(3, H, W)`` normalised with ``mean``/``std`` (of 0..1 values); boxes ->
    normalised ``(cx, cy, w, h)`` of this image; adds ``size`` = int64 ``(h, w)``."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std need 3 entries, std > 0; got {mean}, {std}")
        std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1) / std_t
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, image: ImageLike, target: Target, generator: RandomSource | None = None):
        tensor, target = as_uint8_tensor(image), _checked(target)
        width, height = image_size(tensor)
        out = tensor.to(torch.float32, memory_format=torch.contiguous_format)
        out.mul_(self._scale).sub_(self._shift)
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        pixel = target["boxes"]
        target["boxes"] = pixel / scale
        # A box thinner than float32 resolution at this scale would reach the loss with w or h 0.
        target = _drop_collapsed(target, pixel)
        target["boxes"] = box_convert(target["boxes"], "xyxy", "cxcywh")
        target["size"] = torch.tensor([height, width], dtype=torch.int64)
        return out, target


# ----------------------------------------------------------------------------- pipelines
def train_transforms(
    scales: Sequence[int] = DEFAULT_SCALES,
    max_size: int = 1333,
    crop_sizes: Sequence[int] = (400, 500, 600),
    crop_range: tuple[int, int] = (384, 600),
) -> Compose:
    """DETR's training augmentation: clip boxes, flip (p=0.5), then with p=0.5 either a
    multi-scale resize or resize to ``crop_sizes`` -> random crop in ``crop_range`` ->
    multi-scale resize; then :class:`ToTensorNormalize`. Call with a generator."""
    if len(crop_range) != 2:
        raise ValueError(f"crop_range must be (min, max), got {crop_range}")
    multi_scale = RandomResize(scales, max_size)
    crop_then_resize = Compose(
        [RandomResize(crop_sizes), RandomSizeCrop(*crop_range), RandomResize(scales, max_size)]
    )
    return Compose(
        [
            ClipBoxes(),
            RandomHorizontalFlip(0.5),
            RandomSelect(multi_scale, crop_then_resize, 0.5),
            ToTensorNormalize(),
        ]
    )


def eval_transforms(size: int = 800, max_size: int = 1333) -> Compose:
    """Evaluation: clip boxes, shorter side ``size`` (longer ``<= max_size``), normalise."""
    return Compose([ClipBoxes(), Resize(size, max_size), ToTensorNormalize()])
