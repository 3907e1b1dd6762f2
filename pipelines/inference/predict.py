"""Detection on images with a registered model, a model version or a checkpoint
(``python -m pipelines.predict`` is its command line, and its docstring the usage): reading the
images, running the predictor, and writing results, tables and pictures."""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.common.checkpoints import local_checkpoint
from pipelines.common.checks import flag, non_empty, positive_int
from pipelines.common.tracking_settings import store_uri
from pipelines.inference.evaluate import resolve_device
from pipelines.registry.model_uri import check_model_source
from pipelines.registry.register import fetched_checkpoint
from samdetr.data.storage import list_files, read_file


@dataclass(frozen=True)
class PredictSettings:
    """Exactly one of ``model_uri`` (``models:/name@alias``, ``models:/name/version``,
    ``runs:/id/model``) and ``checkpoint`` (``checkpoint.pt`` or a Ray Train checkpoint folder,
    local or a URI). ``images``: a folder, a glob, a file, or a list of them, local or at URIs.
    ``tracking_uri``: the MLflow store of ``model_uri`` (None: $MLFLOW_TRACKING_URI, else
    ``sqlite:///mlflow.db`` in the current folder).
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

    def __post_init__(self) -> None:
        check_model_source(self.model_uri, self.checkpoint)
        non_empty(self.output, "output")
        images = [self.images] if isinstance(self.images, str) else self.images
        if not isinstance(images, (list, tuple)) or not images or not all(
                isinstance(i, str) and i for i in images):
            raise ValueError(f"images must be a folder, glob, file or list of them, "
                             f"got {self.images!r}")
        if isinstance(self.score_threshold, bool) or not isinstance(
                self.score_threshold, (int, float)) or not 0 <= self.score_threshold <= 1:
            raise ValueError(f"score_threshold must be in [0, 1], got {self.score_threshold!r}")
        for name in ("num_top", "batch_size", "max_drawn"):
            positive_int(getattr(self, name), name)
        for name in ("pictures", "salient_points", "exif_transpose"):
            flag(getattr(self, name), name)
        if self.tracking_uri is not None and (not isinstance(self.tracking_uri, str)
                                              or not self.tracking_uri):
            raise ValueError(f"tracking_uri must be an MLflow store URI or null, got "
                             f"{self.tracking_uri!r}")


@contextlib.contextmanager
def _checkpoint_of(config: PredictSettings) -> Iterator[str]:
    """A local samdetr checkpoint file: the checkpoint, or the one an MLflow model carries
    (its ``checkpoint`` artifact), fetched from the command's store."""
    if config.checkpoint is not None:
        with local_checkpoint(config.checkpoint) as path:
            yield path
        return
    with fetched_checkpoint(store_uri(config.tracking_uri), config.model_uri) as path:
        yield path


def run_predict(config: PredictSettings) -> dict[str, Any]:
    """Detect, write the outputs; returns ``{"images", "detections", "skipped", "output"}``."""
    from samdetr.inference import Predictor

    files = list_files(config.images)
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    with _checkpoint_of(config) as checkpoint:
        predictor = Predictor.from_checkpoint(checkpoint, device=resolve_device(config.device),
                                              batch_size=config.batch_size,
                                              num_top=config.num_top)
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
                kept = result["scores"] >= config.score_threshold
                result = {key: value[kept] for key, value in result.items()}
                records.append({"id": len(records), "file": name, "size": image.size,
                                "result": result})
                if config.pictures:
                    _picture(image, result, predictor.category_names, config,
                             out / "pictures" / f"{len(records) - 1:06d}_{_stem(name)}.png")
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
            skipped.append((name, f"{type(err).__name__}: {str(err)[:200]}"))
    return images, names


def _stem(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(name).stem)[:80]


def _picture(image: Any, result: dict[str, Any], names: dict[int, str],
             config: PredictSettings, path: Path) -> None:
    from samdetr.visualize import draw_detections

    path.parent.mkdir(parents=True, exist_ok=True)
    points = result["points"] if config.salient_points else None
    draw_detections(image, result, names, max_detections=config.max_drawn,
                    points=points).save(path)


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
    (out / "images.json").write_text(json.dumps(
        [{"id": r["id"], "file_name": r["file"], "width": r["size"][0],
          "height": r["size"][1]} for r in records], indent=1))
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
    (out / "skipped.txt").write_text("".join(f"{n}\t{why}\n" for n, why in skipped))
