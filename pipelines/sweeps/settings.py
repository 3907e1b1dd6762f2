"""Typed settings of a sweep (``conf/sweep/*.yaml``) and what they turn into: Tune's search space
and each trial's :class:`pipelines.training.settings.TrainSettings`.

A search space is written as the settings it varies, nested as in ``conf/train.yaml``, each leaf
a distribution with one key::
    space:
      model:
        num_salient_points: {grid: [1, 2, 4, 8, 16]}   # every value, in every combination
      optim:
        lr: {loguniform: [1.0e-4, 1.0e-3]}              # sampled, num_samples times
    options:                                          # named bundles of settings, grid-searched
      smca:
        "off": {model: {smca: false}}
        beta8: {model: {smca: true, smca_beta: 8}}

Distributions: ``grid`` and ``choice`` (lists of values), ``uniform`` and ``loguniform``
(``[low, high]`` floats), ``randint`` (``[low, high)`` integers). An option bundles settings that
only make sense together (``smca_beta`` without ``smca`` would repeat a trial); the trial table
shows its name. Every listed value and option is checked against the base settings before any
trial starts (e.g. an M that does not divide ``hidden_dim``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from pipelines.common.checks import non_empty, positive_int
from pipelines.data.shapes import check_counts
from pipelines.training.settings import TrainSettings
from samdetr.config import known_fields
from samdetr.engine.coco_eval import METRIC_NAMES

#: Distribution kinds of a space leaf: those that list values, and those that sample a range.
LISTED = ("grid", "choice")
RANGES = ("uniform", "loguniform", "randint")
#: Settings groups a space or an option may vary (the run's identity and storage are the sweep's).
VARIED_GROUPS = ("model", "loss", "optim", "data", "trainer")
#: Trainer fields a trial may not take from the space: the sweep sets them per trial.
FIXED_TRAINER_FIELDS = ("run_name", "storage_path", "ray_address")
#: Search algorithms: Tune's basic generator (grid + random sampling) or Optuna's TPE.
ALGORITHMS = ("basic", "optuna")
SCHEDULERS = ("asha", "fifo")


@dataclass(frozen=True)
class SchedulerSettings:
    """Early stopping. ``asha``: a trial is stopped at epoch ``grace_period``,
    ``grace_period * reduction_factor``, ... when its metric is below the best
    ``1 / reduction_factor`` of the trials that reached that epoch; ``fifo``: none stopped."""
    name: str = "asha"
    grace_period: int = 1
    reduction_factor: float = 2.0

    def __post_init__(self) -> None:
        if self.name not in SCHEDULERS:
            raise ValueError(f"sweep.scheduler.name must be one of {SCHEDULERS}, got {self.name!r}")
        if isinstance(self.grace_period, bool) or not isinstance(self.grace_period, int) \
                or self.grace_period < 1:
            raise ValueError(f"sweep.scheduler.grace_period must be an integer >= 1 (epochs), "
                             f"got {self.grace_period!r}")
        if not isinstance(self.reduction_factor, (int, float)) or isinstance(
                self.reduction_factor, bool) or not self.reduction_factor > 1:
            raise ValueError(f"sweep.scheduler.reduction_factor must be > 1, "
                             f"got {self.reduction_factor!r}")


@dataclass(frozen=True)
class SweepSettings:
    """A sweep: ``space`` and ``options`` (see the module), searched by ``algorithm``
    (``num_samples`` draws of the sampled settings per grid point, or trials in all for
    ``optuna``), ``max_concurrent_trials`` at once, each trial's driver holding ``trial_cpus``
    (its Ray Train workers ask for ``trainer.*`` on top). Trials are compared on the validation
    ``metric`` (a COCO metric, higher is better); the best becomes a new version of
    ``tracking.registered_model`` with the alias ``alias``. ``make_data``: ``{train: N,
    val: M}`` synthetic shapes generated into the configured shard folders when missing
    (None: the shards must exist). ``space`` and ``options`` come from ``conf/sweep/``."""
    name: str = "sweep"
    space: dict[str, Any] = field(default_factory=dict)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    algorithm: str = "basic"
    num_samples: int = 1
    max_concurrent_trials: int = 1
    trial_cpus: float = 1.0
    metric: str = "AP"
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    alias: str = "challenger"
    seed: int = 0  # of the search algorithm's draws
    make_data: dict[str, int] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.replace("-", "").replace(
                "_", "").isalnum():
            raise ValueError(f"sweep.name must be letters, digits, '-' or '_', got {self.name!r}")
        if not isinstance(self.scheduler, SchedulerSettings):
            raise TypeError("sweep.scheduler must be SchedulerSettings (from_dict builds it)")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"sweep.algorithm must be one of {ALGORITHMS}, got "
                             f"{self.algorithm!r}")
        for name in ("num_samples", "max_concurrent_trials"):
            positive_int(getattr(self, name), f"sweep.{name}")
        if isinstance(self.trial_cpus, bool) or not isinstance(self.trial_cpus, (int, float)) \
                or not self.trial_cpus > 0:
            raise ValueError(f"sweep.trial_cpus must be > 0 (Tune gives every trial's driver "
                             f"a share of a CPU), got {self.trial_cpus!r}")
        if self.metric not in METRIC_NAMES:
            raise ValueError(f"sweep.metric must be one of {list(METRIC_NAMES)}, got "
                             f"{self.metric!r}")
        non_empty(self.alias, "sweep.alias")
        _check_space(self.space, "sweep.space")
        _check_options(self.options)
        if not self.space and not self.options:
            raise ValueError("sweep.space and sweep.options are both empty: nothing to search "
                             "(pick a search space: sweep=m_smca, see conf/sweep/)")
        positive_int(self.seed, "sweep.seed", minimum=0)
        check_counts(self.make_data, "sweep.make_data")

    @classmethod
    def from_dict(cls, node: dict[str, Any]) -> SweepSettings:
        """From the plain ``sweep`` node of the composed config."""
        fields = known_fields(cls, node or {}, "sweep")
        scheduler = fields.get("scheduler") or {}
        if isinstance(scheduler, dict):
            fields["scheduler"] = SchedulerSettings(
                **known_fields(SchedulerSettings, scheduler, "sweep.scheduler"))
        return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_space(space: Any, where: str) -> None:
    if not isinstance(space, dict):
        raise ValueError(f"{where} must be a mapping of settings to distributions, got {space!r}")
    for key, node in space.items():
        path = f"{where}.{key}"
        if where == "sweep.space" and key not in VARIED_GROUPS:
            raise ValueError(f"{path}: a sweep varies the groups {VARIED_GROUPS}, not {key!r}")
        if not isinstance(node, dict) or not node:
            raise ValueError(f"{path} must be a distribution such as {{grid: [1, 2]}} or a "
                             f"mapping of settings, got {node!r}")
        kinds = set(node) & set(LISTED + RANGES)
        if kinds:
            _check_distribution(node, path)
        else:
            _check_space(node, path)


def _check_distribution(node: dict[str, Any], path: str) -> None:
    if len(node) != 1:
        raise ValueError(f"{path} must have exactly one of {LISTED + RANGES}, got {sorted(node)}")
    (kind, values), = node.items()
    if not isinstance(values, list) or not values:
        raise ValueError(f"{path}.{kind} must be a non-empty list, got {values!r}")
    if kind in LISTED:
        if len({repr(v) for v in values}) != len(values):
            raise ValueError(f"{path}.{kind} lists a value twice: {values}")
        return
    if len(values) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, float))
                               or not math.isfinite(v) for v in values) or values[0] >= values[1]:
        raise ValueError(f"{path}.{kind} must be [low, high] numbers with low < high, "
                         f"got {values}")
    if kind == "loguniform" and values[0] <= 0:
        raise ValueError(f"{path}.loguniform needs low > 0, got {values}")
    if kind == "randint" and not all(isinstance(v, int) for v in values):
        raise ValueError(f"{path}.randint needs integers [low, high), got {values}")


def _check_options(options: Any) -> None:
    if not isinstance(options, dict):
        raise ValueError(f"sweep.options must map a name to named bundles, got {options!r}")
    for name, bundles in options.items():
        if not str(name).replace("_", "").isalnum():
            raise ValueError(f"sweep.options: {name!r} must be letters, digits or '_'")
        if not isinstance(bundles, dict) or not bundles:
            raise ValueError(f"sweep.options.{name} must map labels to settings, e.g. "
                             "{off: {model: {smca: false}}}")
        for label, settings in bundles.items():
            if not isinstance(label, str):
                raise ValueError(f"sweep.options.{name}: the label {label!r} must be a string "
                                 "(quote YAML words such as \"off\" and \"on\")")
            if not isinstance(settings, dict) or set(settings) - set(VARIED_GROUPS):
                raise ValueError(f"sweep.options.{name}.{label} must map settings of "
                                 f"{VARIED_GROUPS}, got {settings!r}")


def leaves(space: dict[str, Any], prefix: str = "") -> dict[str, tuple[str, list[Any]]]:
    """``{"model.num_salient_points": ("grid", [1, 2])}``: the space's distributions by path."""
    out: dict[str, tuple[str, list[Any]]] = {}
    for key, node in space.items():
        path = f"{prefix}{key}"
        if set(node) & set(LISTED + RANGES):
            (kind, values), = node.items()
            out[path] = (kind, list(values))
        else:
            out.update(leaves(node, f"{path}."))
    return out


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    *groups, last = path.split(".")
    node = data
    for key in groups:
        node = node.setdefault(key, {})
    node[last] = value


