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

What holds, with :class:`EveryImageDataConfig` and an :class:`EpochClock`:

* Every image once per epoch: the split (``streaming_split(equal=False)``) gives whole blocks
  to the worker with the fewest rows so far, so shares end at most ``rows_per_block`` images
  apart, and :func:`samdetr.engine.loop.train_one_epoch` absorbs the uneven batch counts.
* A new order every epoch: blocks of ``rows_per_block`` images go in a random order seeded by
  (seed, epoch) (Ray's ``randomize_block_order``), before the workers' local shuffle buffers.
  It is an all-to-all step: an epoch's encoded rows are all read before the first is decoded.
* Augmentation of image ``i`` in epoch ``e`` is :func:`samdetr.data.loader.sample_seed`
  ``(seed, e, i)``, the same draws as the plain PyTorch loader, whichever worker decodes it.
* The order and the draws depend on (seed, epoch) alone: Ray plans each epoch when every rank
  has asked for it (after rank 0 set the clock) and the plan reads the clock once, so a run
  resumed in a new worker group or driver sees in epoch ``e`` what an uninterrupted one saw.
  ``preserve_order`` makes each rank's block sequence, and thus its seeded local shuffle,
  the same too (for a given number of workers). Its price: a slow decode task holds back the
  finished blocks behind it, and the split ignores locality (blocks may cross nodes).
* The clock runs on the driver's node and restarts if its process dies; rank 0 sets it again
  every epoch, and an epoch planned while it holds no epoch fails instead of guessing.

Decoded images travel as uint8 (4x smaller than float32); :class:`PadCollate` normalises.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import operator
import os
import time
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import ray
import torch
from ray.data import DataContext, RandomSeedConfig
from ray.data.collate_fn import NumpyBatchCollateFn
from ray.train import DataConfig
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipelines.common.ray_internals import SeedTuple, randomize_blocks
from samdetr.batching import pad_images
from samdetr.data.loader import RowDecoder
from samdetr.data.shards import read_manifest
from samdetr.data.storage import resolve_fs
from samdetr.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Compose,
    ToTensorNormalize,
    as_uint8_tensor,
    eval_transforms,
    train_transforms,
)


def shard_dataset(shard_dir: str) -> ray.data.Dataset:
    """The raw rows of a complete shard set (refuses a folder without a manifest), read by
    Ray Data's file-by-file Parquet reader (see :func:`_listed_parquet_reader`)."""
    manifest = read_manifest(shard_dir)
    fs, root = resolve_fs(shard_dir, None)
    paths = [f"{root.rstrip('/')}/{shard['file']}" for shard in manifest["shards"]]
    if not paths:
        raise ValueError(f"{shard_dir}: the shard set holds no images")
    with _listed_parquet_reader():
        return ray.data.read_parquet(paths, filesystem=fs)


@contextlib.contextmanager
def _listed_parquet_reader() -> Iterator[None]:
    """``read_parquet`` calls inside plan Ray Data's original Parquet reader (one read task per
    file), not its newer default (``DataContext.use_datasource_v2``), which lists the files
    again at every execution, each epoch, reading their footers on a pool of new actors (32 by
    default, each a new process). A shard set's manifest already names its files. On 2 CPUs,
    reading a 12-image shard set took 2.8-4.1 s per execution with the newer reader and
    0.13-0.16 s with this one (after the first execution of each: 7.7 s and 3.4 s)."""
    context = DataContext.get_current()
    default = context.use_datasource_v2
    context.use_datasource_v2 = False  # decided when read_parquet is called, not when run
    try:
        yield
    finally:
        context.use_datasource_v2 = default


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
    """The epoch, or None until set: also after a restart, since a restarted actor starts afresh."""

    def __init__(self) -> None:
        self.epoch: int | None = None

    def set(self, epoch: int) -> None:
        self.epoch = epoch

    def get(self) -> int | None:
        return self.epoch


