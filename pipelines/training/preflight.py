"""What a training run needs from a Ray cluster of several machines, checked before it starts.

On one machine every process sees the same files. On a cluster the workers run on other
machines: a local path must name the same files on every node (a shared mount), and MLflow's
SQLite file cannot be written from other machines. Both are checked on the driver, at start,
instead of failing in the workers minutes later.
"""

from __future__ import annotations

import hashlib
import os
import uuid

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from pipelines.training.settings import TrainSettings
from samdetr.data.shards import MANIFEST_NAME

#: How long a node may take to answer the check (it may have to start a worker process).
PROBE_TIMEOUT_S = 120.0


def alive_nodes() -> list[dict]:
    return [node for node in ray.nodes() if node.get("Alive")]


def _file_digests(paths: dict[str, str]) -> dict[str, str | None]:
    """``{name: sha256 of the file}`` as this node sees it (None: not there)."""
    out: dict[str, str | None] = {}
    for name, path in paths.items():
        try:
            with open(path, "rb") as f:
                out[name] = hashlib.sha256(f.read()).hexdigest()
        except OSError:
            out[name] = None
    return out


_digests = ray.remote(num_cpus=0)(_file_digests)


def _marker_files(paths: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """One file per setting that every node must see the same: a shard set's manifest; for the
    storage folder, a new file with random content (removed after the check)."""
    markers, made = {}, []
    for name, path in paths.items():
        if name == "trainer.storage_path":
            os.makedirs(path, exist_ok=True)
            marker = os.path.join(path, f".samdetr-shared-check-{uuid.uuid4().hex}")
            with open(marker, "w") as f:
                f.write(uuid.uuid4().hex)
            made.append(marker)
        else:
            marker = os.path.join(path, MANIFEST_NAME)
        markers[name] = marker
    return markers, made


def check_cluster(settings: TrainSettings) -> None:
    """On a cluster of more than one node: ValueError unless every node sees every local path
    of ``settings`` (resolved) as the driver does, and unless tracking uses a server."""
    nodes = alive_nodes()
    if len(nodes) < 2:
        return
    uri = settings.tracking.resolved_uri()
    if settings.tracking.enabled and uri.startswith("sqlite:"):
        raise ValueError(
            f"this Ray cluster has {len(nodes)} nodes, and the MLflow store {uri} is a SQLite "
            "file that workers on other nodes cannot write: run an MLflow tracking server and "
            "set tracking.tracking_uri=http://HOST:PORT (or MLFLOW_TRACKING_URI)"
        )
    paths = settings.local_paths()
    if not paths:
        return
    markers, made = _marker_files(paths)
    try:
        expected = _file_digests(markers)  # as the driver sees them
        probes = {
            node["NodeID"]: _digests.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
            ).remote(markers)
            for node in nodes
        }
        seen = {node_id: ray.get(ref, timeout=PROBE_TIMEOUT_S) for node_id, ref in probes.items()}
    finally:
        for marker in made:
            os.remove(marker)
    unseen = sorted(
        (name, node_id) for node_id, digests in seen.items() for name in paths
        if digests[name] is None or digests[name] != expected[name]
    )
    if unseen:
        address = {node["NodeID"]: node.get("NodeManagerAddress", "?") for node in nodes}
        listed = "\n  ".join(
            f"{name} = {paths[name]} (node {address[node_id]}, id {node_id[:12]})"
            for name, node_id in unseen
        )
        raise ValueError(
            f"this Ray cluster has {len(nodes)} nodes, and these local paths are not the same "
            f"on all of them:\n  {listed}\nPut shards and trainer.storage_path on shared "
            "storage: a URI (s3://bucket/prefix, gs://bucket/prefix) or a folder mounted at the "
            "same path on every node (NFS)."
        )
