"""A training run's identity, kept beside its checkpoints in ``<storage>/<run>/samdetr_run.json``.

It holds the MLflow run the training run logs to and the settings it was started with. Resuming
(the same ``trainer.run_name`` and ``trainer.storage_path``) reads it: the same MLflow run goes on,
and a config that differs in what changes the training (anything but the epoch count, paths,
logging and placement) is refused unless ``trainer.allow_config_change=true``. A new storage
location, or a deleted run folder, has no record and so starts a new MLflow run.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow.fs as pafs

from pipelines.common.checkpoints import HISTORY_FILE
from pipelines.training.settings import TrainSettings, flatten
from samdetr.data.storage import resolve_fs

RECORD_FILE = "samdetr_run.json"
#: Folder names of the run's checkpoints (``checkpoint_dir_name`` in pipelines.training.loop).
CHECKPOINT_DIR = re.compile(r"^epoch_(\d{4})$")

#: Settings a resumed run may change freely (flattened names; a trailing "." is a prefix):
#: the epoch count, where things are, what is logged and how the workers are placed/restarted.
FREE_TO_CHANGE = (
    "trainer.epochs",
    "trainer.early_stop_patience",  # like epochs: how long the run goes on
    "trainer.early_stop_min_delta",
    "trainer.storage_path",
    "trainer.ray_address",
    "trainer.log_every",
    "trainer.num_pictures",
    "trainer.max_failures",
    "trainer.activation_checkpointing",  # memory for compute: the same numbers
    "trainer.fail_after_epoch",
    "trainer.cpus_per_worker",
    "trainer.worker_resources",
    "trainer.allow_config_change",
    "trainer.verbose",
    "data.train_shards",
    "data.val_shards",
    "data.eval_loader_workers",
    "tracking.",
)


@dataclass(frozen=True)
class RunRecord:
    run_name: str
    mlflow_run_id: str | None  # None: the run was started without tracking
    tracking_uri: str | None
    settings: dict[str, Any]  # TrainSettings.to_dict() of the latest start
    created: str  # UTC time of the first start


def _location(storage_path: str, relative: str) -> tuple[pafs.FileSystem, str]:
    fs, root = resolve_fs(storage_path)
    return fs, f"{root.rstrip('/')}/{relative}"


def read_json(storage_path: str, relative: str) -> Any:
    """The JSON file ``<storage_path>/<relative>`` (local or object store); None if absent."""
    fs, path = _location(storage_path, relative)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        return json.loads(stream.read().decode())


def write_json(storage_path: str, relative: str, data: Any) -> None:
    """Write ``data`` as the JSON file ``<storage_path>/<relative>`` (folders made)."""
    fs, path = _location(storage_path, relative)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as stream:
        stream.write(json.dumps(data, indent=2, sort_keys=True).encode())


def read_record(storage_path: str, run_name: str) -> RunRecord | None:
    """The run's record, or None when this storage holds no run of that name."""
    raw = read_json(storage_path, f"{run_name}/{RECORD_FILE}")
    if raw is None:
        return None
    try:
        return RunRecord(**raw)
    except TypeError as err:
        raise ValueError(f"{storage_path}/{run_name}/{RECORD_FILE} is not a run record: {err}"
                         ) from err


def write_record(storage_path: str, record: RunRecord) -> None:
    write_json(storage_path, f"{record.run_name}/{RECORD_FILE}", asdict(record))


def new_record(run_name: str, run_id: str | None, uri: str | None,
               settings: dict[str, Any], previous: RunRecord | None) -> RunRecord:
    """The record to store at this start (the first start's time is kept)."""
    created = previous.created if previous else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return RunRecord(run_name, run_id, uri, settings, created)


def _free(key: str) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) or key.startswith(p + ".")
               for p in FREE_TO_CHANGE)


def setting_differences(stored: dict[str, Any], current: dict[str, Any], prefix: str = "",
                        free: Callable[[str], bool] = lambda key: False) -> list[str]:
    """``"<prefix>key: stored -> current"`` for every flattened setting that differs, except
    those ``free`` lets change (a run's, a sweep's or a study's stored settings)."""
    old, new = flatten(stored), flatten(current)
    return [f"{prefix}{key}: {old.get(key, '(unset)')} -> {new.get(key, '(unset)')}"
            for key in sorted(set(old) | set(new))
            if not free(key) and old.get(key) != new.get(key)]


def config_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"key: stored -> current"`` for every setting that differs and changes the training.

    A setting that ``stored`` lacks (recorded before the setting existed) counts as its default,
    since every new setting's default is the behaviour from before it."""
    return setting_differences(_completed(stored), current, free=_free)


def _completed(stored: dict[str, Any]) -> dict[str, Any]:
    try:
        return TrainSettings.from_dict(stored).to_dict()
    except (TypeError, ValueError):  # a setting since removed or changed: compared as stored
        return stored


def read_group_record(storage_path: str, name: str, file: str) -> dict[str, Any] | None:
    """The record of a group of runs (a study's ``study.json``, a sweep's ``sweep.json``) in
    ``<storage_path>/<name>/``: its parent MLflow run and what it keeps of its runs; None when
    the group is new. The group's runs keep their own :class:`RunRecord` each."""
    return read_json(storage_path, f"{name}/{file}")


def write_group_record(storage_path: str, name: str, file: str, record: dict[str, Any]) -> None:
    """Store a group's record (after every change, so a restart finds it)."""
    write_json(storage_path, f"{name}/{file}", record)


def refuse_changes(run_name: str, differences: list[str]) -> None:
    """ValueError listing what differs from the stored config of the run being resumed."""
    listed = "\n  ".join(differences)
    raise ValueError(
        f"run {run_name!r} exists and was started with other settings; resuming it with these "
        f"would change the training:\n  {listed}\nRun with the stored settings, start a new run "
        "(another trainer.run_name), or accept the changes with trainer.allow_config_change=true."
    )


def _subfolders(path: str) -> tuple[pafs.FileSystem, str, list[str]]:
    """``(fs, path on it, names of the folders directly in it)``; none if it does not exist."""
    fs, root = resolve_fs(path)
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    except FileNotFoundError:
        infos = []
    return fs, root, [i.base_name for i in infos if i.type == pafs.FileType.Directory]


def list_runs(storage_path: str) -> list[str]:
    """Names of the runs stored under ``storage_path`` (folders holding a run record)."""
    fs, root, folders = _subfolders(storage_path)
    return sorted(name for name in folders if fs.get_file_info(
        f"{root.rstrip('/')}/{name}/{RECORD_FILE}").type == pafs.FileType.File)


def kept_checkpoints(run_root: str) -> dict[int, str]:
    """``{epoch (0-based): folder}`` of the checkpoints a Ray Train run kept (its best and its
    latest), local or on an object store (``run_root`` = ``<storage>/<run_name>``)."""
    _, _, folders = _subfolders(run_root)
    matches = [(CHECKPOINT_DIR.match(name), name) for name in folders]
    return {int(match.group(1)) - 1: f"{run_root.rstrip('/')}/{name}"
            for match, name in matches if match}


def run_history(run_root: str) -> list[dict[str, Any]] | None:
    """The per-epoch metrics stored with the run's latest checkpoint (every epoch it trained,
    across restarts), or None when it has none (or predates ``history.json``)."""
    kept = kept_checkpoints(run_root)
    return read_json(kept[max(kept)], HISTORY_FILE) if kept else None
