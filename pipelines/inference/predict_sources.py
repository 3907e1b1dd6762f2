"""Where ``python -m pipelines.predict`` finds its model and images, for both engines: the
checkpoint file of a checkpoint setting or of an MLflow model (:func:`checkpoint_of`), whether
the images are a shard set (:func:`shard_set_of`), and the engines' names. ``predict`` (the
settings and the one-process engine) hands ``engine=ray`` runs to ``batch_predict``, which
takes these from here, not from ``predict``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from pipelines.common.checkpoints import local_checkpoint
from pipelines.common.tracking_settings import store_uri
from pipelines.registry.register import fetched_checkpoint
from samdetr.data.shards import MANIFEST_NAME
from samdetr.data.storage import resolve_fs

#: ``engine``: ``local`` reads, decodes and detects in this process; ``ray`` reads and decodes
#: with Ray Data tasks and detects in a pool of model actors (pipelines.inference.batch_predict).
ENGINES = ("local", "ray")
#: ``gpus_per_actor`` that means "1 where the Ray cluster has GPUs, else 0".
AUTO_GPUS = "auto"


@contextlib.contextmanager
def checkpoint_of(checkpoint: str | None, model_uri: str | None,
                  tracking_uri: str | None) -> Iterator[str]:
    """A local samdetr checkpoint file: ``checkpoint`` (a file or a Ray Train checkpoint folder,
    local or at a URI), or the one the MLflow model ``model_uri`` carries (its ``checkpoint``
    artifact), fetched from the store ``tracking_uri`` (None: the default store)."""
    if checkpoint is not None:
        with local_checkpoint(checkpoint) as path:
            yield path
        return
    with fetched_checkpoint(store_uri(tracking_uri), model_uri) as path:
        yield path


def shard_set_of(images: str | list[str]) -> str | None:
    """``images`` itself when it is one folder holding a shard set (its ``manifest.json``), else
    None (files, folders of images, globs, lists)."""
    if isinstance(images, (list, tuple)):
        if len(images) != 1:
            return None
        images = images[0]
    if any(c in images for c in "*?["):
        return None
    fs, base = resolve_fs(images, None)
    info = fs.get_file_info(f"{base.rstrip('/')}/{MANIFEST_NAME}")
    return images if info.type.name == "File" else None
