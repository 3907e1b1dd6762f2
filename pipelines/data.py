"""Shards as a Ray Dataset: decoding and augmentation in Ray Data, padded batches in the worker.

    dataset = training_dataset(shard_dir, train=True, transform_kwargs={...})
    trainer = TorchTrainer(loop, datasets={"train": dataset}, ...)
    # in the loop, every epoch:
    for images, mask, targets in ray.train.get_dataset_shard("train").iter_torch_batches(
            batch_size=4, collate_fn=PadCollate(), local_shuffle_buffer_size=64,
            local_shuffle_seed=seed + epoch):

Ray Train splits the dataset over the workers (``streaming_split(equal=True)``): together they
see every image once per epoch, except that up to ``world_size - 1`` images are left out when
the image count does not divide evenly (DDP needs equal batch counts on every rank).
Decoded images travel as uint8 (4x smaller than float32); :class:`PadCollate` normalises.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import numpy as np
import ray
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from samdetr.batching import pad_images
from samdetr.loader import RowDecoder
from samdetr.shards import read_manifest, resolve_fs
from samdetr.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Compose,
    ToTensorNormalize,
    as_uint8_tensor,
    eval_transforms,
    train_transforms,
)


def shard_dataset(shard_dir: str) -> ray.data.Dataset:
    """The raw rows of a complete shard set (refuses a folder without a manifest)."""
    manifest = read_manifest(shard_dir)
    fs, root = resolve_fs(shard_dir, None)
    paths = [f"{root.rstrip('/')}/{shard['file']}" for shard in manifest["shards"]]
    if not paths:
        raise ValueError(f"{shard_dir}: the shard set holds no images")
    return ray.data.read_parquet(paths, filesystem=fs)


def _without_normalise(transform: Compose) -> Compose:
    # Keep the geometric part; PadCollate normalises so rows cross Ray as uint8.
    steps = [t for t in transform.transforms if not isinstance(t, ToTensorNormalize)]
    return Compose(steps)


@functools.lru_cache(maxsize=8)
def _geometric_transform(train: bool, transform_json: str) -> Compose:
    # Built once per worker process and setting, not once per row.
    kwargs = json.loads(transform_json)
    base = train_transforms(**kwargs) if train else eval_transforms(**kwargs)
    return _without_normalise(base)


def _decode_row(
    row: dict[str, Any], train: bool, transform_kwargs: dict[str, Any], seed: int
) -> dict[str, Any]:
    transform = _geometric_transform(train, json.dumps(transform_kwargs, sort_keys=True))
    # Ray Data re-runs this map every epoch; a fresh seed per run gives new augmentations.
    run_seed = seed if not train else int.from_bytes(os.urandom(4), "little")
    image, target = RowDecoder(transform, seed=run_seed)(row)
    return {
        "image": as_uint8_tensor(image).numpy(),  # uint8 (3, H, W)
        "boxes": target["boxes"].numpy().astype(np.float32).reshape(-1, 4),  # xyxy pixels
        "labels": target["labels"].numpy(),
        "image_id": int(target["image_id"]),
        "orig_size": target["orig_size"].numpy(),
    }


def training_dataset(
    shard_dir: str, train: bool, transform_kwargs: dict[str, Any] | None = None, seed: int = 42
) -> ray.data.Dataset:
    """Rows decoded and augmented by Ray Data tasks (not in the training loop)."""
    return shard_dataset(shard_dir).map(
        _decode_row,
        fn_kwargs=dict(train=train, transform_kwargs=dict(transform_kwargs or {}), seed=seed),
    )


class PadCollate(NumpyBatchCollateFn):
    """Numpy batch -> ``(images (B, 3, H, W) normalised, mask (B, H, W), targets)``.

    Targets hold ``boxes`` (N, 4) normalised cxcywh of each image, ``labels``, ``image_id``,
    ``orig_size`` and ``size`` (h, w), as :class:`samdetr.loader.RowDecoder` gives them.
    """

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.normalise = ToTensorNormalize(mean, std)

    def __call__(self, batch: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, list]:
        images, targets = [], []
        for i in range(len(batch["image_id"])):
            target = {
                "boxes": torch.from_numpy(np.asarray(batch["boxes"][i], np.float32).reshape(-1, 4)),
                "labels": torch.from_numpy(np.asarray(batch["labels"][i], np.int64)),
                "image_id": torch.tensor(int(batch["image_id"][i])),
                "orig_size": torch.from_numpy(np.asarray(batch["orig_size"][i], np.int64)),
            }
            image, target = self.normalise(torch.from_numpy(np.asarray(batch["image"][i])), target)
            images.append(image)
            targets.append(target)
        padded, mask = pad_images(images)
        return padded, mask, targets
