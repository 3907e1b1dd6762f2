"""What a registered model version carries so it can be used and judged with nothing else at
hand: its config, category names, evaluation image size, the checksums of the shard sets it was
trained and validated on, and the training run it came from.

The facts are read from the model's own checkpoint (:func:`facts_of_checkpoint`), which holds
them all (training writes the data checksums and the MLflow run id into every checkpoint), and
are written as tags (prefix ``samdetr.``) on the logged model and on every registered version
(:func:`tag_version`). Promotion reads them back from the checkpoint of the version it scores
(:func:`facts_of_model`), so a version registered without tags is judged the same way.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from pipelines.registry.model_uri import parse_model_uri
from samdetr.checkpoint import read_checkpoint

PREFIX = "samdetr."
#: Where the pyfunc model keeps its slim checkpoint (the artifact ``checkpoint``).
MODEL_CHECKPOINT = os.path.join("artifacts", "checkpoint.pth")
#: MLflow refuses longer tag values; a longer config is left to the model's checkpoint.
MAX_TAG_CHARS = 5000


@dataclass(frozen=True)
class ModelFacts:
    """``categories``: ``((id, name), ...)`` sorted by id, the model's label space.
    ``eval_transform``: ``{"size": shorter side, "max_size": longer side cap}`` in pixels.
    ``train_sha256`` / ``val_sha256``: manifest checksums of the training and validation shard
    sets (``None`` when the checkpoint predates them). ``source_run_id``: the training run.
    ``config``: the detector config as a dict. ``finetuned_from``: the lineage of the
    pretrained model it started from (:meth:`samdetr.pretrained.PretrainedWeights.lineage`;
    None: trained from ImageNet weights or from scratch)."""
    categories: tuple[tuple[int, str], ...]
    eval_transform: dict[str, int]
    train_sha256: str | None
    val_sha256: str | None
    source_run_id: str | None
    config: dict[str, Any]
    finetuned_from: dict[str, Any] | None = None

    def category_names(self) -> list[str]:
        return [name for _, name in self.categories]

    def summary(self) -> str:
        """One line naming the architecture, e.g. ``resnet50 d256 M8 smca 300q 91c``."""
        m = self.config.get("model", {})
        parts = [str(m.get("backbone", {}).get("name", "?")), f"d{m.get('hidden_dim', '?')}"]
        if m.get("decoder", "sam") == "sam":
            parts.append(f"M{m.get('num_salient_points', '?')}")
        parts.append(f"smca(beta={m.get('smca_beta')})" if m.get("smca") else "no-smca")
        parts += [f"{m.get('num_queries', '?')}q", f"{m.get('num_classes', '?')}c"]
        return " ".join(parts)

    def tags(self) -> dict[str, str]:
        """The facts as MLflow tags (values are strings; lists and dicts as compact JSON)."""
        config = json.dumps(self.config, separators=(",", ":"), sort_keys=True)
        tags = {
            PREFIX + "categories": json.dumps(self.category_names(), separators=(",", ":")),
            PREFIX + "category_ids": ",".join(str(i) for i, _ in self.categories),
            PREFIX + "num_categories": str(len(self.categories)),
            PREFIX + "eval_size": f"{self.eval_transform.get('size')}/"
                                  f"{self.eval_transform.get('max_size')}",
            PREFIX + "model": self.summary(),
            PREFIX + "train_manifest_sha256": self.train_sha256 or "unknown",
            PREFIX + "val_manifest_sha256": self.val_sha256 or "unknown",
            PREFIX + "source_run_id": self.source_run_id or "unknown",
        }
        if len(config) <= MAX_TAG_CHARS:
            tags[PREFIX + "config"] = config
        if self.finetuned_from:
            origin = self.finetuned_from
            tags[PREFIX + "finetuned_from"] = str(origin.get("origin"))[:MAX_TAG_CHARS]
            tags[PREFIX + "finetuned_from_sha256"] = str(origin.get("sha256"))
        for key in ("categories", "category_ids"):  # COCO's 80 names fit; a huge set does not
            if len(tags[PREFIX + key]) > MAX_TAG_CHARS:
                tags[PREFIX + key] = tags[PREFIX + key][: MAX_TAG_CHARS - 3] + "..."
        return tags


def facts_of_checkpoint(path: str | os.PathLike[str]) -> ModelFacts:
    """The facts of a samdetr checkpoint file (a training checkpoint or a model's slim one)."""
    payload = read_checkpoint(path)
    data = payload.get("data") or {}
    categories = tuple(sorted((int(c["id"]), str(c["name"]))
                              for c in payload.get("categories") or []))
    return ModelFacts(
        categories=categories,
        eval_transform={k: int(v) for k, v in (payload.get("eval_transform") or {}).items()},
        train_sha256=data.get("train_manifest_sha256") or None,
        val_sha256=data.get("val_manifest_sha256") or None,
        source_run_id=payload.get("mlflow_run_id") or None,
        config=dict(payload["config"]),
        finetuned_from=dict(payload["init_from"]) if payload.get("init_from") else None,
    )


def facts_of_model(local_model: str | os.PathLike[str]) -> ModelFacts:
    """The facts of a downloaded pyfunc model of this project (its folder)."""
    path = os.path.join(os.fspath(local_model), MODEL_CHECKPOINT)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{local_model} holds no {MODEL_CHECKPOINT}: not a samdetr model, or its files are "
            "incomplete"
        )
    return facts_of_checkpoint(path)


def tag_version(client: Any, name: str, version: str | int, tags: dict[str, str]) -> None:
    """Set ``tags`` on version ``version`` of registered model ``name``."""
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)


def logged_model_facts(client: Any, model_uri: str) -> dict[str, str]:
    """The ``samdetr.`` tags of a logged model given as ``models:/<model id>`` (what
    :func:`pipelines.registry.mlflow_model.log_detector_model` set); empty for other URIs."""
    parsed = parse_model_uri(model_uri)
    if parsed is None or parsed.kind != "logged":  # a registered version or a run's model
        return {}
    model = client.get_logged_model(parsed.model_id)
    return {k: v for k, v in (model.tags or {}).items() if k.startswith(PREFIX)}
