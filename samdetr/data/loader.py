"""From shard rows to padded training batches: decoding, augmentation, sampling, collation.

The samplers that choose each rank's rows are in :mod:`samdetr.data.samplers`.

The same pieces serve a plain PyTorch ``DataLoader`` over :class:`samdetr.data.shards.ShardDataset`
and the Ray Data pipeline (which calls :class:`RowDecoder` inside its map tasks).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torchvision.ops import box_convert

from samdetr.batching import pad_images
from samdetr.data.images import decode_image
from samdetr.data.samplers import BlockShuffleSampler, EpochSampler


def sample_seed(seed: int, epoch: int, image_id: int) -> int:
    """Augmentation seed of one image in one epoch: independent of which worker decodes it."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{image_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class RowDecoder:
    """A shard row -> ``(image (3, H, W) float32, target)`` for the criterion.

    Decodes the original bytes (EXIF orientation as the row says), turns the ``xywh`` pixel boxes
    into ``xyxy``, drops crowd boxes for training (DETR does; COCOeval reads crowds from the
    ground truth itself), and applies ``transform(image, target, generator)`` from
    :mod:`samdetr.data.transforms` with a generator seeded by :func:`sample_seed`.
    The target holds ``boxes`` (N, 4) normalised cxcywh, ``labels`` (N,) category ids,
    ``image_id``, ``orig_size`` (h, w) and ``size`` (h, w) after augmentation.
    """

    def __init__(self, transform: Callable, seed: int = 42, drop_crowd: bool = True):
        self.transform = transform
        self.seed = seed
        self.drop_crowd = drop_crowd
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __call__(self, row: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        image = decode_image(row["image"], bool(row["exif_transpose"]))
        boxes = torch.tensor(row["boxes"], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor(row["category_ids"], dtype=torch.int64)
        crowd = torch.tensor(row["iscrowd"], dtype=torch.int64).reshape(-1)
        if self.drop_crowd:
            keep = crowd == 0
            boxes, labels, crowd = boxes[keep], labels[keep], crowd[keep]
        target = {
            "boxes": box_convert(boxes, "xywh", "xyxy"),
            "labels": labels,
            "iscrowd": crowd,
            "image_id": torch.tensor(int(row["image_id"])),
            "orig_size": torch.tensor([int(row["height"]), int(row["width"])]),
        }
        generator = torch.Generator().manual_seed(
            sample_seed(self.seed, self.epoch, int(row["image_id"]))
        )
        return self.transform(image, target, generator)


def collate(batch: Sequence[tuple[Tensor, dict]]) -> tuple[Tensor, Tensor, list[dict]]:
    """``[(image, target), ...]`` -> ``(images (B, 3, H, W), mask (B, H, W), targets)``."""
    if not batch:
        raise ValueError("cannot collate an empty batch")
    images, mask = pad_images([image for image, _ in batch])
    return images, mask, [target for _, target in batch]


def build_loader(
    dataset: Any,
    decoder: RowDecoder,
    batch_size: int,
    sampler: EpochSampler | BlockShuffleSampler,
    num_workers: int = 0,
) -> DataLoader:
    """A ``DataLoader`` yielding ``collate`` batches; call :func:`set_epoch` every epoch.

    ``sampler``: :class:`EpochSampler` or :class:`BlockShuffleSampler` (the latter reads each
    Parquet row group about once per epoch instead of about once per image).
    """
    if getattr(dataset, "transform", None) is not decoder:
        raise ValueError("build the dataset with transform=decoder so decoding runs in the workers")
    if not callable(getattr(sampler, "set_epoch", None)):
        raise TypeError(
            f"sampler must have set_epoch (EpochSampler or BlockShuffleSampler), "
            f"got {type(sampler).__name__}"
        )
    size = getattr(sampler, "size", None)
    if size is not None and size != len(dataset):
        raise ValueError(f"sampler covers {size} indices but the dataset has {len(dataset)} rows")
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate,
        num_workers=num_workers,
        persistent_workers=False,
    )


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Reshuffle and reseed the augmentation of ``loader`` for ``epoch``."""
    loader.sampler.set_epoch(epoch)
    loader.dataset.transform.set_epoch(epoch)
