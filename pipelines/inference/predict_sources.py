"""Where ``python -m pipelines.predict`` finds its model and images, for both engines: the
checkpoint file of a checkpoint setting or of an MLflow model (:func:`checkpoint_of`), or the
exported file a non-torch runtime runs (:func:`model_file_of`), the predictor on either
(:func:`open_predictor`), whether the images are a shard set (:func:`shard_set_of`), and the
engines' and runtimes' names. ``predict`` (the
settings and the one-process engine) hands ``engine=ray`` runs to ``batch_predict``, which
takes these from here, not from ``predict``."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipelines.common.checkpoints import local_checkpoint
from pipelines.common.tracking import store_client
from pipelines.common.tracking_settings import store_uri
from pipelines.inference.evaluate import resolve_device
from pipelines.inference.export import find_export
from pipelines.registry.register import fetched_checkpoint
from samdetr.data.shards import MANIFEST_NAME
from samdetr.data.storage import is_uri, read_file, resolve_fs

#: ``engine``: ``local`` reads, decodes and detects in this process; ``ray`` reads and decodes
#: with Ray Data tasks and detects in a pool of model actors (pipelines.inference.batch_predict).
ENGINES = ("local", "ray")
#: ``gpus_per_actor`` that means "1 where the Ray cluster has GPUs, else 0".
AUTO_GPUS = "auto"
#: ``runtime``: the PyTorch model of a checkpoint, or a file of ``pipelines.export`` in ONNX
#: Runtime or as an ExportedProgram (on the CPU).
RUNTIMES = ("torch", "onnx", "exported_program")


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


@contextlib.contextmanager
def model_file_of(settings: Any) -> Iterator[str]:
    """The local file ``settings`` (``PredictSettings``) runs: with ``runtime=torch`` the
    checkpoint (:func:`checkpoint_of`); otherwise ``exported`` (local, or at a URI: copied
    here), or the export of ``model_uri`` recorded in its store by ``pipelines.export``."""
    if settings.runtime == "torch":
        with checkpoint_of(settings.checkpoint, settings.model_uri,
                           settings.tracking_uri) as path:
            yield path
        return
    exported = settings.exported
    if exported is not None and not is_uri(exported):
        if not Path(exported).is_file():
            raise FileNotFoundError(f"exported={exported}: no such file")
        yield exported
        return
    with tempfile.TemporaryDirectory(prefix="samdetr-exported-") as folder:
        if exported is not None:  # at a URI: copied here, under its own name (its suffix)
            local = Path(folder) / exported.rstrip("/").rsplit("/", 1)[-1]
            local.write_bytes(read_file(exported))
        else:
            uri = store_uri(settings.tracking_uri)
            run_id, artifact = find_export(uri, settings.model_uri, settings.runtime)
            local = Path(store_client(uri).download_artifacts(run_id, artifact, folder))
            print(f"[predict] {settings.model_uri}: the {settings.runtime} export of MLflow run "
                  f"{run_id}", flush=True)
        yield str(local)


def open_predictor(path: str, runtime: str, device: str, batch_size: int, num_top: int) -> Any:
    """The ``samdetr.inference.Predictor`` on ``path``: a checkpoint (``runtime=torch``, on
    ``device``: ``auto``, ``cpu``, ``cuda``...) or an exported file (on the CPU)."""
    from samdetr.inference import Predictor

    if runtime == "torch":
        return Predictor.from_checkpoint(path, device=resolve_device(device),
                                         batch_size=batch_size, num_top=num_top)
    return Predictor.from_exported(path, batch_size=batch_size, num_top=num_top)
