"""Data-parallel training when workers hold different numbers of batches (two gloo processes).

Ray Train splits an epoch so that every image is seen once; the ranks' batch counts then differ.
``train_one_epoch`` must keep DDP in step and give exactly the gradients of the data that exists.
"""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from support.tiny import boxed_batch, merged, tiny_config

from samdetr.builder import build_criterion, build_model
from samdetr.engine.loop import train_one_epoch
from samdetr.engine.step import StepOptions
from samdetr.model.criterion import distributed_mean

# Rank 0 holds three batches, rank 1 one: rank 1 runs out after the first step.
RANK_BATCHES = {0: [1, 2, 3], 1: [4]}


def _parts():
    torch.manual_seed(0)
    config = tiny_config()
    model, criterion = build_model(config), build_criterion(config)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    return model, criterion, optimizer


def _worker(rank: int, port: int, out: str, accumulate: int) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2
    )
    try:
        torch.set_num_threads(1)
        model, criterion, optimizer = _parts()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        stats = train_one_epoch(
            ddp, criterion, optimizer, [boxed_batch(s) for s in RANK_BATCHES[rank]],
            torch.device("cpu"), StepOptions(clip_max_norm=0.0, world_reduce=distributed_mean,
                                        accumulate=accumulate),
        )
        torch.save({"stats": stats, "state": model.state_dict()}, os.path.join(out, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# With 2 batches per step, rank 1 fills its first step up with a stand-in; DDP all-reduces once
# per step (no_sync on the first batch).
STEPS = {1: [[1, 4], [2], [3]], 2: [[1, 2, 4], [3]]}  # the one-process run's batches per step


@pytest.mark.slow
@pytest.mark.parametrize("accumulate", [1, 2])
def test_uneven_batch_counts_train_like_one_process_on_the_same_data(tmp_path, accumulate):
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path), accumulate), nprocs=2,
                       join=True, start_method="spawn")
    results = [torch.load(tmp_path / f"{r}.pt") for r in (0, 1)]
    steps = len(STEPS[accumulate])
    assert [r["stats"]["steps"] for r in results] == [steps, steps]  # the same optimizer steps
    assert [r["stats"]["batches"] for r in results] == [3, 1]
    assert [r["stats"]["images"] for r in results] == [6, 2]

    # One process on the same data, each step's batches merged into one.
    model, criterion, optimizer = _parts()
    b = {s: boxed_batch(s) for s in (1, 2, 3, 4)}
    train_one_epoch(model, criterion, optimizer,
                    [merged(*(b[s] for s in step)) for step in STEPS[accumulate]],
                    torch.device("cpu"), StepOptions(clip_max_norm=0.0))
    reference = model.state_dict()
    for name, value in reference.items():
        torch.testing.assert_close(results[0]["state"][name], results[1]["state"][name],
                                   rtol=0, atol=0, msg=f"ranks disagree on {name}")
        # float32 sums in another order: up to 3.2e-5 apart here (torch 2.14.1); a stand-in
        # step weighted by 1 instead of 0 moves some weights by 6.6e-4.
        torch.testing.assert_close(results[0]["state"][name], value, rtol=1e-4, atol=1e-4,
                                   msg=f"{name} differs from the one-process run")


def test_a_rank_without_data_from_the_start_still_steps():
    """With a fake two-rank world, the stand-in step runs and leaves the parameters unchanged."""
    model, criterion, optimizer = _parts()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    def other_rank_has_one_batch(local):  # mean of [boxes, has_batch] with a rank that has data
        calls.append(local.clone())
        other = torch.tensor([3.0, 1.0]) if len(calls) == 1 else torch.tensor([0.0, 0.0])
        return (local + other) / 2

    stats = train_one_epoch(model, criterion, optimizer, [], torch.device("cpu"),
                            StepOptions(clip_max_norm=0.0, world_reduce=other_rank_has_one_batch))
    assert stats["steps"] == 1 and stats["batches"] == 0 and stats["images"] == 0
    assert len(calls) == 2 and calls[0].tolist() == [0.0, 0.0]
    for name, value in model.state_dict().items():  # SGD without momentum: zero gradient
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)


def test_world_reduce_must_keep_the_shape():
    model, criterion, optimizer = _parts()
    with pytest.raises(TypeError, match="shaped like its input"):
        train_one_epoch(model, criterion, optimizer, [boxed_batch(1)], torch.device("cpu"),
                        StepOptions(world_reduce=lambda t: t.sum()))
