"""The pretrained detector a fine-tuning run starts from (``init.weights``): read once, on the
driver; fitted to the run's model there, so a file of another architecture stops the run before
any worker starts; then shared through Ray's object store, so workers on GPU nodes need neither
the file nor access to the registry. The run records what it was fine-tuned from (the MLflow
run's ``init/`` artifacts, and every checkpoint, hence the registered model)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import Any

from pipelines.common.checkpoints import checkpoint_file, local_checkpoint
from pipelines.common.tracking import store_client
from pipelines.registry.model_uri import is_model_uri
from pipelines.registry.register import fetched_checkpoint
from pipelines.training.settings import TrainSettings
from samdetr.builder import build_model
from samdetr.data.storage import is_uri, read_file
from samdetr.engine.optim import build_optimizer
from samdetr.engine.parameter_groups import freeze_parameters
from samdetr.pretrained import PretrainedWeights, TransferReport, read_pretrained, transfer_weights

#: Where the run's MLflow artifacts say what it started from.
REPORT_ARTIFACT = "init/transfer.json"


@contextlib.contextmanager
def _local_file(weights: str) -> Iterator[str]:
    """A local checkpoint file for ``weights``: a file or a Ray Train checkpoint folder, local
    or at a URI (a ``.pt``/``.pth`` object copied as it is; a folder through Ray's API)."""
    if not is_uri(weights):
        yield checkpoint_file(os.path.expanduser(weights))
    elif weights.rstrip("/").endswith((".pt", ".pth")):
        with tempfile.TemporaryDirectory(prefix="samdetr-init-") as folder:
            path = os.path.join(folder, os.path.basename(weights.rstrip("/")))
            with open(path, "wb") as out:
                out.write(read_file(weights))
            yield path
    else:
        with local_checkpoint(weights) as path:
            yield path


def fetch_pretrained(weights: str, tracking_uri: str) -> PretrainedWeights:
    """The weights ``init.weights`` names (see :class:`pipelines.training.settings.InitSettings`);
    a registry model is read from the store ``tracking_uri``. ValueError, saying what was
    expected, when there is nothing readable there."""
    try:
        if is_model_uri(weights):
            with fetched_checkpoint(tracking_uri, weights) as path:
                return read_pretrained(path, origin=weights)
        with _local_file(weights) as path:
            return read_pretrained(path, origin=weights)
    except ValueError as err:
        raise ValueError(f"init.weights={weights}: {err}") from err
    except (OSError, RuntimeError) as err:  # a missing file, an unreachable store or bucket
        raise ValueError(f"init.weights={weights} could not be read ({type(err).__name__}: "
                         f"{err}); give an official SAM-DETR checkpoint, a samdetr checkpoint "
                         "(file or Ray Train checkpoint folder, local or s3://...), or a "
                         "registered model (models:/NAME@ALIAS)") from err


def start_model(settings: TrainSettings, pretrained: PretrainedWeights | None,
                backbone_state: dict[str, Any] | None = None, fresh: bool = True
                ) -> tuple[Any, TransferReport | None]:
    """The run's model before training: built, ``optim.freeze`` applied, and for a ``fresh``
    start (not one a checkpoint will overwrite) its starting weights: ``pretrained``'s tensors
    if given, else the ImageNet backbone (``backbone_state`` as the driver read it, else read
    here). ``(model, transfer report or None)``; ValueError for a file that does not fit or a
    part that names nothing."""
    imagenet = fresh and pretrained is None and \
        settings.detector.model.backbone.weights is not None
    model = build_model(settings.detector, load_pretrained=imagenet, backbone_state=backbone_state)
    report = None
    if fresh and pretrained is not None:
        report = transfer_weights(model, settings.detector, pretrained, settings.init.min_loaded)
    freeze_parameters(model, settings.optim.freeze)
    return model, report


def check_start(settings: TrainSettings, pretrained: PretrainedWeights | None) -> dict[str, Any]:
    """What a fresh start will do, checked on the driver before any worker starts: the transfer
    report and lineage (``{}`` without ``init.weights``), and every part that ``optim.freeze``
    and ``optim.lr_groups`` name found in the model."""
    if pretrained is None and not settings.optim.freeze and not settings.optim.lr_groups:
        return {}
    # Only the parts matter here: no ImageNet weights read a second time.
    model, report = start_model(settings, pretrained, fresh=pretrained is not None)
    build_optimizer(model, settings.optim)
    if report is None:
        return {}
    return {"lineage": pretrained.lineage(), "transfer": report.as_dict(),
            "counts": report.counts(), "lines": report.lines()}


def log_start(uri: str, run_id: str, start: dict[str, Any]) -> None:
    """The transfer report and lineage as the run's ``init/transfer.json`` artifact, and its
    counts as ``init.*`` params."""
    client = store_client(uri)
    client.log_dict(run_id, {"lineage": start["lineage"], **start["transfer"]}, REPORT_ARTIFACT)
    for key, value in start["counts"].items():
        client.log_param(run_id, f"init.{key}", value)
