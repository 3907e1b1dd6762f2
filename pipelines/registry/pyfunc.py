"""The SAM-DETR MLflow model, logged as code ("models from code": no pickled Python objects).

MLflow copies this file into the logged model and runs it when the model is loaded; the
``mlflow.models.set_model`` call at the bottom hands it the model object. Log it with
:func:`pipelines.registry.mlflow_model.log_detector_model` rather than importing it (importing it
sets
MLflow's current code model). Only ``samdetr``, MLflow, pandas and torch may be imported here:
``pipelines`` is not shipped with the model, ``samdetr`` is (as ``code_paths``).

Input: a pandas DataFrame with a column ``image`` of encoded image bytes (JPEG, PNG, ...; any
size, any number of rows; the scoring server base64-decodes JSON input for this binary column).
Output: one row per detection with the columns of :data:`OUTPUT_DTYPES`.
Params: ``score_threshold`` (keep rows with ``score >= threshold``), ``num_top`` (detections
per image before thresholding), ``exif_transpose`` (apply EXIF orientation first) and
``clip_boxes`` (clip boxes to the image; off for COCO evaluation, as in training).
"""

from __future__ import annotations

import math
import operator
from typing import Any

import mlflow
import pandas as pd
import torch

from samdetr.inference import Predictor, detections_table

# pandas dtypes of the output columns (pipelines.registry.mlflow_model.SIGNATURE gives the MLflow
# types).
OUTPUT_DTYPES = {
    "image_index": "int64",
    "score": "float64",
    "label": "int64",
    "name": "object",
    "x1": "float64",
    "y1": "float64",
    "x2": "float64",
    "y2": "float64",
}
# Used when predict is called without MLflow (which fills in the signature's defaults).
PARAM_DEFAULTS = {"score_threshold": 0.0, "num_top": 100, "exif_transpose": True,
                  "clip_boxes": True}
IMAGE_COLUMN = "image"


class SAMDETRModel(mlflow.pyfunc.PythonModel):
    """Pyfunc wrapper of :class:`samdetr.inference.Predictor`; its artifact ``checkpoint`` is a
    samdetr checkpoint (state dict + config + ``eval_transform`` + ``categories``)."""
    predictor: Predictor | None = None

    def load_context(self, context) -> None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.predictor = Predictor.from_checkpoint(context.artifacts["checkpoint"], device=device)

    # MLflow 3 infers no schema from a DataFrame hint (the logged signature describes the
    # columns), and without any hint it warns at every log and load.
    def predict(
        self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """DataFrame with ``image`` bytes -> DataFrame with one row per detection.

        ``image_index`` is the row's position in ``model_input`` (0-based), not its index label;
        boxes are ``(x1, y1, x2, y2)`` pixels of the (EXIF-oriented) original image.
        """
        if self.predictor is None:
            raise RuntimeError("the model has no predictor: load it with mlflow.pyfunc.load_model")
        if not isinstance(model_input, pd.DataFrame):
            raise TypeError(
                f"model_input must be a pandas DataFrame with an {IMAGE_COLUMN!r} column of "
                f"encoded image bytes, got {type(model_input).__name__}"
            )
        if IMAGE_COLUMN not in model_input.columns:
            raise ValueError(
                f"model_input needs an {IMAGE_COLUMN!r} column of encoded image bytes, "
                f"got columns {list(model_input.columns)}"
            )
        options = {**PARAM_DEFAULTS, **(params or {})}
        threshold = float(options["score_threshold"])
        if math.isnan(threshold):
            raise ValueError("score_threshold must be a number, got NaN")
        images = model_input[IMAGE_COLUMN].tolist()
        results = self.predictor(
            images,
            exif_transpose=bool(options["exif_transpose"]),
            num_top=operator.index(options["num_top"]),  # numpy ints from the schema too
            clip_boxes=bool(options["clip_boxes"]),
        )
        if threshold > 0:
            results = [
                {key: value[r["scores"] >= threshold] for key, value in r.items()} for r in results
            ]
        table = detections_table(results, self.predictor.category_names)
        return pd.DataFrame(
            {
                column: pd.Series(table[column], dtype=dtype)
                for column, dtype in OUTPUT_DTYPES.items()
            }
        )


mlflow.models.set_model(SAMDETRModel())
