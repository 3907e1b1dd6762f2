"""BlockShuffleSampler: every index once per epoch over ranks, and one read per row group."""

from __future__ import annotations

from collections import OrderedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.coco_subset import write_coco_subset

from samdetr.data.coco_rows import local_reader
from samdetr.data.coco_source import load_annotations
from samdetr.data.loader import RowDecoder, build_loader, set_epoch
from samdetr.data.samplers import BlockShuffleSampler, EpochSampler
from samdetr.data.shard_writer import ShardSetOptions, write_shard_set
from samdetr.data.shards import ShardDataset
from samdetr.data.storage import resolve_fs
from samdetr.data.transforms import eval_transforms


def spans_of(lengths: list[int]) -> list[tuple[int, int]]:
    """Block lengths -> consecutive ``(start, stop)`` spans from 0."""
    spans, start = [], 0
    for n in lengths:
        spans.append((start, start + n))
        start += n
    return spans


def lru_reads(indices: list[int], spans: list[tuple[int, int]], capacity: int) -> list[int]:
    """Blocks read (in order) by an LRU of ``capacity`` blocks, as ShardDataset's cache does."""
    owner = {i: b for b, (start, stop) in enumerate(spans) for i in range(start, stop)}
    cache: OrderedDict[int, None] = OrderedDict()
    reads = []
    for i in indices:
        block = owner[i]
        if block in cache:
            cache.move_to_end(block)
            continue
        reads.append(block)
        cache[block] = None
        if len(cache) > capacity:
            cache.popitem(last=False)
    return reads


layouts = st.lists(st.integers(0, 12), min_size=0, max_size=25)


@settings(max_examples=150, deadline=None)
@given(
    lengths=layouts,
    world=st.integers(1, 4),
    even=st.booleans(),
    in_memory=st.integers(1, 5),
    seed=st.integers(0, 2**31),
    epoch=st.integers(0, 50),
)
def test_ranks_cover_every_index_once(lengths, world, even, in_memory, seed, epoch):
    spans = spans_of(lengths)
    size = sum(lengths)
    parts = []
    for rank in range(world):
        sampler = BlockShuffleSampler(spans, rank, world, seed, in_memory, even=even)
        sampler.set_epoch(epoch)
        part = list(sampler)
        assert len(part) == len(sampler)
        parts.append(part)
    seen = [i for part in parts for i in part]
    assert len(seen) == len(set(seen)) and set(seen) <= set(range(size))
    counts = [len(part) for part in parts]
    if even:
        assert counts == [size // world] * world  # DDP: every rank the same count
        assert size - len(seen) == size % world < world
    else:
        assert len(seen) == size and max(counts) - min(counts) <= 1
        assert counts == [len(EpochSampler(size, r, world)) for r in range(world)]


@settings(max_examples=100, deadline=None)
@given(lengths=layouts, in_memory=st.integers(1, 5), seed=st.integers(0, 2**31))
def test_one_read_per_block_when_the_window_fits_the_cache(lengths, in_memory, seed):
    spans = spans_of(lengths)
    sampler = BlockShuffleSampler(spans, seed=seed, blocks_in_memory=in_memory)
    order = sampler.global_order().tolist()
    assert sorted(order) == list(range(sum(lengths)))
    reads = lru_reads(order, spans, capacity=in_memory)
    assert sorted(reads) == [b for b, n in enumerate(lengths) if n]  # each block read once


@settings(max_examples=100, deadline=None)
@given(
    lengths=layouts.filter(lambda ls: sum(ls) >= 8),
    world=st.integers(1, 4),
    in_memory=st.integers(1, 5),
    seed=st.integers(0, 2**31),
)
def test_orders_are_deterministic_and_change_per_epoch(lengths, world, in_memory, seed):
    spans = spans_of(lengths)

    def order(epoch: int, rank: int = 0) -> list[int]:
        sampler = BlockShuffleSampler(spans, rank, world, seed, in_memory)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert order(3, world - 1) == order(3, world - 1)  # same seed + epoch: same order
    full = BlockShuffleSampler(spans, seed=seed, blocks_in_memory=in_memory)
    epochs = set()
    for epoch in range(6):  # >= 8 rows: >= 384 possible orders, so 6 epochs never all agree
        full.set_epoch(epoch)
        epochs.add(tuple(full.global_order().tolist()))
    assert len(epochs) > 1


@settings(max_examples=100, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 12), min_size=1, max_size=25),
    world=st.integers(1, 4),
    even=st.booleans(),
    in_memory=st.integers(1, 4),
    extra_cache=st.integers(0, 2),
    seed=st.integers(0, 2**31),
)
def test_each_rank_reads_each_block_at_most_once(
    lengths, world, even, in_memory, extra_cache, seed
):
    spans = spans_of(lengths)
    total = 0
    for rank in range(world):
        part = list(BlockShuffleSampler(spans, rank, world, seed, in_memory, even=even))
        reads = lru_reads(part, spans, capacity=in_memory + extra_cache)
        assert len(reads) == len(set(reads))
        total += len(reads)
    # Ranks share at most the windows at their boundaries.
    assert total <= sum(1 for n in lengths if n) + (world - 1) * in_memory


