"""Shards streamed into two Ray Train workers: every image once per epoch, padded batches."""

from __future__ import annotations

import json
import os

import pytest

pytest.importorskip("ray")

import ray  # noqa: E402
from coco_subset import write_coco_subset  # noqa: E402
from ray.train import DataConfig, RunConfig, ScalingConfig  # noqa: E402
from ray.train.torch import TorchTrainer  # noqa: E402

from pipelines.data import PadCollate, training_dataset  # noqa: E402
from pipelines.preprocess import PreprocessConfig, run_preprocess  # noqa: E402

SMALL = {"scales": [96, 128], "max_size": 200, "crop_sizes": [100], "crop_range": [64, 96]}


def _loop(config):
    import ray.train

    context = ray.train.get_context()
    shard = ray.train.get_dataset_shard("train")
    seen = {}
    for epoch in range(2):
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
        seen[epoch] = ids
    path = os.path.join(config["out"], f"rank{context.get_world_rank()}.json")
    with open(path, "w") as f:
        json.dump(seen, f)


@pytest.mark.slow
def test_two_workers_see_every_image_once_per_epoch(coco128_dir, tmp_path):
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
    images = write_coco_subset(coco128_dir, tmp_path / "ann.json", 16)
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
    trainer = TorchTrainer(
        _loop,
        train_loop_config={"out": str(out)},
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
        datasets={"train": training_dataset(str(shards), train=True, transform_kwargs=SMALL)},
        dataset_config=DataConfig(datasets_to_split=["train"]),
        run_config=RunConfig(name="data-test", storage_path=str(tmp_path / "ray")),
    )
    trainer.fit()
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    for epoch in ("0", "1"):
        together = ranks[0][epoch] + ranks[1][epoch]
        assert sorted(together) == sorted(ids)  # 16 images, 2 workers: nothing left out
        assert ranks[0][epoch] and ranks[1][epoch]
    ray.shutdown()
