"""A Ray Tune sweep from its settings (``python -m pipelines.tune`` is its command line, and its
docstring the usage): the sweep's folder and record, restore or start, the ImageNet weights read
once for every trial, and the winner registered at the end."""

from __future__ import annotations

import time
from typing import Any

from pipelines.common.console import connect
from pipelines.common.tracking import check_reachable, finish_run, open_parent_run, quietly
from pipelines.data.shapes import shapes_for
from pipelines.sweeps.report import TrialOutcome, console_table, history_from_rows, outcome_status
from pipelines.sweeps.report import winner as best_trial
from pipelines.sweeps.settings import SweepSettings, check_against, runs_root
from pipelines.sweeps.tracking import complete_trial, log_results, register_winner, winner_tags
from pipelines.sweeps.tuner import build_tuner, check_resources, fit
from pipelines.training.backbone_weights import check_backbone_weights
from pipelines.training.preflight import check_cluster
from pipelines.training.pretrained import fetch_pretrained
from pipelines.training.run import check_data
from pipelines.training.run_record import (
    config_differences,
    read_group_record,
    read_record,
    run_history,
    setting_differences,
    write_group_record,
)
from pipelines.training.settings import TrainSettings, flatten

RECORD_FILE = "sweep.json"
#: Reported numbers kept in a trial's history (the rest of Tune's result is bookkeeping).
HISTORY_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "loss", "epoch_time_s")


def _say(line: str) -> None:
    print(f"[sweep] {line}", flush=True)


def run_sweep(sweep: SweepSettings, base: TrainSettings, config_yaml: str = "") -> dict[str, Any]:
    """Run (or restore) the sweep; returns ``{"trials": [TrialOutcome], "winner", ...}``."""
    base = base.resolved()
    check_against(sweep, base)
    # Read once here for every trial: the trials' drivers and workers run on other nodes,
    # which may have no network access and no copy of the file.
    pretrained = (fetch_pretrained(base.init.weights, base.tracking.resolved_uri())
                  if base.init.weights is not None else None)
    backbone_state = (check_backbone_weights(base.detector.model.backbone.weights)
                      if pretrained is None else None)
    if base.tracking.enabled:
        check_reachable(base.tracking.resolved_uri())
    record = _open_record(sweep, base)
    # The trials' own output stays in their logs: the console shows Tune's trial table.
    connect(base.trainer.ray_address, verbose=base.trainer.verbose, log_to_driver=False)
    if sweep.make_data:
        shapes_for(base.data, dict(sweep.make_data), "sweep.make_data", base.trainer.verbose)
    data = check_data(base)
    check_cluster(base)
    uri, parent = open_parent_run(base.tracking, sweep.name, flatten({"sweep": sweep.to_dict()}),
                                  config_yaml or "", record.get("parent_run_id"), "sweep")
    record["parent_run_id"] = parent
    _write_record(base, sweep, record)
    check_resources(sweep, base)
    started = time.perf_counter()
    results = fit(build_tuner(sweep, base, parent, backbone_state, pretrained))
    outcomes = _outcomes(results, sweep, base)
    if not outcomes:
        raise RuntimeError(f"sweep {sweep.name!r} ran no trial")
    summary = {"trials": outcomes, "parent_run_id": parent, "tracking_uri": uri,
               "seconds": time.perf_counter() - started}
    _finish(summary, sweep, base, record, data["train"]["manifest_sha256"])
    return summary


def _open_record(sweep: SweepSettings, base: TrainSettings) -> dict[str, Any]:
    """The sweep's stored record (a restart), refusing other settings; or a new one."""
    stored = read_group_record(base.trainer.storage_path, sweep.name, RECORD_FILE)
    if stored is None:
        return {"parent_run_id": None, "winner": None, "base": base.to_dict(),
                "sweep": sweep.to_dict()}
    differences = config_differences(stored["base"], base.to_dict())
    differences += setting_differences(stored["sweep"], sweep.to_dict(), "sweep.")
    if stored["base"]["trainer"]["epochs"] != base.trainer.epochs:
        differences.append(f"trainer.epochs: {stored['base']['trainer']['epochs']} -> "
                           f"{base.trainer.epochs}")
    if differences:
        listed = "\n  ".join(differences)
        raise ValueError(f"sweep {sweep.name!r} exists under {base.trainer.storage_path} with "
                         f"other settings; restoring it with these would change it:\n  {listed}\n"
                         "Run with the stored settings or start a new sweep (another sweep.name).")
    _say(f"restoring sweep {sweep.name!r} (finished trials are kept)")
    return stored