def _merge(data: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            _merge(data[key], value)
        else:
            data[key] = value


def apply_params(base: dict[str, Any], sweep: SweepSettings,
                 params: dict[str, Any]) -> dict[str, Any]:
    """A copy of the plain settings ``base`` with a trial's ``params`` applied: ``{path: value}``
    of the space and ``{option name: label}`` of the options."""
    data = copy.deepcopy(base)
    for name, value in params.items():
        if name in sweep.options:
            _merge(data, copy.deepcopy(sweep.options[name][value]))
        else:
            _set(data, name, value)
    return data


def check_against(sweep: SweepSettings, base: TrainSettings) -> None:
    """Every listed value, range end and option of the sweep applied alone to ``base`` makes
    valid training settings (ValueError naming the one that does not)."""
    plain = base.to_dict()
    trials: list[tuple[str, dict[str, Any]]] = []
    for path, (kind, values) in leaves(sweep.space).items():
        group, *rest = path.split(".")
        if not rest:
            raise ValueError(f"sweep.space.{path} names a whole group; name a setting in it")
        if group == "trainer" and rest[0] in FIXED_TRAINER_FIELDS:
            raise ValueError(f"sweep.space.{path}: the sweep sets trainer.{rest[0]} per trial")
        node = plain
        for key in path.split("."):
            if not isinstance(node, dict) or key not in node:
                raise ValueError(f"sweep.space.{path} is not a training setting")
            node = node[key]
        trials += [(f"sweep.space.{path}.{kind}: {v!r}", {path: v}) for v in values]
    for name, bundles in sweep.options.items():
        trials += [(f"sweep.options.{name}.{label}", {name: label}) for label in bundles]
    for where, params in trials:
        try:
            TrainSettings.from_dict(apply_params(plain, sweep, params))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where} does not make valid settings: {err}") from err


