"""The epoch clock: pinned to the driver's node, back after its process dies, never shared, and
never read as some epoch it was not set to."""

from __future__ import annotations

import os
import time

import pytest

pytest.importorskip("ray")

import ray  # noqa: E402
from ray._private import state  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402
from ray.data import DataContext  # noqa: E402

from pipelines.data.ingest import (  # noqa: E402
    EpochClock,
    _planned_epoch,
    training_dataset,
)
from samdetr.data.synthetic import write_synthetic_shards  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():
        ray.shutdown()
    # address="local": a fresh instance, never a cluster someone else started here.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_clock_comes_back_empty_after_its_process_dies(local_ray):
    clock = EpochClock.create("restart")
    EpochClock.set_epoch(clock.name, 3)
    assert EpochClock.current_epoch(clock.name) == 3
    ray.kill(clock.handle, no_restart=False)  # as if its worker process had died
    # The kill is asynchronous: wait until the restarted actor is the one that answers.
    actor_id = clock.handle._actor_id.hex()
    deadline = time.monotonic() + 60
    while not (state.actors(actor_id)["NumRestarts"] == 1
               and state.actors(actor_id)["State"] == "ALIVE"):
        assert time.monotonic() < deadline, "the clock did not come back"
        time.sleep(0.05)
    # Restarted, it has forgotten the epoch and says so rather than answering 0 or 3.
    with pytest.raises(RuntimeError, match="holds no epoch"):
        EpochClock.current_epoch(clock.name, timeout_s=0.5)
    EpochClock.set_epoch(clock.name, 4)  # what rank 0 does before the next epoch
    assert EpochClock.current_epoch(clock.name) == 4
    assert state.actors(clock.handle._actor_id.hex())["NumRestarts"] == 1
    clock.close()


def test_two_clocks_of_one_run_are_distinct(local_ray):
    first, second = EpochClock.create("sweep"), EpochClock.create("sweep")
    assert first.name != second.name
    EpochClock.set_epoch(first.name, 2)
    with pytest.raises(RuntimeError, match="holds no epoch"):
        EpochClock.current_epoch(second.name, timeout_s=0.2)
    first.close()
    second.close()


def test_bad_input_is_refused(local_ray):
    with pytest.raises(ValueError, match="run_name"):
        EpochClock.create("")
    clock = EpochClock.create("bad")
    for epoch in (-1, 1.5, "2"):
        with pytest.raises(ValueError, match="epoch"):
            EpochClock.set_epoch(clock.name, epoch)
    clock.close()


def test_an_epoch_planned_without_a_set_clock_fails(local_ray, tmp_path, monkeypatch):
    write_synthetic_shards(tmp_path / "data", tmp_path / "shards", 4)
    clock = EpochClock.create("unset")
    monkeypatch.setattr(EpochClock, "READ_TIMEOUT_S", 0.2)
    dataset = training_dataset(str(tmp_path / "shards"), train=True, epoch_clock=clock.name)
    with pytest.raises(RuntimeError, match="holds no epoch"):  # Ray plans on the driver here
        dataset.take_all()
    clock.close()


def test_decode_refuses_a_context_without_an_epoch():
    with DataContext.current(DataContext()):
        with pytest.raises(RuntimeError, match="no epoch planned"):
            _planned_epoch("some-clock")


def test_clock_stays_on_the_drivers_node():
    """Head with no CPU to spare, one worker node: without node affinity Ray put 0-CPU actors
    on the worker node (5 of 6 in a trial), where losing that node would stop every epoch."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False}
    )
    try:
        cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        head = ray.get_runtime_context().get_node_id()
        clocks = [EpochClock.create("pinned") for _ in range(4)]
        nodes = [state.actors(c.handle._actor_id.hex())["Address"]["NodeID"] for c in clocks]
        assert nodes == [head] * 4
        EpochClock.set_epoch(clocks[0].name, 1)
        assert EpochClock.current_epoch(clocks[0].name) == 1
    finally:
        ray.shutdown()
        cluster.shutdown()
