"""A training run's identity, kept beside its checkpoints in ``<storage>/<run>/samdetr_run.json``.

It holds the MLflow run the training run logs to and the settings it was started with. Resuming
(the same ``trainer.run_name`` and ``trainer.storage_path``) reads it: the same MLflow run goes on,
and a config that differs in what changes the training (anything but the epoch count, paths,
logging and placement) is refused unless ``trainer.allow_config_change=true``. A new storage
location, or a deleted run folder, has no record and so starts a new MLflow run.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow.fs as pafs

from pipelines.train_settings import flatten
from samdetr.data.storage import resolve_fs

RECORD_FILE = "samdetr_run.json"

#: Settings a resumed run may change freely (flattened names; a trailing "." is a prefix):
#: the epoch count, where things are, what is logged and how the workers are placed/restarted.
FREE_TO_CHANGE = (
    "trainer.epochs",
    "trainer.storage_path",
    "trainer.ray_address",
    "trainer.log_every",
    "trainer.num_pictures",
    "trainer.max_failures",
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


def _location(storage_path: str, run_name: str) -> tuple[pafs.FileSystem, str]:
    fs, root = resolve_fs(storage_path)
    return fs, f"{root.rstrip('/')}/{run_name}/{RECORD_FILE}"


def read_record(storage_path: str, run_name: str) -> RunRecord | None:
    """The run's record, or None when this storage holds no run of that name."""
    fs, path = _location(storage_path, run_name)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_stream(path) as stream:
        raw = json.loads(stream.read().decode())
    try:
        return RunRecord(**raw)
    except TypeError as err:
        raise ValueError(f"{storage_path}/{run_name}/{RECORD_FILE} is not a run record: {err}"
                         ) from err


def write_record(storage_path: str, record: RunRecord) -> None:
    fs, path = _location(storage_path, record.run_name)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as stream:
        stream.write(json.dumps(asdict(record), indent=2, sort_keys=True).encode())


def new_record(run_name: str, run_id: str | None, uri: str | None,
               settings: dict[str, Any], previous: RunRecord | None) -> RunRecord:
    """The record to store at this start (the first start's time is kept)."""
    created = previous.created if previous else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return RunRecord(run_name, run_id, uri, settings, created)


def _free(key: str) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) or key.startswith(p + ".")
               for p in FREE_TO_CHANGE)


def config_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"key: stored -> current"`` for every setting that differs and changes the training."""
    old, new = flatten(stored), flatten(current)
    out = []
    for key in sorted(set(old) | set(new)):
        if _free(key) or old.get(key) == new.get(key):
            continue
        out.append(f"{key}: {old.get(key, '(unset)')} -> {new.get(key, '(unset)')}")
    return out


def refuse_changes(run_name: str, differences: list[str]) -> None:
    """ValueError listing what differs from the stored config of the run being resumed."""
    listed = "\n  ".join(differences)
    raise ValueError(
        f"run {run_name!r} exists and was started with other settings; resuming it with these "
        f"would change the training:\n  {listed}\nRun with the stored settings, start a new run "
        "(another trainer.run_name), or accept the changes with trainer.allow_config_change=true."
    )
