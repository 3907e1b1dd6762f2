"""Shard rows -> padded, augmented batches: decoding, sampling across ranks, collation."""

from __future__ import annotations

import pytest
import torch
from support.coco_subset import write_coco_subset

from samdetr.data.coco_rows import local_reader
from samdetr.data.coco_source import load_annotations
from samdetr.data.loader import RowDecoder, build_loader, collate, set_epoch
from samdetr.data.samplers import EpochSampler
from samdetr.data.shard_writer import ShardSetOptions, write_shard_set
from samdetr.data.shards import ShardDataset
from samdetr.data.storage import resolve_fs
from samdetr.data.transforms import eval_transforms, train_transforms


@pytest.fixture(scope="module")
def shard_dir(coco128_dir, tmp_path_factory):
    """The first 24 coco128 images written as 3 shards without Ray (plain loop)."""
    root = tmp_path_factory.mktemp("loader")
    images = write_coco_subset(coco128_dir, root / "ann.json", 24)
    source = load_annotations(root / "ann.json")
    sizes = {
        i["file_name"]: (coco128_dir / "images" / i["file_name"]).stat().st_size for i in images
    }
    fs, out = resolve_fs(root / "shards", None)
    manifest = write_shard_set(
        source,
        local_reader(coco128_dir / "images"),
        sizes.__getitem__,
        out,
        fs,
        ShardSetOptions(target_bytes=sum(sizes.values()) // 3),
    )
    assert len(manifest["shards"]) >= 3
    return root / "shards"


def small_train():
    return train_transforms(
        scales=(128, 160, 192), max_size=320, crop_sizes=(150, 200), crop_range=(100, 180)
    )


def test_batches_are_padded_with_masks_and_normalised_targets(shard_dir):
    decoder = RowDecoder(small_train(), seed=3)
    dataset = ShardDataset(shard_dir, transform=decoder)
    loader = build_loader(dataset, decoder, batch_size=4, sampler=EpochSampler(len(dataset)))
    seen = 0
    for images, mask, targets in loader:
        assert images.shape[0] == mask.shape[0] == len(targets) <= 4
        for i, target in enumerate(targets):
            h, w = target["size"].tolist()
            assert not mask[i, :h, :w].any() and mask[i].sum() == mask[i].numel() - h * w
            assert min(h, w) in (128, 160, 192) or max(h, w) == 320
            boxes = target["boxes"]
            assert boxes.shape[1] == 4 and (boxes >= 0).all() and (boxes <= 1).all()
            assert len(target["labels"]) == len(boxes)
        seen += len(targets)
    assert seen == len(dataset) == 24


def test_two_ranks_see_every_image_once_per_epoch(shard_dir):
    decoder = RowDecoder(eval_transforms(size=96, max_size=160))
    dataset = ShardDataset(shard_dir, transform=decoder)
    orders = []
    for epoch in range(2):
        ids = []
        for rank in range(2):
            sampler = EpochSampler(len(dataset), rank=rank, world_size=2, seed=7)
            loader = build_loader(dataset, decoder, batch_size=5, sampler=sampler)
            set_epoch(loader, epoch)
            ids += [t["image_id"].item() for _, _, ts in loader for t in ts]
        assert sorted(ids) == sorted(set(ids)) and len(ids) == len(dataset)
        orders.append(ids)
    assert orders[0] != orders[1]  # reshuffled per epoch


def test_augmentation_is_deterministic_per_seed_and_epoch(shard_dir):
    dataset = ShardDataset(shard_dir)
    rows = [dataset[i] for i in range(6)]
    first, again = RowDecoder(small_train(), seed=1), RowDecoder(small_train(), seed=1)
    for row in rows:
        a, b = first(row), again(row)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
    again.set_epoch(1)
    changed = [
        not torch.equal(first(row)[0].flatten()[:1000], again(row)[0].flatten()[:1000])
        for row in rows
    ]
    assert any(changed)  # a new epoch draws new augmentations


def test_uneven_split_and_errors():
    sizes = [len(EpochSampler(10, rank=r, world_size=3)) for r in range(3)]
    assert sizes == [4, 3, 3]
    assert [len(EpochSampler(10, rank=r, world_size=3, even=True)) for r in range(3)] == [3, 3, 3]
    with pytest.raises(ValueError):
        EpochSampler(10, rank=3, world_size=3)
    with pytest.raises(ValueError):
        collate([])