class EpochClock:
    """A named Ray actor that holds the current training epoch for the data pipeline.

    Ray Data re-executes the dataset for every epoch without telling it which epoch it is. Rank 0
    sets the clock before asking for an epoch's first batch; Ray Train's split coordinator starts
    an epoch only when every rank has asked, and plans it then: the plan reads the clock once
    (:func:`_plan_epoch`) for the block order and every decode task of that epoch.

    The actor runs on the driver's node (which the run cannot outlive anyway) and restarts if
    its process dies. A restarted clock holds no epoch until rank 0 sets the next one, and
    reading an empty clock raises rather than guessing, so no epoch ever gets another's draws.
    """
    READ_TIMEOUT_S = 10.0

    def __init__(self, name: str, handle: Any):
        self.name, self.handle = name, handle

    @classmethod
    def create(cls, run_name: str) -> EpochClock:
        """Start a clock for one run (the name is unique, so runs never share one)."""
        if not isinstance(run_name, str) or not run_name:
            raise ValueError(f"run_name must be a non-empty string, got {run_name!r}")
        name = f"samdetr-epoch-clock-{run_name}-{uuid.uuid4().hex[:12]}"
        handle = _Clock.options(
            name=name,
            scheduling_strategy=NodeAffinitySchedulingStrategy(
                ray.get_runtime_context().get_node_id(), soft=False
            ),
            max_restarts=-1,
            max_task_retries=-1,  # calls made while it restarts wait for it
        ).remote()
        ray.get(handle.get.remote())  # started and registered before anyone looks it up
        return cls(name, handle)

    @staticmethod
    def set_epoch(name: str, epoch: int) -> None:
        """Called by the training loop (rank 0) before an epoch's first batch."""
        try:
            epoch = operator.index(epoch)
        except TypeError:
            raise ValueError(f"epoch must be an int, got {epoch!r}") from None
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        ray.get(ray.get_actor(name).set.remote(epoch))

    @staticmethod
    def current_epoch(name: str, timeout_s: float | None = None) -> int:
        """The epoch last set; waits up to ``timeout_s`` (default ``READ_TIMEOUT_S``) while the
        clock holds none, then raises RuntimeError (a restarted clock holds none until rank 0
        sets the next epoch, so waiting longer would not help)."""
        clock = ray.get_actor(name)
        wait = EpochClock.READ_TIMEOUT_S if timeout_s is None else timeout_s
        deadline = time.monotonic() + wait
        while (epoch := ray.get(clock.get.remote())) is None:
            if time.monotonic() >= deadline:
                raise RuntimeError(
                    f"epoch clock {name} holds no epoch: EpochClock.set_epoch must run before "
                    "the epoch's first batch (a restarted clock forgets its epoch)"
                )
            time.sleep(0.1)
        return epoch

    def close(self) -> None:
        ray.kill(self.handle)  # no_restart: a closed clock stays closed


def _epoch_key(clock_name: str) -> str:
    return f"samdetr.epoch/{clock_name}"


def _plan_epoch(clock_name: str, data_context: DataContext) -> int:
    """Read the clock while Ray plans an execution, and leave the epoch in the execution's
    DataContext, which Ray Data hands to each of its tasks."""
    # Decode tasks then never ask the clock: one read per epoch, and a clock restarting
    # mid-epoch (or a task retried later) cannot change the epoch a task works for.
    epoch = EpochClock.current_epoch(clock_name)
    data_context.set_config(_epoch_key(clock_name), epoch)
    return epoch


def _planned_epoch(clock_name: str) -> int:
    # Inside a Ray Data task, DataContext.get_current() is the context its execution was planned in.
    epoch = DataContext.get_current().get_config(_epoch_key(clock_name))
    if epoch is None:
        raise RuntimeError(
            f"no epoch planned for clock {clock_name}: the dataset must come from "
            "training_dataset(..., epoch_clock=...) so that its plan reads the clock"
        )
    return epoch


