"""The promotion workflow (``python -m pipelines.promote`` is its command line, and its docstring
the usage): download and check the challenger and the champion, score both on the same shards,
apply the gate's decision (:mod:`pipelines.promotion.gate`) to the aliases and tag the reasons."""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

from pipelines.common.tracking import quiet_mlflow, store_client
from pipelines.common.tracking_settings import store_uri
from pipelines.inference.evaluate import score_mlflow_model
from pipelines.promotion.gate import (
    PromoteSettings,
    PromotionRefused,
    class_reason,
    class_regressions,
    decide,
    refusal,
)
from pipelines.registry.evaluation_record import Scored, log_evaluation, model_id_of, tag_evaluation
from pipelines.registry.model_facts import ModelFacts, facts_of_model
from pipelines.registry.model_uri import version_uri
from pipelines.registry.register import download_model

PROMO = "promotion."
CHAMP = "champion."


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _say(message: str) -> None:
    print(f"[promote] {message}", flush=True)


def aliased(client: Any, name: str, alias: str) -> Any | None:
    """The version of ``name`` with ``alias``, or ``None``; ValueError if ``name`` is unknown."""
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException as err:
        raise ValueError(f"the registry has no model named {name!r} ({err.error_code})") from err
    if alias not in model.aliases:
        return None
    return client.get_model_version(name, model.aliases[alias])


def run_promote(config: PromoteSettings) -> dict[str, Any]:
    """Score, decide, move the aliases; returns the decision (``decision``, ``reason``, the
    versions and their metrics). Raises :class:`PromotionRefused` when the gate cannot judge."""
    from samdetr.engine.evaluation import manifest_summary

    uri = store_uri(config.tracking_uri)
    client = store_client(uri)
    if config.rollback:
        return run_rollback(client, config)
    name = config.registered_model
    # A dry run moves nothing: it scores the proposed version where it is.
    source = config.challenger_model if config.challenger_model and config.dry_run else name
    if config.challenger_model and not config.dry_run:
        propose(client, config)
    challenger = aliased(client, source, config.challenger_alias)
    if challenger is None:
        raise ValueError(f"no version of {source!r} has the alias {config.challenger_alias!r}: "
                         "register one first (pipelines.train tracking.alias=challenger, or a "
                         "sweep)")
    champion = aliased(client, name, config.champion_alias)
    if champion is not None and champion.version == challenger.version:
        _say(f"{name} v{challenger.version} is already {config.champion_alias}: nothing to do")
        return {"decision": "unchanged", "champion": challenger.version}
    versions = {"challenger": challenger, **({"champion": champion} if champion else {})}
    data = manifest_summary(config.shards)
    with tempfile.TemporaryDirectory(prefix="samdetr-promote-") as folder:
        local = {role: _download(v, os.path.join(folder, role), uri, config, client,
                                 challenger)
                 for role, v in versions.items()}
        facts = {role: _facts(path, versions[role], config, client, challenger)
                 for role, path in local.items()}
        labels = {f"{role} v{versions[role].version}": f for role, f in facts.items()}
        why = refusal(labels, data["manifest_sha256"], data["categories"],
                      config.allow_unknown_training_data)
        if why:
            raise _refuse(client, config, challenger, why)
        _warn_selected_on(facts, versions, data["manifest_sha256"])
        results = {role: _score(path, versions[role], config, data["manifest_sha256"])
                   for role, path in local.items()}
    scored = {role: result[0] for role, result in results.items()}
    classes = {role: result[1] for role, result in results.items()}
    runs = {role: log_evaluation(uri, config.mlflow_experiment, s, "promotion")
            for role, s in scored.items()}
    if not config.dry_run:
        for role, s in scored.items():
            tag_evaluation(client, s, runs[role])
    return _decide_and_apply(client, config, scored, runs, classes)


def propose(client: Any, config: PromoteSettings) -> None:
    """Copy ``challenger_model``'s @challenger into ``registered_model`` (once per version: a
    copy made before is reused) and make the copy ``registered_model``'s @challenger, so that
    every alias and tag the gate writes is on the model only the promoting user may write."""
    source, name = config.challenger_model, config.registered_model
    candidate = aliased(client, source, config.challenger_alias)
    if candidate is None:
        raise ValueError(f"no version of {source!r} has the alias {config.challenger_alias!r}: "
                         "register one first (pipelines.train tracking.alias=challenger, or a "
                         "sweep)")
    origin = version_uri(source, candidate.version)
    copy = _copy_of(client, name, origin)
    if copy is None:
        copy = client.copy_model_version(origin, name)
        _say(f"copied {source} v{candidate.version} into {name} as v{copy.version}")
    client.set_registered_model_alias(name, config.challenger_alias, copy.version)


