"""Shards streamed into two Ray Train workers: every image once per epoch (also when the count
does not divide evenly), padded batches, and augmentations reproducible by seed."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("ray")

import ray  # noqa: E402
import torch  # noqa: E402
from coco_subset import write_coco_subset  # noqa: E402
from ray.train import RunConfig, ScalingConfig  # noqa: E402
from ray.train.torch import TorchTrainer  # noqa: E402

from pipelines.data import (  # noqa: E402
    EpochClock,
    EveryImageDataConfig,
    PadCollate,
    training_dataset,
)
from pipelines.preprocess import PreprocessConfig, run_preprocess  # noqa: E402
from samdetr.loader import RowDecoder  # noqa: E402
from samdetr.shards import ShardDataset  # noqa: E402
from samdetr.transforms import train_transforms  # noqa: E402

SMALL = {"scales": [96, 128], "max_size": 200, "crop_sizes": [100], "crop_range": [64, 96]}


def _loop(config):
    import ray.train

    context = ray.train.get_context()
    shard = ray.train.get_dataset_shard("train")
    seen, drawn = {}, {}
    for epoch in range(2):
        if context.get_world_rank() == 0:
            EpochClock.set_epoch(config["clock"], epoch)
        ids = []
        for images, mask, targets in shard.iter_torch_batches(
            batch_size=3,
            collate_fn=PadCollate(),
            local_shuffle_buffer_size=8,
            local_shuffle_seed=100 + epoch,
        ):
            assert images.dtype.is_floating_point and images.shape[0] == mask.shape[0]
            for i, target in enumerate(targets):
                h, w = target["size"].tolist()
                assert not mask[i, :h, :w].any()
                boxes = target["boxes"]
                assert ((boxes >= 0) & (boxes <= 1)).all()
            ids += [int(t["image_id"]) for t in targets]
            for t in targets:
                drawn[f"{epoch}/{int(t['image_id'])}"] = [t["size"].tolist(), t["boxes"].tolist()]
        seen[epoch] = ids
    path = os.path.join(config["out"], f"rank{context.get_world_rank()}.json")
    with open(path, "w") as f:
        json.dump({"seen": seen, "drawn": drawn}, f)


@pytest.mark.slow
def test_two_workers_see_every_image_once_per_epoch(coco128_dir, tmp_path):
    """15 images over 2 workers and batches of 3: Ray Train's own split would leave one out."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():
        ray.shutdown()
    # Train workers unpickle _loop by module name: let them import this test file.
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": tests_dir}},
    )
    images = write_coco_subset(coco128_dir, tmp_path / "ann.json", 15)
    ids = {i["id"] for i in images}
    shards = tmp_path / "shards"
    run_preprocess(
        PreprocessConfig(
            annotations=str(tmp_path / "ann.json"),
            images=str(coco128_dir / "images"),
            output=str(shards),
            shard_size_mb=0.5,
        )
    )
    out = tmp_path / "seen"
    out.mkdir()
    clock = EpochClock.create("data-test")
    dataset = training_dataset(
        str(shards), train=True, transform_kwargs=SMALL, seed=7, epoch_clock=clock.name,
        rows_per_block=4,
    )
    trainer = TorchTrainer(
        _loop,
        train_loop_config={"out": str(out), "clock": clock.name},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        datasets={"train": dataset},
        dataset_config=EveryImageDataConfig(),
        run_config=RunConfig(name="data-test", storage_path=str(tmp_path / "ray")),
    )
    trainer.fit()
    clock.close()
    ray.shutdown()
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    for epoch in ("0", "1"):
        together = ranks[0]["seen"][epoch] + ranks[1]["seen"][epoch]
        assert sorted(together) == sorted(ids)  # 15 images, 2 workers: nothing left out
        # Whole blocks of <= 4 rows go to the worker with fewer rows so far.
        assert abs(len(ranks[0]["seen"][epoch]) - len(ranks[1]["seen"][epoch])) <= 4

    # Each image got the augmentation the plain loader draws for (seed, epoch, image id).
    drawn = {**ranks[0]["drawn"], **ranks[1]["drawn"]}
    decoder = RowDecoder(train_transforms(**SMALL), seed=7)
    rows = ShardDataset(str(shards))
    sizes_per_epoch = []
    for epoch in (0, 1):
        decoder.set_epoch(epoch)
        sizes = []
        for i in range(len(rows)):
            row = rows[i]
            _, target = decoder(row)
            size, boxes = drawn[f"{epoch}/{row['image_id']}"]
            assert size == target["size"].tolist()
            torch.testing.assert_close(
                torch.tensor(boxes).reshape(-1, 4), target["boxes"], rtol=0, atol=1e-6
            )
            sizes.append(size)
        sizes_per_epoch.append(sizes)
    assert sizes_per_epoch[0] != sizes_per_epoch[1]  # a new draw every epoch
