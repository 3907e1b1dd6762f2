"""The promotion gate's rules: its settings, the checks that refuse a comparison, and the
decision. No MLflow here; :mod:`pipelines.promote` runs the gate against the registry.

A challenger replaces the champion when it scores higher by more than ``margin`` on ``metric``
on a held-out shard set; with no champion yet it must reach ``threshold``. Both are scored by
the same code on the same shards, so the numbers compare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pipelines.common.checks import flag, non_empty
from pipelines.registry.evaluation_record import EXPERIMENT
from pipelines.registry.model_facts import ModelFacts
from pipelines.training.settings import REGISTERED_MODEL
from samdetr.engine.coco_eval import METRIC_NAMES


@dataclass(frozen=True)
class PromoteSettings:
    """``shards``: the held-out shard set both versions are scored on (not needed for a
    rollback). ``margin``: how much higher (absolute, metrics are fractions) the challenger
    must score than the champion. ``threshold``: the least score of a first champion.
    ``dry_run``: score (the evaluation runs are logged) and report; move no alias, set no
    version tag. ``tracking_uri``: the store of the registry, the models' files and the
    evaluation runs (None: $MLFLOW_TRACKING_URI, else ./mlflow.db); ``mlflow_experiment``: the
    MLflow experiment of the evaluation runs."""
    registered_model: str = REGISTERED_MODEL
    # The registered model whose @challenger is proposed, when it is not registered_model: on a
    # server where training may write only a candidates model (docs/registry.md), the proposed
    # version is first copied into registered_model and made its @challenger there.
    challenger_model: str | None = None
    shards: str | None = None
    metric: str = "AP"
    margin: float = 0.0
    threshold: float = 0.0
    rollback: bool = False
    dry_run: bool = False
    challenger_alias: str = "challenger"
    champion_alias: str = "champion"
    previous_alias: str = "previous"
    # A version whose checkpoint does not name its training data cannot be checked against the
    # evaluation set; such a version is refused unless this is true.
    allow_unknown_training_data: bool = False
    # Per-class guard (off: None): a challenger whose AP (AP50 when metric=AP50) on any class
    # with at least class_min_gt ground-truth boxes is lower than the champion's by more than
    # class_drop is rejected, whatever its overall score; the decision names the class.
    class_drop: float | None = None
    class_min_gt: int = 50
    batch_size: int | None = None  # images per predict call (None: 4)
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    mlflow_experiment: str = EXPERIMENT  # where the evaluation runs go

    def __post_init__(self) -> None:
        for name in ("registered_model", "challenger_alias", "champion_alias", "previous_alias",
                     "mlflow_experiment"):
            non_empty(getattr(self, name), name)
        if self.challenger_model is not None and (
                not isinstance(self.challenger_model, str) or not self.challenger_model.strip()
                or self.challenger_model == self.registered_model):
            raise ValueError("challenger_model must name another registered model than "
                             f"registered_model ({self.registered_model!r}), or be null; got "
                             f"{self.challenger_model!r}")
        aliases = (self.challenger_alias, self.champion_alias, self.previous_alias)
        if len(set(aliases)) != 3:
            raise ValueError(f"the three aliases must differ, got {aliases}")
        for name in ("rollback", "dry_run", "allow_unknown_training_data"):
            flag(getattr(self, name), name)
        if self.metric not in METRIC_NAMES:
            raise ValueError(f"metric must be one of {list(METRIC_NAMES)}, got {self.metric!r}")
        for name, low, high in (("margin", 0.0, 1.0), ("threshold", 0.0, 1.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    low <= value <= high):
                raise ValueError(f"{name} must be a number in [{low:g}, {high:g}] (metrics are "
                                 f"fractions: 0.01 is one AP point), got {value!r}")
        if not self.rollback and not (isinstance(self.shards, str) and self.shards):
            raise ValueError("shards must name the held-out shard set both versions are scored "
                             "on (shards=PATH); only rollback=true needs none")
        if self.class_drop is not None and (isinstance(self.class_drop, bool) or not isinstance(
                self.class_drop, (int, float)) or not 0.0 <= self.class_drop <= 1.0):
            raise ValueError(f"class_drop must be a number in [0, 1] (one class's AP may fall "
                             f"by this much) or null, got {self.class_drop!r}")
        if isinstance(self.class_min_gt, bool) or not isinstance(self.class_min_gt, int) or \
                self.class_min_gt < 1:
            raise ValueError(f"class_min_gt must be a positive integer, got {self.class_min_gt!r}")
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or not isinstance(
                self.batch_size, int) or self.batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")


class PromotionRefused(ValueError):
    """The gate cannot compare these versions on this data; no alias was moved."""


def decide(metric: str, challenger: float, champion: float | None, margin: float,
           threshold: float) -> tuple[bool, str]:
    """``(promote, reason)``: promote when the challenger beats the champion by more than
    ``margin`` or, with no champion, reaches ``threshold``. NaN never promotes."""
    if math.isnan(challenger):
        return False, f"the challenger's {metric} is NaN"
    if champion is None:
        if challenger >= threshold:
            return True, (f"no champion yet; challenger {metric} {challenger:.4f} >= threshold "
                          f"{threshold:.4f}")
        return False, (f"no champion yet; challenger {metric} {challenger:.4f} < threshold "
                       f"{threshold:.4f}")
    gain = challenger - champion if not math.isnan(champion) else math.inf
    verdict = gain > margin
    word = ">" if verdict else "<="
    return verdict, (f"challenger {metric} {challenger:.4f} vs champion {champion:.4f}: gain "
                     f"{gain:+.4f} {word} margin {margin:.4f}")


def class_key(metric: str) -> str:
    """The per-class number the class guard compares for the gate's ``metric``: AP50 for AP50,
    AP for everything else (COCO gives each class only those two)."""
    return "AP50" if metric == "AP50" else "AP"


def class_regressions(challenger: list[dict[str, Any]], champion: list[dict[str, Any]],
                      metric: str, max_drop: float, min_gt: int
                      ) -> list[tuple[str, int, float, float]]:
    """``(name, ground-truth boxes, challenger, champion)`` of the classes with at least
    ``min_gt`` boxes whose per-class number (:func:`class_key`) fell by more than ``max_drop``,
    the largest fall first. Rows are :meth:`samdetr.engine.class_metrics.ClassMetrics.as_row`."""
    key = class_key(metric)
    theirs = {row["category_id"]: row for row in champion}
    found = []
    for row in challenger:
        other = theirs.get(row["category_id"])
        if other is None or row["num_gt"] < min_gt:
            continue
        if other[key] - row[key] > max_drop:
            found.append((row["name"], row["num_gt"], row[key], other[key]))
    return sorted(found, key=lambda f: f[2] - f[3])


def class_reason(regressions: list[tuple[str, int, float, float]], metric: str,
                 max_drop: float) -> str:
    """The rejection of a challenger that fell on some classes, naming the worst."""
    name, boxes, ours, theirs = regressions[0]
    more = f" (and {len(regressions) - 1} more classes)" if len(regressions) > 1 else ""
    return (f"challenger {class_key(metric)} on class {name!r} ({boxes} boxes) "
            f"{ours:.4f} vs champion {theirs:.4f}: a drop of {theirs - ours:.4f} > class_drop "
            f"{max_drop:.4f}{more}")


def refusal(labels: dict[str, ModelFacts], eval_sha256: str,
            eval_categories: list[dict[str, Any]], allow_unknown: bool) -> str | None:
    """Why these versions (``label -> facts``, the challenger first) cannot be compared on the
    shard set with checksum ``eval_sha256`` and ``eval_categories``; ``None`` when they can."""
    wanted = tuple(sorted((int(c["id"]), str(c["name"])) for c in eval_categories))
    items = list(labels.items())
    if len(items) == 2 and items[0][1].categories != items[1][1].categories:
        return (f"{items[0][0]} and {items[1][0]} were trained for different category sets: "
                + _difference(items[0][1].categories, items[1][1].categories))
    for label, facts in items:
        if facts.train_sha256 == eval_sha256:
            return (f"{label} was trained on this shard set (manifest SHA-256 "
                    f"{eval_sha256[:12]}...): score it on held-out shards")
        if facts.train_sha256 is None and not allow_unknown:
            return (f"{label} does not name its training data (trained before checkpoints "
                    "recorded it), so it cannot be checked against the evaluation set; give "
                    "allow_unknown_training_data=true if you know the sets differ")
        if facts.categories != wanted:
            return f"{label} and the evaluation set differ in categories: " + _difference(
                facts.categories, wanted)
    return None


def _difference(a: tuple[tuple[int, str], ...], b: tuple[tuple[int, str], ...]) -> str:
    """The first few (id, name) pairs only one side has."""
    only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))

    def show(pairs: list[tuple[int, str]]) -> str:
        text = ", ".join(f"{i}:{n}" for i, n in pairs[:5])
        return text + (f" and {len(pairs) - 5} more" if len(pairs) > 5 else "") or "none"

    return f"only in the first: {show(only_a)}; only in the second: {show(only_b)}"