def _order_seed(seed: int, epoch: int) -> int:
    digest = hashlib.blake2b(f"block-order/{seed}/{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


@dataclasses.dataclass
class _EpochBlockOrder(RandomSeedConfig):
    """A block order seeded by (``seed``, the clock's epoch when Ray plans the execution).

    Ray's own ``reseed_after_execution`` counts executions of the dataset object, and Train
    builds a new one (count 0) whenever it restarts its worker group; the epoch does not reset.
    """
    clock: str = ""

    def get_seed_tuple(self, *, data_context: DataContext) -> SeedTuple:
        return SeedTuple(seed=_order_seed(self.seed, _plan_epoch(self.clock, data_context)))


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
        decoder.set_epoch(_planned_epoch(epoch_clock))
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

    ``rows_per_block`` cuts the shards' row groups into blocks of at most that many rows before
    decoding: more, smaller decode tasks, and since the split hands out whole blocks, workers'
    shares of an epoch end at most that many images apart (``None``: the shards' own blocks).

    For training the blocks go in a new random order every epoch. With ``epoch_clock`` (the
    name of an :class:`EpochClock`) that order and the augmentation of image ``i`` in epoch
    ``e`` (:func:`samdetr.data.loader.sample_seed` ``(seed, e, i)``) depend on ``seed`` and ``e``
    only; without one, both are drawn afresh each execution. Evaluation keeps the shards' order.
    """
    if rows_per_block is not None and (not isinstance(rows_per_block, int) or rows_per_block < 1):
        raise ValueError(f"rows_per_block must be a positive int or None, got {rows_per_block!r}")
    if not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    rows = shard_dataset(shard_dir)
    if rows_per_block is not None:
        rows = rows.repartition(target_num_rows_per_block=rows_per_block)
    if train:
        # After the repartition, so the order is shuffled in blocks of rows_per_block images.
        if epoch_clock is None:
            order = RandomSeedConfig()  # a new order every execution
        else:
            order = _EpochBlockOrder(seed, clock=epoch_clock)
        # Not Dataset.randomize_block_order: it would copy `order` into a plain RandomSeedConfig
        # (RandomSeedConfig.create_seed_config) and lose _EpochBlockOrder.
        rows = randomize_blocks(rows, order)
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
    the ranks' batch counts then differ slightly, and :func:`samdetr.engine.loop.train_one_epoch`
    keeps DDP in step by having a rank that has run out take zero-weight steps.

    It also sets ``preserve_order``: every operator then passes blocks on in the order it got
    them, not as its tasks finish, and the split deals them out by row count alone (no
    locality), so each rank gets the same blocks in the same order whenever the epoch's
    (seed, epoch) are the same, also after a restart.
    """

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        output: list[dict[str, Any]] = [{} for _ in range(world_size)]
        for name, dataset in datasets.items():
            if dataset.name is None:
                dataset.set_name(name)
            dataset = ray.data.Dataset.copy(dataset, _deep_copy=True)  # leave the caller's alone
            with warnings.catch_warnings():  # Ray 2.60's own default sets a deprecated field
                warnings.filterwarnings("ignore", message=".*exclude_resources")
                options = self.default_ingest_options()
            options.preserve_order = True
            dataset.context.execution_options = options
            splits = dataset.streaming_split(
                world_size, equal=False, locality_hints=worker_node_ids
            )
            for rank, split in enumerate(splits):
                output[rank][name] = split
        return output


class PadCollate(NumpyBatchCollateFn):
    """Numpy batch -> ``(images (B, 3, H, W) normalised, mask (B, H, W), targets)``.

    Targets hold ``boxes`` (N, 4) normalised cxcywh of each image, ``labels``, ``image_id``,
    ``orig_size`` and ``size`` (h, w), as :class:`samdetr.data.loader.RowDecoder` gives them.
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
