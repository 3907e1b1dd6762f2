"""Typed settings of a training run: Hydra's plain dict -> validated dataclasses, once.

The same dict (``TrainSettings.to_dict()``) travels into the Ray Train workers, and the
checkpoints carry it, so a run is fully described by what was logged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipelines.common.checks import flag, non_empty, non_negative, positive_int
from pipelines.common.tracking_settings import TrackingSettings
from pipelines.data.selection import SELECTION_KEYS
from pipelines.data.sources import FORMATS
from pipelines.training.backbone_weights import absolute_weights
from samdetr.config import DetectorConfig, known_fields
from samdetr.data.storage import absolute, is_uri
from samdetr.engine.activation_checkpointing import check_parts
from samdetr.engine.coco_eval import METRIC_NAMES
from samdetr.engine.ema import EmaConfig
from samdetr.engine.optim import OptimConfig

#: Keys of a ``data`` config group (conf/data/*.yaml) that only preprocessing reads: the
#: format and what each format reads, the class map and the split (one list, theirs).
SOURCE_KEYS = ("format", *sorted({key for keys in FORMATS.values() for key in keys}),
               *SELECTION_KEYS)


def _without_source(data: Any) -> Any:
    """The ``data`` node without the preprocessing inputs the same config group carries."""
    if not isinstance(data, dict):
        return data
    return {k: v for k, v in data.items() if k not in SOURCE_KEYS}


@dataclass(frozen=True)
class DataSettings:
    """Where the shards are and how batches are made (batch sizes are per worker)."""
    name: str
    train_shards: str
    val_shards: str
    batch_size: int = 4
    eval_batch_size: int = 4
    train_transform: dict[str, Any] = field(default_factory=dict)  # train_transforms kwargs
    eval_transform: dict[str, Any] = field(default_factory=lambda: {"size": 800, "max_size": 1333})
    shuffle_buffer: int = 64  # rows shuffled locally in each worker (0: off)
    # Rows per Ray Data block: blocks are dealt to the workers whole, so the workers' shares of
    # an epoch end at most this many images apart (smaller: finer balance, more tasks).
    rows_per_block: int = 16
    # Processes decoding validation images beside each training worker (0: the worker itself
    # decodes, and its device idles meanwhile); kept alive from one epoch to the next.
    eval_loader_workers: int = 2

    def __post_init__(self) -> None:
        for name in ("name", "train_shards", "val_shards"):
            non_empty(getattr(self, name), f"data.{name}")
        positive_int(self.batch_size, "data.batch_size")
        positive_int(self.eval_batch_size, "data.eval_batch_size")
        positive_int(self.shuffle_buffer, "data.shuffle_buffer", 0)
        positive_int(self.rows_per_block, "data.rows_per_block")
        positive_int(self.eval_loader_workers, "data.eval_loader_workers", 0)
        allowed = {"scales", "max_size", "crop_sizes", "crop_range"}
        if not isinstance(self.train_transform, dict) or set(self.train_transform) - allowed:
            raise ValueError(f"data.train_transform takes {sorted(allowed)}, "
                             f"got {self.train_transform!r}")
        if not isinstance(self.eval_transform, dict) or set(self.eval_transform) - {
            "size", "max_size"
        }:
            raise ValueError(f"data.eval_transform takes size and max_size, "
                             f"got {self.eval_transform!r}")


#: What ``trainer.ema_weights`` may say.
EMA_WEIGHTS = ("better", "ema", "raw")


@dataclass(frozen=True)
class TrainerSettings:
    """The Ray Train side: workers, devices, epochs, checkpoints, fault tolerance."""
    run_name: str
    storage_path: str = "outputs/ray"  # local folder, or shared storage (s3://, NFS) on clusters
    epochs: int = 50
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0  # only with use_gpu
    bf16: bool = False  # bfloat16 autocast (GPU only)
    # float16 autocast with loss scaling (GPU only): for GPUs without bfloat16 (V100, T4); a
    # step whose gradients overflow is skipped, and each epoch logs how many were.
    fp16: bool = False
    seed: int = 42  # each worker seeds with seed + rank (+ epoch), as the official code
    max_failures: int = 3  # worker-group restarts from the last checkpoint
    # The validation metric that picks the best checkpoint (kept beside the latest, logged as
    # the run's model); a sweep sets it to the metric it compares trials on.
    checkpoint_metric: str = "AP"
    # Stop once checkpoint_metric has not improved by more than early_stop_min_delta for this
    # many epochs (samdetr.engine.early_stopping); 0: train every epoch.
    early_stop_patience: int = 0
    early_stop_min_delta: float = 0.0
    # A moving average of the weights (samdetr.engine.ema), evaluated every epoch beside
    # them: ema_decay 0 is off (0.9997-0.9999 is usual), ema_warmup_steps its warm-up.
    # ema_weights: which weights each checkpoint's model is (the registered model, prediction,
    # export) - "better" (the one scoring higher on checkpoint_metric that epoch), "ema", "raw".
    ema_decay: float = 0.0
    ema_warmup_steps: int = 2000
    ema_weights: str = "better"
    # Parts whose activations are recomputed in the backward pass instead of kept, for memory
    # (samdetr.engine.activation_checkpointing): any of backbone, encoder, decoder.
    activation_checkpointing: tuple[str, ...] = ()
    # Batches per optimiser step on each worker (gradient accumulation): a step updates as one
    # batch this many times as large would, e.g. an 8-GPU recipe's global batch on 2 GPUs.
    accumulate: int = 1
    # The global batch (num_workers x data.batch_size x accumulate) the recipe's learning rates
    # are for:
    # a run whose workers and batch size make another is refused. A recipe sets it; a run that
    # changes it on purpose says so by setting it too (and scales optim.lr itself). None: any.
    global_batch: int | None = None
    log_every: int = 10  # steps between per-step metrics
    num_pictures: int = 4  # validation images drawn with predictions each epoch
    ray_address: str | None = None  # None: embedded local Ray, or RAY_ADDRESS
    # Extra Ray resources each worker asks for (custom node labels, accelerator types), e.g.
    # {"accelerator_type:H100": 0.001}; CPU and GPU come from the fields above.
    worker_resources: dict[str, float] | None = None
    # Resuming refuses a config that differs from the run's stored one in anything but the
    # epoch count, paths, logging and placement; true accepts the differences (and logs them).
    allow_config_change: bool = False
    # Fault injection for tests and drills: rank 0 raises once, after epoch N is reported,
    # in an attempt that did not start from a checkpoint.
    fail_after_epoch: int | None = None
    # Console: false shows the project's lines, a progress bar per epoch and Ray's warnings
    # and errors; true brings back Ray's own INFO logs and progress output
    # (pipelines.common.console).
    verbose: bool = False

    def __post_init__(self) -> None:
        name = self.run_name
        if not isinstance(name, str) or not name or not name.replace("-", "").replace(
            "_", ""
        ).replace(".", "").isalnum():
            raise ValueError(f"trainer.run_name must be letters, digits, '-', '_' or '.', "
                             f"got {name!r}")
        if not isinstance(self.storage_path, str) or not self.storage_path:
            raise ValueError("trainer.storage_path must be a non-empty path or URI")
        positive_int(self.epochs, "trainer.epochs")
        positive_int(self.accumulate, "trainer.accumulate")
        object.__setattr__(self, "activation_checkpointing", check_parts(
            self.activation_checkpointing, "trainer.activation_checkpointing"))
        try:
            self.ema_config  # noqa: B018 - validates
        except ValueError as err:  # "decay must be ..." -> "trainer.ema_decay must be ..."
            raise ValueError(f"trainer.ema_{err}") from None
        if self.ema_weights not in EMA_WEIGHTS:
            raise ValueError(f"trainer.ema_weights must be one of {list(EMA_WEIGHTS)}, "
                             f"got {self.ema_weights!r}")
        positive_int(self.num_workers, "trainer.num_workers")
        positive_int(self.max_failures, "trainer.max_failures", 0)
        positive_int(self.log_every, "trainer.log_every")
        positive_int(self.num_pictures, "trainer.num_pictures", 0)
        positive_int(self.seed, "trainer.seed", 0)
        positive_int(self.early_stop_patience, "trainer.early_stop_patience", 0)
        non_negative(self.early_stop_min_delta, "trainer.early_stop_min_delta")
        if self.checkpoint_metric not in METRIC_NAMES:
            raise ValueError(f"trainer.checkpoint_metric must be one of {list(METRIC_NAMES)}, "
                             f"got {self.checkpoint_metric!r}")
        for name in ("use_gpu", "bf16", "fp16", "allow_config_change", "verbose"):
            flag(getattr(self, name), f"trainer.{name}")
        for name in ("cpus_per_worker", "gpus_per_worker"):
            non_negative(getattr(self, name), f"trainer.{name}")
        if not isinstance(self.worker_resources, (dict, type(None))):
            raise ValueError("trainer.worker_resources must be a mapping of resource -> amount")
        for key, value in (self.worker_resources or {}).items():
            if key in ("CPU", "GPU", "memory"):
                raise ValueError(f"trainer.worker_resources: set {key} through cpus_per_worker / "
                                 "gpus_per_worker, not here")
            non_negative(value, f"trainer.worker_resources.{key}")
        if self.bf16 and not self.use_gpu:
            raise ValueError("trainer.bf16 needs use_gpu=true (bf16 autocast is for GPUs)")
        if self.fp16 and not self.use_gpu:
            raise ValueError("trainer.fp16 needs use_gpu=true (fp16 autocast is for GPUs)")
        if self.fp16 and self.bf16:
            raise ValueError("trainer.fp16 and trainer.bf16 are both set: choose one")
        if self.use_gpu and self.gpus_per_worker <= 0:
            raise ValueError("trainer.use_gpu needs gpus_per_worker > 0")
        if self.fail_after_epoch is not None:
            positive_int(self.fail_after_epoch, "trainer.fail_after_epoch", 0)
        if self.global_batch is not None:
            positive_int(self.global_batch, "trainer.global_batch")

    @property
    def ema_config(self) -> EmaConfig:
        return EmaConfig(decay=self.ema_decay, warmup_steps=self.ema_warmup_steps)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.bf16 else torch.float16 if self.fp16 else None

    def resources_per_worker(self) -> dict[str, float]:
        resources = {"CPU": float(self.cpus_per_worker)}
        if self.use_gpu:
            resources["GPU"] = float(self.gpus_per_worker)
        resources.update({k: float(v) for k, v in (self.worker_resources or {}).items()})
        return resources


@dataclass(frozen=True)
class InitSettings:
    """The pretrained detector a run starts from (fine-tuning), instead of ImageNet weights.

    ``weights``: an official SAM-DETR checkpoint, a checkpoint of this project (a file or a Ray
    Train checkpoint folder), local or at a URI (``s3://...``), or a model of the MLflow
    registry (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/ID/model``) in the
    run's tracking store. ``min_loaded``: the share of the model's weights that must load from
    it, else the run is refused (a file of another architecture).
    """
    weights: str | None = None
    min_loaded: float = 0.5

    def __post_init__(self) -> None:
        if self.weights is not None:
            non_empty(self.weights, "init.weights")
        if isinstance(self.min_loaded, bool) or not isinstance(self.min_loaded, (int, float)) \
                or not 0.0 <= self.min_loaded <= 1.0:
            raise ValueError(f"init.min_loaded must be a share in [0, 1], got {self.min_loaded!r}")

    def resolved(self) -> InitSettings:
        """``weights`` made absolute if it is a local path; URIs as they are."""
        if self.weights is None or is_uri(self.weights) or self.weights.startswith(
                ("models:/", "runs:/")):
            return self
        return dataclasses.replace(self, weights=absolute(Path(self.weights).expanduser()))


#: The registered model that training (tracking=server), sweeps, the demo, promotion, prediction
#: and serving name unless told otherwise: one name, so that each step finds what the last made.
REGISTERED_MODEL = "sam-detr"


@dataclass(frozen=True)
class TrainSettings:
    """Everything one training run needs; ``detector`` is the model + loss config."""
    detector: DetectorConfig
    optim: OptimConfig
    data: DataSettings
    trainer: TrainerSettings
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    init: InitSettings = field(default_factory=InitSettings)

    def __post_init__(self) -> None:
        check_global_batch(self)

    @property
    def global_batch(self) -> int:
        """Images per optimiser step over all workers."""
        return self.trainer.num_workers * self.data.batch_size * self.trainer.accumulate

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainSettings:
        """From Hydra's resolved dict: ``model``, ``loss``, ``optim``, ``data``, ``trainer``,
        ``tracking`` nodes (``loss`` optional; the data group's :data:`SOURCE_KEYS` ignored)."""
        data = known_fields(_Raw, data, "train settings")
        detector = DetectorConfig.from_dict(
            {"model": data["model"], "loss": data.get("loss") or {}}
        )
        return cls(
            detector=detector,
            optim=OptimConfig.from_dict(data.get("optim") or {}),
            data=DataSettings(**known_fields(DataSettings, _without_source(data["data"]), "data")),
            trainer=TrainerSettings(**known_fields(TrainerSettings, data["trainer"], "trainer")),
            tracking=TrackingSettings(
                **known_fields(TrackingSettings, data.get("tracking") or {}, "tracking")
            ),
            init=InitSettings(**known_fields(InitSettings, data.get("init") or {}, "init")),
        )

    def resolved(self) -> TrainSettings:
        """These settings with every local path absolute, against the driver's cwd.

        Call it once, on the driver: Ray Train workers run in folders of their own, and on a
        cluster on other machines, so a relative path would name another file there. URIs
        (``s3://...``) stay as they are; the tracking URI is fixed to the store in use.
        """
        data = dataclasses.replace(
            self.data, train_shards=absolute(self.data.train_shards),
            val_shards=absolute(self.data.val_shards),
        )
        storage = absolute(self.trainer.storage_path)
        trainer = dataclasses.replace(self.trainer, storage_path=storage)
        location = self.tracking.artifact_location
        tracking = dataclasses.replace(
            self.tracking, tracking_uri=self.tracking.resolved_uri(),
            artifact_location=absolute(location) if location else location,
        )
        model = self.detector.model
        backbone = dataclasses.replace(model.backbone,
                                       weights=absolute_weights(model.backbone.weights))
        detector = dataclasses.replace(
            self.detector, model=dataclasses.replace(model, backbone=backbone))
        return dataclasses.replace(self, detector=detector, data=data, trainer=trainer,
                                   tracking=tracking, init=self.init.resolved())

    def local_paths(self) -> dict[str, str]:
        """``{setting: path}`` of the settings that name local files (not URIs), which every
        node of a cluster must see: the shard sets and the run's storage."""
        paths = {
            "data.train_shards": self.data.train_shards,
            "data.val_shards": self.data.val_shards,
            "trainer.storage_path": self.trainer.storage_path,
        }
        weights = self.detector.model.backbone.weights
        if weights is not None and Path(weights).expanduser().is_absolute():  # a file
            paths["model.backbone.weights"] = weights
        return {k: v for k, v in paths.items() if not is_uri(v)}

    def to_dict(self) -> dict[str, Any]:
        """The inverse of :meth:`from_dict`: plain, JSON-safe, picklable into Ray workers."""
        detector = self.detector.to_dict()
        return {
            "model": detector["model"],
            "loss": detector["loss"],
            "optim": self.optim.to_dict(),
            "data": dataclasses.asdict(self.data),
            "trainer": {**dataclasses.asdict(self.trainer),  # JSON has no tuples
                        "activation_checkpointing": list(self.trainer.activation_checkpointing)},
            "tracking": dataclasses.asdict(self.tracking),
            "init": dataclasses.asdict(self.init),
        }


def check_global_batch(settings: TrainSettings) -> None:
    """ValueError unless the workers, their batch and the accumulation make the recipe's global
    batch (when the recipe names one): its learning rates hold for that batch only."""
    trainer, found = settings.trainer, settings.global_batch
    expected = trainer.global_batch
    workers, batch, accumulate = trainer.num_workers, settings.data.batch_size, trainer.accumulate
    if expected is None or found == expected:
        return
    hints = []
    if expected % (workers * accumulate) == 0:
        hints.append(f"data.batch_size={expected // (workers * accumulate)}")
    if expected % (workers * batch) == 0:
        hints.append(f"trainer.accumulate={expected // (workers * batch)}")
    hint = " or ".join(hints) or (
        "trainer.num_workers, data.batch_size and trainer.accumulate whose product is "
        f"{expected}")
    raise ValueError(
        f"trainer.num_workers={workers} x data.batch_size={batch} x trainer.accumulate="
        f"{accumulate} makes a global batch of {found}, but this recipe's learning rates are "
        f"for trainer.global_batch={expected}. Use {hint}; or train with a global batch of "
        f"{found} on purpose: trainer.global_batch={found} (and scale optim.lr yourself)"
    )


@dataclass
class _Raw:  # the top-level keys accepted by TrainSettings.from_dict
    model: Any = None
    loss: Any = None
    optim: Any = None
    data: Any = None
    trainer: Any = None
    tracking: Any = None
    init: Any = None


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``: MLflow params (values as short strings)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)[:6000]  # MLflow's param value limit
    return out