def _copy_of(client: Any, name: str, origin: str) -> Any | None:
    """The version of ``name`` copied from ``origin`` (``models:/SOURCE/VERSION``), if any."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    return next((v for v in versions if v.source == origin), None)


def _download(version: Any, folder: str, uri: str, config: PromoteSettings, client: Any,
              challenger: Any) -> str:
    """The version's files from the store ``uri`` in ``folder``; a refusal if they cannot be
    read."""
    try:
        with quiet_mlflow():
            return download_model(uri, version_uri(version.name, version.version), folder)
    except Exception as err:  # noqa: BLE001 - missing files show up as many kinds of error
        raise _refuse(client, config, challenger, f"the files of {version.name} "
                      f"v{version.version} cannot be read ({type(err).__name__}: "
                      f"{str(err)[:300]})") from err


def _facts(path: str, version: Any, config: PromoteSettings, client: Any,
           challenger: Any) -> ModelFacts:
    try:
        return facts_of_model(path)
    except (OSError, ValueError) as err:
        raise _refuse(client, config, challenger, f"{version.name} v{version.version} is "
                      f"incomplete or not a samdetr model ({err})") from err


def _refuse(client: Any, config: PromoteSettings, challenger: Any,
            why: str) -> PromotionRefused:
    """Record the refusal on the challenger (unless a dry run); the error for the caller to
    raise."""
    if not config.dry_run:
        for key, value in {"decision": "refused", "reason": why, "time": _now()}.items():
            client.set_model_version_tag(challenger.name, challenger.version, PROMO + key, value)
    return PromotionRefused(f"refused, no alias moved: {why}")


def _warn_selected_on(facts: dict[str, ModelFacts], versions: dict[str, Any],
                      sha256: str) -> None:
    for role, f in facts.items():
        if f.val_sha256 == sha256:
            _say(f"note: {role} v{versions[role].version} chose its best epoch on this shard "
                 "set, so its score here is optimistic; a set neither was selected on is fairer")


def _score(path: str, version: Any, config: PromoteSettings, sha256: str
           ) -> tuple[Scored, list[dict[str, Any]]]:
    """The version's 12 metrics, and each class's numbers from the same evaluation."""
    _say(f"scoring {version.name} v{version.version} on {config.shards}")
    evaluator = score_mlflow_model(path, config.shards, config.batch_size,
                                   f"{version.name} v{version.version}")
    scored = Scored(version_uri(version.name, version.version), evaluator.summarize(),
                    config.shards, sha256, version.name, str(version.version),
                    model_id_of(version))
    return scored, [c.as_row() for c in evaluator.per_class()]


def _decide_and_apply(client: Any, config: PromoteSettings, scored: dict[str, Scored],
                      runs: dict[str, str], classes: dict[str, list[dict[str, Any]]]
                      ) -> dict[str, Any]:
    metric = config.metric
    challenger, champion = scored["challenger"], scored.get("champion")
    promote, reason = decide(metric, challenger.metrics[metric],
                             champion.metrics[metric] if champion else None,
                             config.margin, config.threshold)
    if champion is not None and config.class_drop is not None:
        fallen = class_regressions(classes["challenger"], classes["champion"], metric,
                                   config.class_drop, config.class_min_gt)
        if fallen:
            promote, reason = False, class_reason(fallen, metric, config.class_drop)
    decision = "promoted" if promote else "rejected"
    out = {"decision": decision, "reason": reason, "metric": metric,
           "challenger": {"version": challenger.version, **challenger.metrics},
           "champion": ({"version": champion.version, **champion.metrics} if champion else None),
           "evaluation_runs": runs}
    if config.dry_run:
        out["decision"] = f"{decision} (dry run: nothing moved)"
        return out
    tags = {"decision": decision, "reason": reason, "time": _now(), "metric": metric,
            "margin": f"{config.margin:g}", "threshold": f"{config.threshold:g}",
            "class_drop": "off" if config.class_drop is None else
            f"{config.class_drop:g} (classes with >= {config.class_min_gt} boxes)",
            "eval_manifest_sha256": challenger.shards_sha256,
            "challenger_version": challenger.version,
            "champion_version": champion.version if champion else "none"}
    for role, s in scored.items():
        tags.update({f"{role}.{k}": f"{v:.6g}" for k, v in s.metrics.items()})
        tags[f"{role}.eval_run_id"] = runs[role]
    for s in scored.values():
        for key, value in tags.items():
            client.set_model_version_tag(s.name, s.version, PROMO + key, value)
    if promote:
        _crown(client, config, challenger.version, champion.version if champion else None,
               f"promoted: {reason}")
    return out


def _crown(client: Any, config: PromoteSettings, version: str, replaced: str | None,
           reason: str) -> None:
    """Point ``champion`` at ``version`` and ``previous`` at ``replaced`` (if any), with the
    tags that say since when and why, on the versions and on the registered model."""
    name, now = config.registered_model, _now()
    if replaced is not None:
        client.set_registered_model_alias(name, config.previous_alias, replaced)
        client.set_model_version_tag(name, replaced, CHAMP + "until", now)
    client.set_registered_model_alias(name, config.champion_alias, version)
    for key, value in {"since": now, "reason": reason,
                       "previous_version": replaced or "none"}.items():
        client.set_model_version_tag(name, version, CHAMP + key, value)
    for key, value in {"version": version, "since": now, "reason": reason}.items():
        client.set_registered_model_tag(name, CHAMP + key, value)
    _say(f"{name} v{version} is now @{config.champion_alias}"
         + (f"; v{replaced} is @{config.previous_alias}" if replaced else ""))


def run_rollback(client: Any, config: PromoteSettings) -> dict[str, Any]:
    """Move ``champion`` back to the ``previous`` version; ``previous`` then moves to the one
    before it (its ``champion.previous_version`` tag), so rollbacks walk back in history. The
    demoted version loses the ``challenger`` alias if it held it (no re-promotion by accident)."""
    name = config.registered_model
    current = aliased(client, name, config.champion_alias)
    before = aliased(client, name, config.previous_alias)
    if current is None or before is None:
        missing = config.champion_alias if current is None else config.previous_alias
        raise PromotionRefused(f"refused, no alias moved: {name!r} has no @{missing} version, "
                               "so there is nothing to roll back to")
    if config.dry_run:
        return {"decision": f"rollback to v{before.version} (dry run: nothing moved)"}
    earlier = before.tags.get(CHAMP + "previous_version", "none")
    reason = f"rollback from v{current.version}"
    client.set_registered_model_alias(name, config.champion_alias, before.version)
    if earlier not in ("none", "", before.version, current.version) and _exists(
            client, name, earlier):
        client.set_registered_model_alias(name, config.previous_alias, earlier)
    else:
        client.delete_registered_model_alias(name, config.previous_alias)
    model = client.get_registered_model(name)
    if model.aliases.get(config.challenger_alias) == current.version:
        client.delete_registered_model_alias(name, config.challenger_alias)
    now = _now()
    for key, value in {"decision": "rolled back", "reason": f"rolled back to v{before.version}",
                       "time": now}.items():
        client.set_model_version_tag(name, current.version, PROMO + key, value)
    client.set_model_version_tag(name, current.version, CHAMP + "until", now)
    for key, value in {"since": now, "reason": reason}.items():
        client.set_model_version_tag(name, before.version, CHAMP + key, value)
    for key, value in {"version": before.version, "since": now, "reason": reason}.items():
        client.set_registered_model_tag(name, CHAMP + key, value)
    _say(f"{name} v{before.version} is @{config.champion_alias} again (v{current.version} "
         "demoted)")
    return {"decision": "rolled back", "champion": before.version, "demoted": current.version}


def _exists(client: Any, name: str, version: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_model_version(name, version)
    except MlflowException:
        return False
    return True


def format_decision(out: dict[str, Any]) -> str:
    """The console summary: each scored version's metric, then the decision and reason."""
    lines = []
    metric = out.get("metric")
    for role in ("challenger", "champion"):
        entry = out.get(role)
        if isinstance(entry, dict) and metric:
            lines.append(f"  {role:<10} v{entry['version']:<4} {metric} {entry[metric]:.4f}  "
                         f"AP50 {entry.get('AP50', float('nan')):.4f}")
    lines.append(f"decision: {out['decision']}" + (f" ({out['reason']})" if out.get("reason")
                                                    else ""))
    return "\n".join(lines)