def search_space(sweep: SweepSettings) -> dict[str, Any]:
    """Tune's ``param_space``: ``{path or option name: domain}``. Optuna cannot enumerate a
    grid, so there grids and options become categorical choices."""
    from ray import tune

    grid = tune.grid_search if sweep.algorithm == "basic" else tune.choice
    space: dict[str, Any] = {}
    for path, (kind, values) in leaves(sweep.space).items():
        if kind == "grid":
            space[path] = grid(values)
        elif kind == "choice":
            space[path] = tune.choice(values)
        else:
            space[path] = {"uniform": tune.uniform, "loguniform": tune.loguniform,
                           "randint": tune.randint}[kind](*values)
    for name, bundles in sweep.options.items():
        space[name] = grid(list(bundles))
    return space


def runs_root(storage_path: str, sweep_name: str) -> str:
    """Where the trials' Ray Train runs live: beside the Tune experiment, under the sweep."""
    return f"{storage_path.rstrip('/')}/{sweep_name}/runs"


def trial_settings(base: dict[str, Any], sweep: SweepSettings, params: dict[str, Any],
                   trial_id: str, parent_run_id: str | None) -> TrainSettings:
    """One trial's settings: ``base`` (resolved, plain) with ``params`` applied, its own run
    name (so a restarted trial resumes its Train run) and storage, its MLflow run nested under
    the sweep's, and no model registered or alias moved (the sweep registers the winner)."""
    data = apply_params(base, sweep, params)
    data["trainer"].update(run_name=f"{sweep.name}-{trial_id}",
                           storage_path=runs_root(base["trainer"]["storage_path"], sweep.name))
    data["tracking"].update(registered_model=None, alias=None, log_model=False,
                            parent_run_id=parent_run_id)
    return TrainSettings.from_dict(data)
