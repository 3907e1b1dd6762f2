"""A convergence study from its settings (``python -m pipelines.study`` is its command line, and
its docstring the usage): the planned (variant, seed) runs, each an ordinary training run
(:func:`pipelines.training.run.run_training`), the study's record and its report."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.common.checkpoints import CHECKPOINT_FILE
from pipelines.common.console import connect
from pipelines.data.shapes import check_counts, shapes_for
from pipelines.studies.tracking import StudyTracking
from pipelines.training.run import run_training
from pipelines.training.run_record import (
    config_differences,
    read_group_record,
    read_record,
    refuse_changes,
    write_group_record,
)
from pipelines.training.settings import TrainSettings
from samdetr.config import known_fields
from samdetr.data.storage import absolute

RECORD_FILE = "study.json"


def _default_variants() -> dict[str, dict[str, Any]]:
    return {
        "baseline": {"decoder": "baseline", "smca": False},
        "sam": {"decoder": "sam", "smca": False},
        "sam_smca": {"decoder": "sam", "smca": True},
    }


@dataclass(frozen=True)
class StudySettings:
    """What to compare. ``variants``: name -> the settings it changes (``model`` fields by
    name, others as ``node.field``: ``init.weights``, ``optim.freeze``); every variant
    runs with every seed in ``seeds``; ``baseline`` names the variant the others are read
    against. ``report``: Markdown file to (re)write, its plot beside it (None: no file).
    ``make_data``: ``{split: images}`` of synthetic shapes to generate into the configured
    shard folders when they do not exist (None: the shards must exist)."""
    name: str = "convergence"
    variants: dict[str, dict[str, Any]] = field(default_factory=_default_variants)
    seeds: tuple[int, ...] = (0, 1, 2)
    baseline: str = "baseline"
    report: str | None = None
    make_data: dict[str, int] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.replace("-", "").replace(
                "_", "").isalnum():
            raise ValueError(f"study.name must be letters, digits, '-' or '_', got {self.name!r}")
        if not isinstance(self.variants, dict) or not self.variants:
            raise ValueError("study.variants must map variant names to model fields")
        for variant, fields in self.variants.items():
            if not str(variant).replace("_", "").isalnum() or not isinstance(fields, dict):
                raise ValueError(f"study.variants.{variant} must be a name (letters, digits, "
                                 f"'_') mapping to model fields, got {fields!r}")
        seeds = list(self.seeds)
        if not seeds or len(set(seeds)) != len(seeds) or any(
                not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in seeds):
            raise ValueError(f"study.seeds must be distinct integers >= 0, got {seeds}")
        if self.baseline not in self.variants:
            raise ValueError(f"study.baseline={self.baseline!r} is not one of study.variants "
                             f"{sorted(self.variants)}")
        check_counts(self.make_data, "study.make_data")


@dataclass(frozen=True)
class StudyRun:
    """One run of the study: its key in the record, variant, seed and full settings."""
    key: str
    variant: str
    seed: int
    settings: TrainSettings


def plan_runs(study: StudySettings, base: TrainSettings) -> list[StudyRun]:
    """Every (variant, seed) run's settings, validated before anything trains. Registering
    models is switched off: a study compares variants, it does not publish them."""
    runs = []
    raw = base.to_dict()
    for variant, fields in study.variants.items():
        unknown = sorted(key for key in fields if not _known(raw, key))
        if unknown:
            raise ValueError(f"study.variants.{variant} sets unknown settings {unknown}: a "
                             "model field (smca) or node.field (init.weights, optim.freeze)")
        for seed in study.seeds:
            data = json.loads(json.dumps(raw))  # a deep, plain copy
            for key, value in fields.items():
                node, _, name = key.rpartition(".")
                data[node or "model"][name] = value
            data["trainer"].update(seed=seed, run_name=f"{study.name}-{variant}-s{seed}")
            data["tracking"].update(registered_model=None, alias=None)
            try:
                settings = TrainSettings.from_dict(data)
            except ValueError as err:
                raise ValueError(f"study variant {variant!r}: {err}") from err
            runs.append(StudyRun(f"{variant}-s{seed}", variant, seed, settings))
    return runs


def _known(raw: dict[str, Any], key: str) -> bool:
    """``key`` names a setting of ``raw``: a model field, or ``node.field`` of another node (a
    fine-tuning study's ``init.weights``)."""
    node, _, name = key.rpartition(".")
    return isinstance(raw.get(node or "model"), dict) and name in raw[node or "model"]


def run_study(study: StudySettings, base: TrainSettings, command: str) -> dict[str, Any]:
    """Train every run not finished yet, then write the results; returns the record."""
    base = base.resolved()
    runs = plan_runs(study, base)
    report = Path(absolute(study.report)) if study.report else None
    started = time.perf_counter()
    commit = _commit()  # the code this invocation trains with, not what is checked out later
    record = _read_record(base.trainer.storage_path, study.name)
    # Before anything starts: a run stored with other settings is refused here.
    finished = {run.key for run in runs if _finished(run, record["runs"].get(run.key))}
    connect(base.trainer.ray_address, verbose=base.trainer.verbose, log_to_driver=True)
    if study.make_data:
        shapes_for(base.data, dict(study.make_data), "study.make_data", base.trainer.verbose)
    tracking = StudyTracking.open(base.tracking, study, record.get("parent_run_id"), command)
    record["parent_run_id"] = tracking.run_id
    for number, run in enumerate(runs, 1):
        if run.key in finished:
            _say(f"run {number}/{len(runs)} {run.key}: finished before, skipped")
            continue
        _say(f"run {number}/{len(runs)} {run.key} ({run.settings.trainer.epochs} epochs)")
        settings = run.settings
        if tracking.run_id:
            settings = dataclasses.replace(settings, tracking=dataclasses.replace(
                settings.tracking, parent_run_id=tracking.run_id))
        summary = run_training(settings)
        earlier = record["runs"].get(run.key, {}).get("seconds", 0.0)  # a resumed run's start
        record["runs"][run.key] = {
            "variant": run.variant, "seed": run.seed, "seconds": earlier + summary["seconds"],
            "mlflow_run_id": summary.get("mlflow_run_id"), "history": _history(summary),
        }
        _write_record(base.trainer.storage_path, study.name, record)
        last = record["runs"][run.key]["history"][-1]
        _say(f"run {run.key} done in {summary['seconds']:.0f}s: last epoch AP "
             f"{100 * last['AP']:.1f}%, AP50 {100 * last['AP50']:.1f}%")
    histories = _histories(record, runs)
    facts = _facts(record, command, time.perf_counter() - started, commit)
    tracking.finish(histories, facts, report, study.baseline)
    return record


def _finished(run: StudyRun, entry: dict[str, Any] | None) -> bool:
    """Whether the study's record holds this run trained for all its epochs. A stored run of
    that name with other settings is refused, as resuming a training run is; a run recorded
    with fewer epochs than asked for now is resumed (it trains the rest)."""
    trainer = run.settings.trainer
    stored = read_record(trainer.storage_path, trainer.run_name)
    if stored is not None:
        differences = config_differences(stored.settings, run.settings.to_dict())
        if differences and not trainer.allow_config_change:
            refuse_changes(trainer.run_name, differences)
    return entry is not None and len(entry["history"]) >= trainer.epochs


def _history(summary: dict[str, Any]) -> list[dict[str, float]]:
    """The per-epoch history stored in the run's latest checkpoint (Ray's Checkpoint API, so
    object-store runs work the same)."""
    from samdetr.checkpoint import read_checkpoint

    with summary["latest"].as_directory() as folder:
        payload = read_checkpoint(os.path.join(folder, CHECKPOINT_FILE))
    keys = ("epoch", "AP", "AP50", "AP75", "loss")
    return [{k: float(entry[k]) for k in keys if k in entry} for entry in payload["history"]]


def _histories(record: dict[str, Any], runs: list[StudyRun]) -> dict[str, dict[int, list]]:
    out: dict[str, dict[int, list]] = {}
    for run in runs:  # in the configured order; runs of other configs in the record are left out
        entry = record["runs"].get(run.key)
        if entry is not None:  # the epochs asked for now (a run may have trained more before)
            epochs = run.settings.trainer.epochs
            out.setdefault(run.variant, {})[run.seed] = entry["history"][:epochs]
    return out


def _facts(record: dict[str, Any], command: str, seconds: float,
           commit: str) -> dict[str, str]:
    import torch

    total = sum(entry["seconds"] for entry in record["runs"].values())
    if torch.cuda.is_available():
        machine = f"{os.cpu_count()} CPUs, {torch.cuda.get_device_name()}"
    else:
        machine = f"{os.cpu_count()} CPUs ({platform.machine()}), no GPU"
    return {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "commit": commit,
        "command": f"`{command}`",
        "machine": f"{machine}, torch {torch.__version__}",
        "wall time": f"{total / 60:.1f} min of training over {len(record['runs'])} runs "
                     f"({seconds / 60:.1f} min in the last invocation)",
    }


def _commit() -> str:
    """The checkout's commit (``+ changes`` when the tree differs from it), so a figure names
    the code that made it; ``unknown`` outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head} + changes" if dirty.strip() else head


def _read_record(storage_path: str, name: str) -> dict[str, Any]:
    return (read_group_record(storage_path, name, RECORD_FILE)
            or {"parent_run_id": None, "runs": {}})


def _write_record(storage_path: str, name: str, record: dict[str, Any]) -> None:
    write_group_record(storage_path, name, RECORD_FILE, record)


def _say(line: str) -> None:
    print(f"[study] {line}", flush=True)


def study_fields(node: dict[str, Any]) -> dict[str, Any]:
    """The ``study`` node's known fields as :class:`StudySettings` takes them."""
    fields = known_fields(StudySettings, node or {}, "study")
    if "seeds" in fields:
        fields["seeds"] = tuple(fields["seeds"])
    return fields
