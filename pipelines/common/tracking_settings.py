"""The ``tracking`` settings (conf/tracking/*.yaml) and which MLflow store a command uses.

Every command resolves its store the same way (:func:`store_uri`): the setting, else
``$MLFLOW_TRACKING_URI``, else ``./mlflow.db``, a relative SQLite path made absolute once on the
driver (Ray workers run in other folders).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pipelines.common.checks import flag, non_empty, non_negative
from samdetr.data.storage import absolute


def store_uri(setting: str | None) -> str:
    """The store of a command whose ``tracking_uri`` setting is ``setting``."""
    uri = setting or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + absolute(uri[len(prefix) :])
    return uri


@dataclass(frozen=True)
class TrackingSettings:
    """MLflow: where to log, and what to do with the final model."""
    enabled: bool = True
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    experiment: str = "samdetr"
    # Where a NEW experiment keeps artifacts (None: the server's / MLflow's default, which for
    # SQLite is ./mlruns in the driver's cwd). E.g. s3://bucket/mlflow or an absolute path.
    artifact_location: str | None = None
    registered_model: str | None = None  # register the best model under this name
    alias: str | None = None  # ... and point this alias (e.g. "candidate") at the new version
    log_model: bool = True
    # Nest this run's MLflow run under that run (a study's or sweep's parent); None: top level.
    parent_run_id: str | None = None
    # While the store fails, rank 0 keeps training, keeps the metrics and tries again this often.
    retry_after_s: float = 30.0
    # How long the end of an epoch (and of the run) waits for queued metrics to reach the store.
    flush_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        for name in ("enabled", "log_model"):
            flag(getattr(self, name), f"tracking.{name}")
        non_empty(self.experiment, "tracking.experiment")
        if self.alias is not None and self.registered_model is None:
            raise ValueError("tracking.alias needs tracking.registered_model")
        if self.registered_model is not None and not self.log_model:
            raise ValueError("tracking.registered_model needs tracking.log_model=true")
        for name in ("retry_after_s", "flush_timeout_s"):
            non_negative(getattr(self, name), f"tracking.{name}")

    def resolved_uri(self) -> str:
        """The store in use (:func:`store_uri` of the setting)."""
        return store_uri(self.tracking_uri)
