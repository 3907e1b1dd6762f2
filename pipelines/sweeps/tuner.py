"""The sweep's Ray Tune side: the Tuner (new, or restored from storage), its scheduler, search
algorithm and console reporter, and a check that the trials fit the cluster."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from pipelines.sweeps.scheduler import HISTORIES_FILE, SweepASHA
from pipelines.sweeps.settings import SweepSettings, leaves, runs_root, search_space
from pipelines.sweeps.trial import TrialJob, train_trial
from pipelines.training.run_record import list_runs, run_history, write_json
from pipelines.training.settings import TrainSettings
from samdetr.pretrained import PretrainedWeights


def experiment_path(base: TrainSettings, sweep: SweepSettings) -> str:
    """Tune's experiment folder (the trials' Train runs and ``sweep.json`` live in it too)."""
    return f"{base.trainer.storage_path.rstrip('/')}/{sweep.name}"


def build_tuner(sweep: SweepSettings, base: TrainSettings, parent_run_id: str | None,
                backbone_state: dict[str, Any] | None = None,
                pretrained: PretrainedWeights | None = None) -> Any:
    """A new Tuner, or the stored one restored (finished trials kept, unfinished and errored
    ones resumed: their Train runs go on from their latest checkpoints). ``backbone_state``:
    the base's ImageNet weights, and ``pretrained`` its ``init.weights``, each read once by
    this driver for every trial."""
    from ray import tune

    job = TrialJob(base.to_dict(), sweep.to_dict(), parent_run_id).as_dict()
    backbone = (base.detector.model.backbone.weights, backbone_state)
    init = (base.init.weights, pretrained)
    trainable = tune.with_resources(
        tune.with_parameters(train_trial, job=job, backbone=backbone, pretrained=init),
        {"CPU": float(sweep.trial_cpus)})
    path = experiment_path(base, sweep)
    if tune.Tuner.can_restore(path):
        _write_histories(sweep, base)
        return tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
    return tune.Tuner(
        trainable,
        param_space=search_space(sweep),
        tune_config=tune.TuneConfig(
            metric=sweep.metric, mode="max", scheduler=_scheduler(sweep, base),
            search_alg=_search_alg(sweep), num_samples=sweep.num_samples,
            # The basic generator limits itself; Tune wraps other searchers in a limiter.
            max_concurrent_trials=None if sweep.algorithm == "basic"
            else sweep.max_concurrent_trials,
        ),
        run_config=tune.RunConfig(
            name=sweep.name, storage_path=base.trainer.storage_path,
            # Ray Train restarts a trial's workers itself (trainer.max_failures).
            failure_config=tune.FailureConfig(max_failures=0),
            progress_reporter=_reporter(sweep),
            verbose=1,  # the trial table as the sweep runs
        ),
    )


def fit(tuner: Any) -> Any:
    """``tuner.fit()`` with Tune's table reporter as the console (see :func:`_table_output`)."""
    with _table_output():
        return tuner.fit()


@contextlib.contextmanager
def _table_output() -> Iterator[None]:
    """Tune's ``CLIReporter`` (a table of chosen columns, every 30 s) instead of Ray 2.60's
    default output, which prints every result of every trial in full. Tune reads this switch
    when ``fit`` starts; it is put back afterwards."""
    previous = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = previous


def _reporter(sweep: SweepSettings) -> Any:
    from ray.tune import CLIReporter

    params = [*leaves(sweep.space), *sweep.options]
    metrics = {"epochs_done": "epochs", sweep.metric: sweep.metric, "AP50": "AP50",
               "loss": "train loss"}
    # Sorted by TuneConfig's metric (the reporter may not name its own).
    return CLIReporter(parameter_columns=params, metric_columns=metrics, sort_by_metric=True,
                       max_report_frequency=30, max_column_length=28)


def _scheduler(sweep: SweepSettings, base: TrainSettings) -> Any:
    from ray.tune.schedulers import FIFOScheduler

    settings = sweep.scheduler
    if settings.name == "fifo":
        return FIFOScheduler()
    # Epochs trained, not Tune's iteration count: a trial resumed from its checkpoint goes on
    # counting where it stopped.
    return SweepASHA(experiment_path(base, sweep), time_attr="epochs_done",
                     max_t=base.trainer.epochs, grace_period=settings.grace_period,
                     reduction_factor=settings.reduction_factor)


def _write_histories(sweep: SweepSettings, base: TrainSettings) -> None:
    """Every trial's ``sweep.metric`` per epoch, for the restored scheduler
    (:mod:`pipelines.sweeps.scheduler`)."""
    root = runs_root(base.trainer.storage_path, sweep.name)
    prefix = f"{sweep.name}-"
    histories = {}
    for run_name in list_runs(root):
        history = run_history(f"{root}/{run_name}") or []
        if run_name.startswith(prefix) and history:
            histories[run_name[len(prefix):]] = [h[sweep.metric] for h in history]
    write_json(experiment_path(base, sweep), HISTORIES_FILE, histories)


def _search_alg(sweep: SweepSettings) -> Any:
    if sweep.algorithm == "basic":
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return BasicVariantGenerator(random_state=sweep.seed,
                                     max_concurrent=sweep.max_concurrent_trials)
    try:
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=sweep.seed)
    except (ImportError, AssertionError) as err:
        raise ValueError("sweep.algorithm=optuna needs the optuna package "
                         "(pip install optuna)") from err


def check_resources(sweep: SweepSettings, base: TrainSettings) -> list[str]:
    """Print (and return) :func:`resource_warnings` for the cluster as it is now."""
    import ray

    warnings = resource_warnings(sweep, base, ray.cluster_resources())
    for line in warnings:
        print(f"[sweep] warning: {line}", flush=True)
    return warnings


def resource_warnings(sweep: SweepSettings, base: TrainSettings,
                      total: dict[str, float]) -> list[str]:
    """Why the concurrent trials cannot all run on a cluster with ``total`` resources: Tune
    reserves only each trial's driver, so trials whose Train workers do not fit wait for them,
    and Ray Data's read and decode tasks ask for a whole CPU each: with less than one CPU left
    they never start and every trial hangs. Warnings, not errors: an autoscaling cluster may
    grow to fit."""
    trainer = base.trainer
    concurrent = sweep.max_concurrent_trials
    cpus = concurrent * (sweep.trial_cpus + trainer.num_workers * trainer.cpus_per_worker)
    warnings = []
    if cpus > total.get("CPU", 0) - 1:
        warnings.append(
            f"{concurrent} concurrent trial(s) take {cpus:g} CPUs (sweep.trial_cpus + "
            f"trainer.num_workers x trainer.cpus_per_worker each) of the cluster's "
            f"{total.get('CPU', 0):g}, which leaves less than the 1 CPU a Ray Data task needs: "
            "the trials will wait forever unless the cluster grows. Lower "
            "sweep.max_concurrent_trials, sweep.trial_cpus or trainer.cpus_per_worker.")
    gpus = concurrent * trainer.num_workers * trainer.gpus_per_worker if trainer.use_gpu else 0
    if gpus > total.get("GPU", 0):
        warnings.append(
            f"{concurrent} concurrent trial(s) need {gpus:g} GPUs; the cluster has "
            f"{total.get('GPU', 0):g}: trials will wait for GPUs while holding their CPUs. "
            "Set sweep.max_concurrent_trials to GPUs / (num_workers x gpus_per_worker).")
    return warnings