def test_bad_setups_raise_helpful_errors():
    with pytest.raises(ValueError, match="tile range"):
        BlockShuffleSampler([(0, 3), (4, 6)])
    with pytest.raises(ValueError, match="tile range"):
        BlockShuffleSampler([(1, 3)])
    with pytest.raises(ValueError, match="tile range"):
        BlockShuffleSampler([(0, 3), (3, 2)])
    with pytest.raises(TypeError, match="pair"):
        BlockShuffleSampler([(0, 1, 2)])
    with pytest.raises(TypeError, match="ints"):
        BlockShuffleSampler([(0, 1.5)])
    with pytest.raises(TypeError, match="sequence"):
        BlockShuffleSampler(5)
    with pytest.raises(ValueError, match="rank"):
        BlockShuffleSampler([(0, 4)], rank=2, world_size=2)
    with pytest.raises(ValueError, match="blocks_in_memory"):
        BlockShuffleSampler([(0, 4)], blocks_in_memory=0)
    with pytest.raises(TypeError, match="world_size"):
        BlockShuffleSampler([(0, 4)], world_size=2.0)
    with pytest.raises(TypeError, match="row_group_spans"):
        BlockShuffleSampler.from_dataset(list(range(4)))
    empty = BlockShuffleSampler([], world_size=3, even=True)
    assert len(empty) == 0 and list(empty) == []
    assert list(BlockShuffleSampler([(0, 0), (0, 0)])) == []


@pytest.fixture(scope="module")
def small_groups(coco128_dir, tmp_path_factory):
    """The first 64 coco128 images as about 12 shards, each one row group of a few images."""
    root = tmp_path_factory.mktemp("blocks")
    images = write_coco_subset(coco128_dir, root / "ann.json", 64)
    sizes = {
        i["file_name"]: (coco128_dir / "images" / i["file_name"]).stat().st_size for i in images
    }
    fs, out = resolve_fs(root / "shards", None)
    write_shard_set(
        load_annotations(root / "ann.json"),
        local_reader(coco128_dir / "images"),
        sizes.__getitem__,
        out,
        fs,
        ShardSetOptions(target_bytes=sum(sizes.values()) // 12),
    )
    return root / "shards"


@pytest.fixture
def group_reads(monkeypatch):
    """Row-group reads of every ShardDataset: ``(id(dataset), group)`` per cache miss."""
    reads: list[tuple[int, int]] = []
    original = ShardDataset._row_group

    def counting(self, k):
        if k not in self._cache:
            reads.append((id(self), k))
        return original(self, k)

    monkeypatch.setattr(ShardDataset, "_row_group", counting)
    return reads


def test_row_group_spans(small_groups):
    dataset = ShardDataset(small_groups)
    spans = dataset.row_group_spans
    assert len(spans) >= 8 and spans[0][0] == 0 and spans[-1][1] == len(dataset) == 64
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    for k, (start, stop) in enumerate(spans):
        assert dataset._groups[k][0] == start and stop > start


def test_block_shuffle_reads_each_row_group_once(small_groups, group_reads):
    dataset = ShardDataset(small_groups, cache_row_groups=2)
    groups = len(dataset.row_group_spans)
    sampler = BlockShuffleSampler.from_dataset(dataset, seed=5, blocks_in_memory=2)
    for epoch in range(3):
        group_reads.clear()
        sampler.set_epoch(epoch)
        ids = [dataset[i]["image_id"] for i in sampler]
        assert len(set(ids)) == len(dataset)
        assert sorted(k for _, k in group_reads) == list(range(groups))  # once each

    group_reads.clear()
    for i in EpochSampler(len(dataset), seed=5):  # a full permutation: about one read per row
        dataset[i]
    assert len(group_reads) > 3 * groups

    with pytest.raises(ValueError, match="cache_row_groups"):
        BlockShuffleSampler.from_dataset(dataset, blocks_in_memory=3)


def test_ranks_split_reads_and_loader_works(small_groups, group_reads):
    decoder = RowDecoder(eval_transforms(size=64, max_size=96))
    groups = len(ShardDataset(small_groups).row_group_spans)
    for epoch in range(2):
        group_reads.clear()
        ids, counts, datasets = [], [], []
        for rank in range(3):
            dataset = ShardDataset(small_groups, transform=decoder, cache_row_groups=2)
            datasets.append(dataset)  # alive, so id(dataset) stays unique (a rank's reads)
            sampler = BlockShuffleSampler.from_dataset(
                dataset, rank=rank, world_size=3, seed=1, blocks_in_memory=2, even=True
            )
            loader = build_loader(dataset, decoder, batch_size=4, sampler=sampler)
            set_epoch(loader, epoch)
            got = [t["image_id"].item() for _, _, ts in loader for t in ts]
            ids += got
            counts.append(len(got))
            mine = [k for d, k in group_reads if d == id(dataset)]
            assert len(mine) == len(set(mine))  # a rank reads a group at most once
        assert counts == [21, 21, 21] and len(set(ids)) == 63
        assert len(group_reads) <= groups + 2 * 2  # only boundary windows are read twice
        assert decoder.epoch == epoch


def test_build_loader_checks_the_sampler(small_groups):
    decoder = RowDecoder(eval_transforms(size=64, max_size=96))
    dataset = ShardDataset(small_groups, transform=decoder)
    with pytest.raises(TypeError, match="set_epoch"):
        build_loader(dataset, decoder, batch_size=2, sampler=range(len(dataset)))
    with pytest.raises(ValueError, match="sampler covers 10"):
        build_loader(dataset, decoder, batch_size=2, sampler=EpochSampler(10))
