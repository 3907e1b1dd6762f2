"""Log a trained SAM-DETR checkpoint as an MLflow pyfunc model ("models from code").

    with mlflow.start_run():
        info = log_detector_model("outputs/checkpoint.pth", registered_model_name="samdetr")
    model = mlflow.pyfunc.load_model("models:/samdetr@champion")
    detections = model.predict(pd.DataFrame({"image": [jpeg_bytes]}), params={"num_top": 20})

The logged model holds ``pipelines/registry/pyfunc.py`` (the model code, run at load time), a
slim copy of the checkpoint (weights, config, eval transform, categories; no optimizer state)
as the artifact ``checkpoint``, and a copy of the ``samdetr`` package as ``code_paths`` so that
loading needs no install of this repository. Nothing in it is pickled: the checkpoint loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.models.model import ModelInfo
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
from PIL import Image

import samdetr
from pipelines.registry.model_facts import facts_of_checkpoint, tag_version
from samdetr.checkpoint import load_checkpoint, save_checkpoint

MODEL_CODE = Path(__file__).with_name("pyfunc.py")
# Checkpoint entries kept in the model besides the weights and config: what the predictor reads
# and what the model's facts (pipelines.registry.model_facts) name: data checksums, the source
# run and the pretrained model it was fine-tuned from.
KEPT_EXTRAS = ("eval_transform", "categories", "data", "mlflow_run_id", "init_from")
# Distributions `samdetr.inference` imports at load time (mlflow itself is added by MLflow).
RUNTIME_PACKAGES = ("torch", "torchvision", "numpy", "pillow", "scipy", "pycocotools", "pandas")

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("binary", "image")]),
    outputs=Schema(
        [
            ColSpec("long", "image_index"),
            ColSpec("double", "score"),
            ColSpec("long", "label"),
            ColSpec("string", "name"),
            *(ColSpec("double", column) for column in ("x1", "y1", "x2", "y2")),
        ]
    ),
    params=ParamSchema(
        [
            ParamSpec("score_threshold", "double", 0.0),
            ParamSpec("num_top", "long", 100),
            ParamSpec("exif_transpose", "boolean", True),
            ParamSpec("clip_boxes", "boolean", True),
        ]
    ),
)


def pip_requirements() -> list[str]:
    """The runtime packages pinned to the installed versions, without local labels such as
    ``+cu130`` (PyPI has no such versions)."""
    return [f"{name}=={metadata.version(name).split('+')[0]}" for name in RUNTIME_PACKAGES]


def example_image(width: int = 64, height: int = 48) -> bytes:
    """A small JPEG (a grey frame with a red square) for the logged input example."""
    image = Image.new("RGB", (width, height), (128, 128, 128))
    image.paste((200, 40, 40), (width // 4, height // 4, width // 2, height // 2))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def write_slim_checkpoint(checkpoint_path: str | Path, out_path: str | Path) -> Path:
    """Copy weights, config and the :data:`KEPT_EXTRAS` of a training checkpoint to
    ``out_path`` (optimizer, scheduler and RNG states are dropped)."""
    model, config, extra = load_checkpoint(checkpoint_path, map_location="cpu")
    kept = {key: extra[key] for key in KEPT_EXTRAS if key in extra}
    return save_checkpoint(out_path, model, config, **kept)


def log_detector_model(
    checkpoint_path: str | Path,
    name: str = "model",
    registered_model_name: str | None = None,
    input_images: Sequence[bytes] | None = None,
) -> ModelInfo:
    """Log ``checkpoint_path`` as a pyfunc model in the active MLflow run.

    Call it inside ``with mlflow.start_run(...)`` (to add to an existing run, e.g. a training
    run, use ``mlflow.start_run(run_id=...)``): the model then belongs to a run you chose
    instead of one MLflow would start and leave open. Like ``mlflow.pyfunc.log_model`` it uses
    MLflow's process-wide tracking and registry URIs, those of the active run: to log into a
    given store, call it inside :func:`pipelines.common.tracking.using_store` (as
    :func:`pipelines.registry.register.log_best_model` does). ``registered_model_name`` also
    creates a
    new version of that registered model. The model and the version are tagged with the
    checkpoint's facts (:class:`pipelines.registry.model_facts.ModelFacts`: categories, eval size,
    data
    checksums, source run, config). ``input_images`` (encoded bytes, keep them small: they
    are stored as base64 JSON) become the input example; by default a 64x48 JPEG.

    Returns MLflow's :class:`ModelInfo`; ``model_info.model_uri`` loads it with
    ``mlflow.pyfunc.load_model``.
    """
    if mlflow.active_run() is None:
        raise RuntimeError(
            "log_detector_model needs an active MLflow run: call it inside "
            "`with mlflow.start_run():` (or `mlflow.start_run(run_id=...)` to add to a run)"
        )
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if input_images is None:
        input_images = [example_image()]
    if isinstance(input_images, (bytes, bytearray)) or not all(
        isinstance(data, (bytes, bytearray)) for data in input_images
    ):
        raise TypeError("input_images must be a list of encoded image bytes")
    if len(input_images) == 0:
        raise ValueError("input_images must hold at least one image (or be None)")
    example = pd.DataFrame({"image": [bytes(data) for data in input_images]})

    with tempfile.TemporaryDirectory(prefix="samdetr-mlflow-") as tmp:
        slim = write_slim_checkpoint(checkpoint_path, Path(tmp) / "checkpoint.pth")
        facts = facts_of_checkpoint(slim).tags()
        # log_model copies the artifacts and code into the model before returning.
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(MODEL_CODE),
            artifacts={"checkpoint": str(slim)},
            code_paths=[str(Path(samdetr.__file__).parent)],
            pip_requirements=pip_requirements(),
            signature=SIGNATURE,
            input_example=example,
            registered_model_name=registered_model_name,
            tags=facts,
        )
    if registered_model_name:
        # The registry log_model just registered the version in (the process-wide URIs).
        tag_version(mlflow.MlflowClient(), registered_model_name,
                    info.registered_model_version, facts)
    return info