def _write_record(base: TrainSettings, sweep: SweepSettings, record: dict[str, Any]) -> None:
    write_group_record(base.trainer.storage_path, sweep.name, RECORD_FILE, record)


def _outcomes(results: Any, sweep: SweepSettings, base: TrainSettings) -> list[TrialOutcome]:
    """One :class:`TrialOutcome` per trial, from Tune's results and the trials' run records."""
    root = runs_root(base.trainer.storage_path, sweep.name)
    outcomes = []
    for result in results:
        frame = result.metrics_dataframe
        rows = frame.to_dict("records") if frame is not None else []
        trial_id = (result.metrics or {}).get("trial_id") or _trial_id_from_path(result.path)
        run_name = f"{sweep.name}-{trial_id}"
        # The Train run's own history: Tune's rows miss the epochs before a restore.
        stored = run_history(f"{root}/{run_name}")
        history = history_from_rows(stored if stored is not None else rows, HISTORY_KEYS)
        seconds = sum(h.get("epoch_time_s", 0.0) for h in history)
        record = read_record(root, run_name)
        outcomes.append(TrialOutcome(
            trial_id=trial_id, run_name=run_name, params=dict(result.config or {}),
            history=history, status=outcome_status(result.error, len(history),
                                                   base.trainer.epochs),
            seconds=seconds, error=str(result.error)[:500] if result.error else None,
            mlflow_run_id=record.mlflow_run_id if record else None,
        ))
    return sorted(outcomes, key=lambda o: o.trial_id)


def _trial_id_from_path(path: str) -> str:
    """Tune names a trial's folder ``<trainable>_<trial id>_<params...>``."""
    import re

    match = re.search(r"_([0-9a-f]{5}_\d{5})", path or "")
    return match.group(1) if match else "unknown"


def _finish(summary: dict[str, Any], sweep: SweepSettings, base: TrainSettings,
            record: dict[str, Any], data_sha256: str) -> None:
    """Complete the trials' runs, log the results, register the winner, print the table."""
    outcomes, uri, parent = summary["trials"], summary["tracking_uri"], summary["parent_run_id"]
    root = runs_root(base.trainer.storage_path, sweep.name)
    models = {}
    for o in outcomes:
        if uri and o.mlflow_run_id:
            models[o.trial_id] = quietly(f"complete the MLflow run of trial {o.trial_id}",
                                         complete_trial, uri, o, f"{root}/{o.run_name}",
                                         sweep.metric, prefix="sweep")
    table = console_table(outcomes, sweep.metric)
    if uri and parent:
        quietly("log the sweep's results", log_results, uri, parent, outcomes, sweep.metric,
                table, prefix="sweep")
    best = best_trial(outcomes, sweep.metric)
    summary["winner"] = best
    print(f"\nTrials of sweep {sweep.name} (validation {sweep.metric}, best first):\n{table}\n",
          flush=True)
    if best is None:
        _say("no trial reported an epoch: nothing to register")
    else:
        score = 100 * best.best(sweep.metric)[sweep.metric]
        _say(f"winner: trial {best.trial_id} ({_params(best)}), {sweep.metric} {score:.2f}%")
        summary["registered"] = _register(summary, sweep, base, record, data_sha256,
                                          models.get(best.trial_id))
    if uri and parent:
        quietly("mark the sweep's MLflow run FINISHED", finish_run, uri, parent, True,
                prefix="sweep")


def _register(summary: dict[str, Any], sweep: SweepSettings, base: TrainSettings,
              record: dict[str, Any], data_sha256: str, model_uri: str | None) -> str | None:
    """The winner as a new registered version with ``sweep.alias`` (once per sweep)."""
    best, uri = summary["winner"], summary["tracking_uri"]
    done = record.get("winner") or {}
    if done.get("trial_id") == best.trial_id and done.get("registered"):
        _say(f"registered before: {done['registered']}")
        return done["registered"]
    if not uri:
        _say("tracking is off: the winner is not registered")
        return None
    if not base.tracking.registered_model:
        _say("tracking.registered_model is not set: the winner is not registered")
        return None
    if model_uri is None:
        _say("the winner's model could not be logged: it is not registered")
        return None
    tags = winner_tags(best, sweep.metric, summary["parent_run_id"], data_sha256, sweep.name)
    registered = quietly("register the winner", register_winner, uri, base.tracking, model_uri,
                         tags, sweep.alias, prefix="sweep")
    if registered:
        _say(f"registered {registered}")
        record["winner"] = {"trial_id": best.trial_id, "registered": registered}
        _write_record(base, sweep, record)
    return registered


def _params(outcome: TrialOutcome) -> str:
    return ", ".join(f"{k}={v}" for k, v in outcome.params.items())
