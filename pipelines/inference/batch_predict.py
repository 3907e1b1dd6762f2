"""``python -m pipelines.predict engine=ray``: detection on many images with Ray Data.

The driver lists the images once (files, folders, globs, lists, local or on an object store, or a
shard set of ``pipelines.preprocess``) and reads the checkpoint once (a local file, or the one an
MLflow model carries), puts its bytes into the object store, and plans one Dataset:

    image ids and files (or shard rows) -> decode_rows (Ray tasks: read + decode)
        -> ModelActor (a pool of ``actors`` actors, ``gpus_per_actor`` GPUs each)

It then iterates the Dataset's output and writes it as it comes (:class:`PartWriter`): every
``part_images`` images one ``detections/part-NNNNN.parquet`` (one row per detection) and one
``results/part-NNNNN.json`` (COCO results), pictures as they arrive, and at the end
``images.json`` and ``skipped.txt``, as the one-process engine writes them.

Exactly once: a model actor that crashes is restarted and Ray Data runs its batch again (its
defaults for an actor pool); only the driver writes, from what it iterates, which Ray Data
hands over once per row; the writer also keys what it wrote by image id, so that nothing can be
written twice, and the run fails if an image never came back.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.common.console import connect
from pipelines.data.ingest import shard_dataset
from pipelines.inference.predict_outputs import (
    PICTURES,
    picture_name,
    write_images_json,
    write_skipped,
)
from pipelines.inference.predict_sources import AUTO_GPUS, model_file_of, shard_set_of
from pipelines.inference.predict_workers import ModelActor, decode_rows
from samdetr.data.shards import read_manifest
from samdetr.data.storage import list_files
from samdetr.engine.coco_eval import detections_to_coco_results

#: The columns of a ``detections/part-NNNNN.parquet`` file, one row per detection.
DETECTION_SCHEMA = pa.schema([
    ("image_id", pa.int64()), ("file_name", pa.string()), ("score", pa.float32()),
    ("label", pa.int64()), ("name", pa.string()), ("x1", pa.float32()), ("y1", pa.float32()),
    ("x2", pa.float32()), ("y2", pa.float32()),
])
#: Shard columns the prediction reads (the rest, annotations, are not read).
SHARD_COLUMNS = ["image_id", "file_name", "image", "exif_transpose"]


def run_batch_predict(config: Any) -> dict[str, Any]:
    """Detect with Ray Data as ``config`` says (a ``pipelines.inference.predict.PredictSettings``;
    that module hands ``engine=ray`` runs here), write the outputs as they come; returns
    ``{"images", "detections", "skipped", "output", "parts", "seconds", "first_result_s",
    "images_per_s", "repeats"}`` (``first_result_s``: until the first batch came back, the
    model actors' start included; ``repeats``: rows that came back a second time and were not
    written again, 0 unless Ray misbehaved)."""
    import ray

    shards = shard_set_of(config.images)
    files = None if shards else list_files(config.images)
    total = read_manifest(shards)["num_rows"] if shards else len(files)
    connect(config.ray_address)
    gpus = gpus_per_actor(config.gpus_per_actor, ray.cluster_resources())
    with model_file_of(config) as model_file:  # a checkpoint, or an exported file
        checkpoint_ref = ray.put(Path(model_file).read_bytes())
    writer = PartWriter(Path(config.output), config.part_images)
    dataset = _plan(config, shards, files, checkpoint_ref, gpus)
    start = time.perf_counter()
    first = _iterate(dataset, writer, total) - start
    seconds = time.perf_counter() - start
    summary = writer.close()
    missing = total - summary["images"] - summary["skipped"]
    if missing:
        raise RuntimeError(f"{missing} of {total} images never came back from Ray Data; the "
                           f"{summary['images']} written are in {config.output}")
    summary.update(seconds=round(seconds, 2), first_result_s=round(first, 2),
                   images_per_s=round(total / seconds, 2) if seconds > 0 else None)
    print(f"[predict] {summary['images']} images, {summary['detections']} detections with "
          f"score >= {config.score_threshold} in {summary['parts']} parts "
          f"({summary['images_per_s']} images/s, {config.actors} model actors with "
          f"{gpus:g} GPU each) -> {config.output}", flush=True)
    for name, reason in writer.skipped:
        print(f"[predict] skipped {name}: {reason}", flush=True)
    return summary


def gpus_per_actor(setting: float | str, resources: dict[str, float]) -> float:
    """``auto``: 1 where the cluster has a GPU, else 0; a number as it is."""
    if setting == AUTO_GPUS:
        return 1.0 if resources.get("GPU", 0) > 0 else 0.0
    return float(setting)


def _plan(config: Any, shards: str | None, files: list[str] | None,
          checkpoint_ref: Any, gpus: float) -> Any:
    """The Dataset: image rows -> decoded rows (tasks) -> detections (the model actors)."""
    import ray.data

    if shards:  # read as training reads them (file by file, not listed per execution)
        rows = shard_dataset(shards).select_columns(SHARD_COLUMNS)
    else:
        items = [{"image_id": i, "file_name": name} for i, name in enumerate(files)]
        rows = ray.data.from_items(
            items, override_num_blocks=max(1, math.ceil(len(items) / config.batch_size)))
    decoded = rows.map_batches(decode_rows, batch_size=config.batch_size,
                               batch_format="pyarrow",
                               fn_kwargs={"exif_transpose": config.exif_transpose})
    options = {name: getattr(config, name) for name in (
        "device", "batch_size", "num_top", "score_threshold", "pictures", "max_drawn",
        "salient_points", "runtime")}
    # Fault tolerance is Ray Data's default for an actor pool (max_restarts=-1 and
    # max_task_retries=-1: a crashed actor is restarted and its batch runs again); setting
    # them here would go through ray_remote_args, deprecated in Ray 2.60.
    return decoded.map_batches(
        ModelActor, fn_constructor_args=([checkpoint_ref], options),
        batch_size=config.batch_size, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=config.actors),
        num_cpus=config.cpus_per_actor, num_gpus=gpus)


def _iterate(dataset: Any, writer: PartWriter, total: int) -> float:
    """Hand every output batch to ``writer`` as it comes, with a progress bar in images/s;
    returns when the first batch came (``time.perf_counter``: the model actors' start)."""
    from tqdm import tqdm

    first = None
    with tqdm(total=total, unit="img", desc="predict (ray)", dynamic_ncols=True) as bar:
        for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            first = time.perf_counter() if first is None else first
            writer.add(batch)
            bar.update(batch.num_rows)
    return first if first is not None else time.perf_counter()


class PartWriter:
    """Writes the model actors' rows (:data:`predict_workers.DETECTED_SCHEMA`) under ``out`` as
    they come: pictures at once, detections and COCO results every ``part_images`` images as one
    part, ``images.json`` and ``skipped.txt`` at :meth:`close`. Each image id is written once."""

    def __init__(self, out: Path, part_images: int) -> None:
        self.out, self.part_images = out, part_images
        for folder in ("detections", "results"):
            (out / folder).mkdir(parents=True, exist_ok=True)
        self.images: dict[int, dict[str, Any]] = {}
        self.skipped: list[tuple[str, str]] = []
        self.seen: set[int] = set()
        self.repeats = self.parts = self.detections = 0
        self._rows: list[dict[str, Any]] = []

    def add(self, batch: pa.Table) -> None:
        for row in batch.to_pylist():
            if row["image_id"] in self.seen:
                self.repeats += 1
                continue
            self.seen.add(row["image_id"])
            if row["skipped"] is not None:
                self.skipped.append((row["file_name"], row["skipped"]))
                continue
            self.images[row["image_id"]] = {"id": row["image_id"], "file_name": row["file_name"],
                                            "width": row["width"], "height": row["height"]}
            if row["picture"] is not None:
                path = self.out / PICTURES / picture_name(row["image_id"], row["file_name"])
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(row["picture"])
            self._rows.append(row)
            if len(self._rows) >= self.part_images:
                self._flush()

    def _flush(self) -> None:
        """One part: its detections as Parquet and its COCO results as JSON."""
        if not self._rows:
            return
        columns: dict[str, list[Any]] = {name: [] for name in DETECTION_SCHEMA.names}
        results = []
        for row in self._rows:
            for score, label, name, box in zip(row["scores"], row["labels"], row["names"],
                                               row["boxes"], strict=True):
                for key, value in zip(DETECTION_SCHEMA.names, (
                        row["image_id"], row["file_name"], score, label, name, *box),
                                      strict=True):
                    columns[key].append(value)
            # As the one-process engine converts them: float32 xyxy -> COCO xywh.
            for entry in detections_to_coco_results([{
                    "image_id": row["image_id"],
                    "scores": np.asarray(row["scores"], dtype=np.float32),
                    "labels": np.asarray(row["labels"], dtype=np.int64),
                    "boxes": np.asarray(row["boxes"], dtype=np.float32).reshape(-1, 4)}]):
                results.append({**entry, "file_name": row["file_name"]})
        name = f"part-{self.parts:05d}"
        pq.write_table(pa.Table.from_pydict(columns, schema=DETECTION_SCHEMA),
                       self.out / "detections" / f"{name}.parquet")
        (self.out / "results" / f"{name}.json").write_text(json.dumps(results))
        self.parts += 1
        self.detections += len(results)
        self._rows = []

    def close(self) -> dict[str, Any]:
        """The last part, ``images.json`` (id order) and ``skipped.txt``; the counts."""
        self._flush()
        write_images_json(self.images.values(), self.out)
        write_skipped(sorted(self.skipped), self.out)
        return {"images": len(self.images), "skipped": len(self.skipped),
                "detections": self.detections, "parts": self.parts, "repeats": self.repeats,
                "output": str(self.out)}
