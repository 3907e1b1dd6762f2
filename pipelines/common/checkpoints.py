"""Where a samdetr checkpoint lives inside a Ray Train checkpoint: the one owner of the file
names and of turning what a user gives (a ``checkpoint.pt``, a Ray Train checkpoint folder, either
on local disk or at an object-store URI) into a local file to read."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from samdetr.data.storage import is_uri

#: File name of the samdetr checkpoint inside each Ray Train checkpoint folder.
CHECKPOINT_FILE = "checkpoint.pt"
#: Beside it: the run's per-epoch metrics so far as JSON (readable without loading weights).
HISTORY_FILE = "history.json"


def checkpoint_uri(storage_path: str, run_name: str, folder: str) -> str:
    """Path or URI of the samdetr checkpoint in Ray Train checkpoint ``folder`` (its base name,
    e.g. ``checkpoint_000003``) of run ``run_name`` under ``storage_path``. Built from the
    settings because Ray's ``Checkpoint.path`` drops an object store's scheme."""
    return f"{storage_path.rstrip('/')}/{run_name}/{folder}/{CHECKPOINT_FILE}"


@contextlib.contextmanager
def local_checkpoint(path: str) -> Iterator[str]:
    """A local ``checkpoint.pt`` for ``path``: that file or a Ray Train checkpoint folder, on
    local disk or at a URI (``s3://...``: copied through Ray's own ``Checkpoint`` API)."""
    if not is_uri(path):
        yield checkpoint_file(path)
        return
    from ray.train import Checkpoint

    folder = path.rstrip("/")
    if folder.endswith("/" + CHECKPOINT_FILE):
        folder = folder[: -len(CHECKPOINT_FILE) - 1]
    with Checkpoint(folder).as_directory() as local:
        yield checkpoint_file(local)


def checkpoint_file(path: str) -> str:
    """``path`` itself, or the ``checkpoint.pt`` inside a Ray Train checkpoint folder."""
    if os.path.isdir(path):
        inner = os.path.join(path, CHECKPOINT_FILE)
        if not os.path.isfile(inner):
            raise FileNotFoundError(f"{path} is a folder without a {CHECKPOINT_FILE}")
        return inner
    return path
