"""Shards as a Ray Dataset: decoding and augmentation in Ray Data, padded batches in the worker.

    clock = EpochClock.create("run-a")          # on the driver
    dataset = training_dataset(shard_dir, train=True, transform_kwargs={...},
                               seed=seed, epoch_clock=clock.name)
    trainer = TorchTrainer(loop, datasets={"train": dataset},
                           dataset_config=EveryImageDataConfig(), ...)
    # in the loop, every epoch (rank 0 sets the clock before the epoch's first batch):
    EpochClock.set_epoch(clock_name, epoch)
    for images, mask, targets in ray.train.get_dataset_shard("train").iter_torch_batches(
            batch_size=4, collate_fn=PadCollate(), local_shuffle_buffer_size=64,
            local_shuffle_seed=seed + epoch):

:class:`EveryImageDataConfig` splits the dataset over the workers with
``streaming_split(equal=False)``: together they see every image exactly once per epoch. Blocks
go whole to the worker with the fewest rows so far, so shares end at most ``rows_per_block``
images apart, and :func:`samdetr.engine.train_one_epoch` absorbs the uneven batch counts.

Augmentation is drawn from :func:`samdetr.loader.sample_seed` of (seed, epoch, image id), the
same draws as the plain PyTorch loader: the :class:`EpochClock` tells Ray Data's tasks, which
re-run every epoch, which epoch they work for.
Decoded images travel as uint8 (4x smaller than float32); :class:`PadCollate` normalises.
"""

from __future__ import annotations

import functools
import json
import os
import uuid
from typing import Any

import numpy as np
import ray
import torch
from ray.data.collate_fn import NumpyBatchCollateFn
from ray.train import DataConfig

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


@ray.remote(num_cpus=0)
class _Clock:
    def __init__(self) -> None:
        self.epoch = 0

    def set(self, epoch: int) -> None:
        self.epoch = epoch

    def get(self) -> int:
        return self.epoch


class EpochClock:
    """A named Ray actor that holds the current training epoch for the augmentation tasks.

    Ray Data re-executes the dataset's map for every epoch without telling the map which epoch
    it is. Rank 0 sets the clock before asking for an epoch's first batch; Ray Train's split
    coordinator starts an epoch only when every rank has asked, so every task of the epoch reads
    the new value. Tasks look it up once per task, not per image.
    """

    def __init__(self, name: str, handle: Any):
        self.name, self.handle = name, handle

    @classmethod
    def create(cls, run_name: str) -> EpochClock:
        """Start a clock for one run (the name is unique, so runs never share one)."""
        name = f"samdetr-epoch-clock-{run_name}-{uuid.uuid4().hex[:8]}"
        handle = _Clock.options(name=name).remote()
        ray.get(handle.get.remote())  # started and registered before anyone looks it up
        return cls(name, handle)

    @staticmethod
    def set_epoch(name: str, epoch: int) -> None:
        """Called by the training loop (rank 0) before an epoch's first batch."""
        ray.get(ray.get_actor(name).set.remote(int(epoch)))

    def close(self) -> None:
        ray.kill(self.handle)


@functools.lru_cache(maxsize=256)
def _epoch_of_task(clock_name: str, task_id: str) -> int:
    # Keyed by task: one epoch's tasks never run another epoch's rows.
    return ray.get(ray.get_actor(clock_name).get.remote())


def _decode_row(
    row: dict[str, Any],
    train: bool,
    transform_kwargs: dict[str, Any],
    seed: int,
    epoch_clock: str | None,
) -> dict[str, Any]:
    transform = _geometric_transform(train, json.dumps(transform_kwargs, sort_keys=True))
    if train and epoch_clock is None:  # new augmentations every execution, not reproducible
        seed = int.from_bytes(os.urandom(4), "little")
    decoder = RowDecoder(transform, seed=seed)
    if train and epoch_clock is not None:
        task_id = ray.get_runtime_context().get_task_id() or ""
        decoder.set_epoch(_epoch_of_task(epoch_clock, task_id))
    image, target = decoder(row)
    return {
        "image": as_uint8_tensor(image).numpy(),  # uint8 (3, H, W)
        "boxes": target["boxes"].numpy().astype(np.float32).reshape(-1, 4),  # xyxy pixels
        "labels": target["labels"].numpy(),
        "image_id": int(target["image_id"]),
        "orig_size": target["orig_size"].numpy(),
    }


def training_dataset(
    shard_dir: str,
    train: bool,
    transform_kwargs: dict[str, Any] | None = None,
    seed: int = 42,
    epoch_clock: str | None = None,
    rows_per_block: int | None = 16,
) -> ray.data.Dataset:
    """Rows decoded and augmented by Ray Data tasks (not in the training loop).

    With ``epoch_clock`` (the name of an :class:`EpochClock`), image ``i`` of epoch ``e`` gets
    the augmentation of :func:`samdetr.loader.sample_seed` ``(seed, e, i)`` whichever worker
    decodes it; without one, training augmentations are drawn from a fresh OS seed.
    ``rows_per_block`` cuts the shards' row groups into blocks of at most that many rows before
    decoding: more, smaller decode tasks, and since the split hands out whole blocks, workers'
    shares of an epoch end at most that many images apart (``None``: the shards' own blocks).
    """
    if rows_per_block is not None and (not isinstance(rows_per_block, int) or rows_per_block < 1):
        raise ValueError(f"rows_per_block must be a positive int or None, got {rows_per_block!r}")
    rows = shard_dataset(shard_dir)
    if rows_per_block is not None:
        rows = rows.repartition(target_num_rows_per_block=rows_per_block)
    return rows.map(
        _decode_row,
        fn_kwargs=dict(
            train=train,
            transform_kwargs=dict(transform_kwargs or {}),
            seed=seed,
            epoch_clock=epoch_clock,
        ),
    )


class EveryImageDataConfig(DataConfig):
    """Ray Train's ``DataConfig``, except that together the workers see every row each epoch.

    Ray Train's own split (``streaming_split(equal=True)``) leaves out up to ``world_size - 1``
    rows per epoch so that every worker gets as many. This one splits with ``equal=False``;
    the ranks' batch counts then differ slightly, and :func:`samdetr.engine.train_one_epoch`
    keeps DDP in step by having a rank that has run out take zero-weight steps.
    """

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        output: list[dict[str, Any]] = [{} for _ in range(world_size)]
        for name, dataset in datasets.items():
            if dataset.name is None:
                dataset.set_name(name)
            dataset = ray.data.Dataset.copy(dataset)  # leave the caller's options alone
            dataset.context.execution_options = self.default_ingest_options()
            splits = dataset.streaming_split(
                world_size, equal=False, locality_hints=worker_node_ids
            )
            for rank, split in enumerate(splits):
                output[rank][name] = split
        return output


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
