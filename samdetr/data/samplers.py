"""Which rows each rank reads in an epoch: seeded, reproducible, and the same on every restart.

:class:`EpochSampler` takes interleaved slices of one full random permutation per epoch;
:class:`BlockShuffleSampler` shuffles row groups, then rows within windows of a few row groups,
so a :class:`samdetr.data.shards.ShardDataset` reads each row group about once per epoch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Sampler


class EpochSampler(Sampler[int]):
    """Shuffled (per epoch, by seed) indices of one rank's part of the data set.

    Ranks take interleaved slices of one common permutation, so together they see every index
    exactly once per epoch. Ranks may then differ by one sample; with ``even=True`` the tail is
    dropped so every rank gets the same count (what DDP needs without ``join``).
    """

    def __init__(
        self,
        size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 42,
        shuffle: bool = True,
        even: bool = False,
    ):
        if size < 0 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad sampler setup: size={size}, rank={rank}, world={world_size}")
        self.size, self.rank, self.world_size = size, rank, world_size
        self.seed, self.shuffle, self.even = seed, shuffle, even
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _indices(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + 1_000_003 * self.epoch)
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        if self.even:
            order = order[: self.size - self.size % self.world_size]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        return len(self._indices())


def _check_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


class BlockShuffleSampler(Sampler[int]):
    """Block-wise shuffled indices of one rank's part of a data set stored in blocks.

    ``spans``: the ``(start, stop)`` index ranges of the blocks (Parquet row groups) in index
    order, covering ``range(size)`` without gaps; empty blocks are allowed. Take them from
    :attr:`samdetr.data.shards.ShardDataset.row_group_spans`, or use :meth:`from_dataset`.
    Every epoch, with a generator seeded by ``seed`` and the epoch:

    1. the blocks are put in a random order;
    2. every ``blocks_in_memory`` consecutive blocks of that order form a window;
    3. the rows of each window are shuffled; the windows, one after another, are the epoch's
       global order of all ``size`` indices (the same on every rank).

    Ranks take CONTIGUOUS parts of the global order: their counts differ by at most one, and
    ``even=True`` drops the last ``size % world_size`` indices so every rank yields the same
    count (what DDP needs without ``join``). Together they see every index once per epoch.

    Design (why not :class:`EpochSampler`'s interleaving): every rank is a process with its own
    row-group cache. Interleaved slices of one window would make EVERY rank read EVERY row group
    (``world_size`` times the I/O). Contiguous parts give each rank whole windows, except at
    most two it shares with its neighbours, so all ranks together read about
    ``num_blocks + (world_size - 1) * blocks_in_memory`` groups per epoch. Dealing whole windows
    to ranks would save those few reads but cannot give equal counts (blocks differ in size).
    With the dataset's ``cache_row_groups >= blocks_in_memory``, a rank reads each row group it
    touches exactly once per epoch (the LRU only evicts groups of earlier windows).

    Trade-offs: mixing is weaker than a full permutation: a batch holds rows of at most
    ``blocks_in_memory`` row groups, i.e. neighbours in shard order (image-id order for COCO,
    unrelated to content); a DDP step still mixes ``world_size`` windows. Raise
    ``blocks_in_memory`` and ``cache_row_groups`` together for better mixing (memory: about
    ``cache_row_groups`` x 16 MiB of rows per process). DataLoader workers are separate
    processes taking batches in turn, so with ``num_workers=k`` a group is read up to ``k``
    times per epoch: still far fewer reads than once per image.
    """

    def __init__(
        self,
        spans: Sequence[tuple[int, int]],
        rank: int = 0,
        world_size: int = 1,
        seed: int = 42,
        blocks_in_memory: int = 4,
        even: bool = False,
    ):
        self.world_size = _check_count("world_size", world_size, 1)
        self.rank = _check_count("rank", rank, 0)
        if rank >= world_size:
            raise ValueError(f"rank must be < world_size, got rank={rank}, world={world_size}")
        self.blocks_in_memory = _check_count("blocks_in_memory", blocks_in_memory, 1)
        _check_count("seed", seed, -(2**63))
        self.seed, self.even = seed, bool(even)
        self.spans = self._checked_spans(spans)
        self.size = self.spans[-1][1] if self.spans else 0
        blocks = [(a, b - a) for a, b in self.spans if b > a]  # empty blocks hold no row
        self._starts = torch.tensor([a for a, _ in blocks], dtype=torch.int64)
        self._lengths = torch.tensor([n for _, n in blocks], dtype=torch.int64)
        self.epoch = 0

    @staticmethod
    def _checked_spans(spans: Any) -> tuple[tuple[int, int], ...]:
        if isinstance(spans, (str, bytes)) or not isinstance(spans, Sequence):
            raise TypeError(
                f"spans must be a sequence of (start, stop), got {type(spans).__name__}"
            )
        out, expected = [], 0
        for i, span in enumerate(spans):
            try:
                start, stop = span
            except (TypeError, ValueError):
                raise TypeError(f"spans[{i}] must be a (start, stop) pair, got {span!r}") from None
            if any(isinstance(v, bool) or not isinstance(v, int) for v in (start, stop)):
                raise TypeError(f"spans[{i}] must hold ints, got {span!r}")
            if start != expected or stop < start:
                raise ValueError(
                    f"spans must tile range(size) in order from 0: spans[{i}] = {span!r} "
                    f"(expected start {expected} and stop >= start)"
                )
            out.append((start, stop))
            expected = stop
        return tuple(out)

    @classmethod
    def from_dataset(cls, dataset: Any, **kwargs: Any) -> BlockShuffleSampler:
        """The sampler over ``dataset.row_group_spans`` (a :class:`ShardDataset`).

        ``kwargs`` go to the constructor. ValueError if ``blocks_in_memory`` exceeds the
        dataset's ``cache_row_groups``: the window would not fit the cache and every group
        would be read again and again.
        """
        spans = getattr(dataset, "row_group_spans", None)
        if spans is None:
            raise TypeError(f"{type(dataset).__name__} has no row_group_spans (use ShardDataset)")
        sampler = cls(spans, **kwargs)
        cache = getattr(dataset, "cache_row_groups", None)
        if cache is not None and sampler.blocks_in_memory > cache:
            raise ValueError(
                f"blocks_in_memory={sampler.blocks_in_memory} exceeds the dataset's "
                f"cache_row_groups={cache}: raise cache_row_groups or lower blocks_in_memory"
            )
        return sampler

    @property
    def num_blocks(self) -> int:
        """Number of non-empty blocks."""
        return len(self._starts)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def global_order(self) -> Tensor:
        """(size,) int64: this epoch's order of all indices, before the split over ranks."""
        # A large odd multiplier keeps (seed, epoch) pairs apart, as in EpochSampler.
        generator = torch.Generator().manual_seed(self.seed + 1_000_003 * self.epoch)
        n, lengths = self.size, self._lengths
        if n == 0:
            return torch.empty(0, dtype=torch.int64)
        order = torch.randperm(self.num_blocks, generator=generator)
        lengths = lengths[order]
        # Position j of the blocks laid end to end: its block's start + its offset in the block.
        first = torch.cumsum(lengths, 0) - lengths
        rows = torch.arange(n) + torch.repeat_interleave(self._starts[order] - first, lengths)
        block_window = torch.arange(self.num_blocks) // self.blocks_in_memory
        window = torch.repeat_interleave(block_window, lengths)
        # Sort by window, then by a random permutation's value: its restriction to one window
        # is a uniformly random order of that window (keys are unique, so any sort works).
        keys = window * n + torch.randperm(n, generator=generator)
        return rows[torch.argsort(keys)]

    def _part(self) -> tuple[int, int]:
        total = self.size - self.size % self.world_size if self.even else self.size
        base, extra = divmod(total, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + int(self.rank < extra)

    def __iter__(self) -> Iterator[int]:
        start, stop = self._part()
        return iter(self.global_order()[start:stop].tolist())

    def __len__(self) -> int:
        start, stop = self._part()
        return stop - start
