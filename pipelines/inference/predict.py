"""Detection on images with a registered model, a model version or a checkpoint
(``python -m pipelines.predict`` is its command line, and its docstring the usage): reading the
images, running the predictor, and writing results, tables and pictures."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.common.checks import flag, non_empty, non_negative, positive_int
from pipelines.inference.batch_predict import run_batch_predict
from pipelines.inference.export import SUFFIXES
from pipelines.inference.predict_outputs import (
    PICTURES,
    above,
    picture,
    picture_name,
    skip_reason,
    write_images_json,
    write_skipped,
)
from pipelines.inference.predict_sources import (
    AUTO_GPUS,
    ENGINES,
    RUNTIMES,
    model_file_of,
    open_predictor,
    shard_set_of,
)
from pipelines.registry.model_uri import check_model_source
from samdetr.data.storage import list_files, read_file


@dataclass(frozen=True)
class PredictSettings:
    """Exactly one of ``model_uri`` (``models:/name@alias``, ``models:/name/version``,
    ``runs:/id/model``) and ``checkpoint`` (``checkpoint.pt`` or a Ray Train checkpoint folder,
    local or a URI). ``images``: a folder, a glob, a file, or a list of them, local or at URIs;
    with ``engine=ray`` also a shard set folder (``pipelines.preprocess``'s output).
    ``tracking_uri``: the MLflow store of ``model_uri`` (None: $MLFLOW_TRACKING_URI, else
    ``sqlite:///mlflow.db`` in the current folder).

    ``runtime``: ``torch`` (the checkpoint's PyTorch model, on ``device``), or ``onnx`` /
    ``exported_program``: a file of ``pipelines.export`` on the CPU, either ``exported`` (the
    file, local or a URI; then no ``model_uri`` or ``checkpoint``) or the export of
    ``model_uri`` that ``pipelines.export`` recorded in the store (the newest whose parity
    passed). Exported graphs give no salient points.

    ``engine=ray`` only: ``ray_address`` (None: the Ray of $RAY_ADDRESS or a local one started
    here), ``actors`` (model actors in the pool), ``cpus_per_actor``, ``gpus_per_actor`` (a
    number, or ``auto``: 1 where the cluster has GPUs, else 0) and ``part_images`` (images per
    output part). A crashed model actor is restarted and its batch run again (Ray Data's
    defaults for an actor pool: restarts and retries without limit).
    """
    images: str | list[str]
    output: str
    model_uri: str | None = None
    checkpoint: str | None = None
    score_threshold: float = 0.5
    num_top: int = 100
    pictures: bool = True
    salient_points: bool = False
    max_drawn: int = 20  # detections drawn per picture (the best ones above the threshold)
    batch_size: int = 4
    device: str = "auto"
    exif_transpose: bool = True
    tracking_uri: str | None = None
    engine: str = "local"
    ray_address: str | None = None
    actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float | str = AUTO_GPUS
    part_images: int = 1000
    runtime: str = "torch"
    exported: str | None = None

    def __post_init__(self) -> None:
        self._check_model()
        non_empty(self.output, "output")
        images = [self.images] if isinstance(self.images, str) else self.images
        if not isinstance(images, (list, tuple)) or not images or not all(
                isinstance(i, str) and i for i in images):
            raise ValueError(f"images must be a folder, glob, file or list of them, "
                             f"got {self.images!r}")
        if isinstance(self.score_threshold, bool) or not isinstance(
                self.score_threshold, (int, float)) or not 0 <= self.score_threshold <= 1:
            raise ValueError(f"score_threshold must be in [0, 1], got {self.score_threshold!r}")
        for name in ("num_top", "batch_size", "max_drawn", "actors", "part_images"):
            positive_int(getattr(self, name), name)
        for name in ("pictures", "salient_points", "exif_transpose"):
            flag(getattr(self, name), name)
        for name, what in (("tracking_uri", "an MLflow store URI"),
                           ("ray_address", "a Ray address (ray://HEAD:10001, auto)")):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"{name} must be {what} or null, got {value!r}")
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        non_negative(self.cpus_per_actor, "cpus_per_actor")
        if self.gpus_per_actor != AUTO_GPUS:
            non_negative(self.gpus_per_actor, f"gpus_per_actor (or {AUTO_GPUS})")
        if self.engine == "local" and self.ray_address is not None:
            raise ValueError("ray_address is used by engine=ray only; set engine=ray or leave "
                             "ray_address null")

    def _check_model(self) -> None:
        """What the runtime runs: a model URI or checkpoint (torch), an exported file or the
        recorded export of a model URI (the others)."""
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, "
                             f"got {self.runtime!r}")
        if self.runtime == "torch":
            if self.exported is not None:
                raise ValueError("exported is run with runtime=onnx or exported_program; "
                                 "runtime=torch runs model_uri or checkpoint")
            check_model_source(self.model_uri, self.checkpoint)
            return
        if self.exported is not None:
            non_empty(self.exported, "exported")
            if self.model_uri is not None or self.checkpoint is not None:
                raise ValueError("exported is the model: leave model_uri and checkpoint unset")
            if not self.exported.endswith(SUFFIXES[self.runtime]):
                raise ValueError(f"runtime={self.runtime} runs a {SUFFIXES[self.runtime]} file, "
                                 f"got exported={self.exported!r}")
        elif self.checkpoint is not None:
            raise ValueError(f"a checkpoint runs with runtime=torch; for runtime={self.runtime} "
                             f"export it first (python -m pipelines.export checkpoint=... "
                             f"output=detector{SUFFIXES[self.runtime]}) and pass exported=FILE")
        elif self.model_uri is None:
            raise ValueError(f"runtime={self.runtime} needs exported=FILE or model_uri (whose "
                             "export pipelines.export recorded)")
        else:
            check_model_source(self.model_uri, None)
        if self.device not in ("auto", "cpu"):
            raise ValueError(f"runtime={self.runtime} runs on the CPU: device must be auto or "
                             f"cpu, got {self.device!r}")


def run_predict(config: PredictSettings) -> dict[str, Any]:
    """Detect, write the outputs; returns ``{"images", "detections", "skipped", "output"}``
    (``engine=ray``: :func:`pipelines.inference.batch_predict.run_batch_predict`'s summary)."""

    if config.engine == "ray":
        return run_batch_predict(config)
    if shard_set_of(config.images) is not None:
        raise ValueError(f"images={config.images} is a shard set: engine=ray reads shard sets "
                         f"(engine=local reads image files)")
    files = list_files(config.images)
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    with model_file_of(config) as path:
        predictor = open_predictor(path, config.runtime, config.device, config.batch_size,
                                   config.num_top)
    records, skipped = _detect_all(predictor, files, config, out)
    _write_tables(records, skipped, predictor.category_names, out)
    summary = {"images": len(records), "skipped": len(skipped), "output": str(out),
               "detections": sum(len(r["result"]["scores"]) for r in records)}
    print(f"[predict] {summary['images']} images, {summary['detections']} detections with "
          f"score >= {config.score_threshold} -> {out}", flush=True)
    for name, reason in skipped:
        print(f"[predict] skipped {name}: {reason}", flush=True)
    return summary


def _detect_all(predictor: Any, files: Sequence[str], config: PredictSettings,
                out: Path) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """Read, decode and detect image by image group (a progress bar over the images)."""
    from tqdm import tqdm

    records: list[dict[str, Any]] = []
    skipped: list[tuple[str, str]] = []
    chunk = config.batch_size * 4
    with tqdm(total=len(files), unit="img", desc="predict", dynamic_ncols=True) as bar:
        for start in range(0, len(files), chunk):
            images, names = _load(files[start : start + chunk], config, skipped)
            results = predictor(images, exif_transpose=False, num_top=config.num_top) \
                if images else []
            for name, image, result in zip(names, images, results, strict=True):
                result = above(result, config.score_threshold)
                records.append({"id": len(records), "file": name, "size": image.size,
                                "result": result})
                if config.pictures:
                    path = out / PICTURES / picture_name(len(records) - 1, name)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    picture(image, result, predictor.category_names, config.max_drawn,
                            config.salient_points).save(path)
            bar.update(min(chunk, len(files) - start))
    return records, skipped


def _load(files: Sequence[str], config: PredictSettings,
          skipped: list[tuple[str, str]]) -> tuple[list[Any], list[str]]:
    """Decoded images (EXIF orientation applied if asked) and their names; the others skipped."""
    from samdetr.data.images import decode_image

    images, names = [], []
    for name in files:
        try:
            images.append(decode_image(read_file(name), exif_transpose=config.exif_transpose))
            names.append(name)
        except Exception as err:  # noqa: BLE001 - any unreadable file is skipped, not fatal
            skipped.append((name, skip_reason(err)))
    return images, names


def _write_tables(records: list[dict[str, Any]], skipped: list[tuple[str, str]],
                  names: dict[int, str], out: Path) -> None:
    from samdetr.engine.coco_eval import detections_to_coco_results

    results = detections_to_coco_results(
        {"image_id": r["id"], **{k: r["result"][k].numpy() for k in ("scores", "labels",
                                                                     "boxes")}}
        for r in records)
    files = {r["id"]: r["file"] for r in records}
    for entry in results:
        entry["file_name"] = files[entry["image_id"]]
    (out / "results.json").write_text(json.dumps(results))
    write_images_json(({"id": r["id"], "file_name": r["file"], "width": r["size"][0],
                        "height": r["size"][1]} for r in records), out)
    with (out / "detections.csv").open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["image_id", "file_name", "score", "label", "name", "x1", "y1", "x2",
                         "y2"])
        for r in records:
            res = r["result"]
            for score, label, box in zip(res["scores"].tolist(), res["labels"].tolist(),
                                         res["boxes"].tolist(), strict=True):
                writer.writerow([r["id"], r["file"], f"{score:.5f}", label,
                                 names.get(label, ""), *(f"{v:.2f}" for v in box)])
    write_skipped(skipped, out)
