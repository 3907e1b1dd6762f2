"""MLflow model URIs, parsed in one place: ``models:/NAME/VERSION``, ``models:/NAME@ALIAS``,
``models:/<logged model id>`` (MLflow 3's own URI of a logged model) and ``runs:/RUN_ID/PATH``.
Anything else (a folder, ``s3://...``) is not a model URI: :func:`parse_model_uri` gives None."""

from __future__ import annotations

from dataclasses import dataclass

MODELS = "models:/"
RUNS = "runs:/"


@dataclass(frozen=True)
class ModelUri:
    """One parsed URI. ``kind``: ``version`` (``name``, ``version``), ``alias`` (``name``,
    ``alias``), ``logged`` (``model_id``) or ``run`` (``run_id``, ``path``)."""
    kind: str
    name: str | None = None
    version: str | None = None
    alias: str | None = None
    model_id: str | None = None
    run_id: str | None = None
    path: str | None = None

    @property
    def registered(self) -> bool:
        """A version of a registered model (by number or alias)."""
        return self.kind in ("version", "alias")


def is_model_uri(uri: str) -> bool:
    """``uri`` names an MLflow model (``models:/...`` or ``runs:/...``)."""
    return uri.startswith((MODELS, RUNS))


def check_model_source(model_uri: str | None, checkpoint: str | None) -> None:
    """ValueError unless exactly one of a command's ``model_uri`` and ``checkpoint`` settings is
    given, the first a model URI."""
    if (model_uri is None) == (checkpoint is None):
        raise ValueError("give exactly one of model_uri=URI (models:/NAME@ALIAS, "
                         "models:/NAME/VERSION, runs:/ID/model) or checkpoint=PATH")
    if model_uri is not None and not is_model_uri(str(model_uri)):
        raise ValueError(f"model_uri must start with one of ('models:/', 'runs:/'), got "
                         f"{model_uri!r} (a checkpoint goes in checkpoint=PATH)")


def parse_model_uri(uri: str) -> ModelUri | None:
    """The parts of ``uri``; None when it is not a model URI. A malformed one (``models:/``,
    ``models:/a/b/c``, ``runs:/ID`` without a path) raises ``ValueError`` naming the forms."""
    if uri.startswith(RUNS):
        run_id, _, path = uri[len(RUNS):].strip("/").partition("/")
        if not run_id or not path:
            raise ValueError(f"{uri!r}: a run's model is runs:/RUN_ID/PATH (e.g. runs:/abc/model)")
        return ModelUri("run", run_id=run_id, path=path)
    if not uri.startswith(MODELS):
        return None
    rest = uri[len(MODELS):].rstrip("/")
    if "@" in rest:
        name, alias = rest.rsplit("@", 1)
        if name and alias and "/" not in name:
            return ModelUri("alias", name=name, alias=alias)
    elif rest.count("/") == 1:
        name, version = rest.split("/")
        if name and version:
            return ModelUri("version", name=name, version=version)
    elif rest and "/" not in rest:
        return ModelUri("logged", model_id=rest)
    raise ValueError(f"{uri!r} is not a model URI: use models:/NAME/VERSION, models:/NAME@ALIAS, "
                     "models:/<logged model id> or runs:/RUN_ID/PATH")


def version_uri(name: str, version: str | int) -> str:
    """``models:/NAME/VERSION``."""
    return f"{MODELS}{name}/{version}"
