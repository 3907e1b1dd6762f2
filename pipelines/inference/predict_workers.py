"""What runs inside Ray for ``engine=ray`` prediction (``batch_predict`` plans it): the Ray Data
stage that reads and decodes images (:func:`decode_rows`, in Ray tasks) and the model actor that
detects on them (:class:`ModelActor`, a pool of actors, on GPUs where the cluster has them).

Rows cross between the stages as Arrow tables. An image that cannot be read or decoded is not
an error: it goes on as a row with ``skipped`` set to the reason and no pixels, so that every
input comes out exactly once; the driver lists it in ``skipped.txt``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipelines.inference.export import SUFFIXES
from pipelines.inference.predict_outputs import above, picture, png_bytes, skip_reason
from pipelines.inference.predict_sources import open_predictor
from samdetr.data.storage import read_file

#: The rows between decoding and the model: an image's id and file, its decoded size and its
#: RGB pixels (``width * height * 3`` bytes), or ``skipped`` (the reason) and no pixels.
DECODED_SCHEMA = pa.schema([
    ("image_id", pa.int64()), ("file_name", pa.string()), ("width", pa.int32()),
    ("height", pa.int32()), ("pixels", pa.large_binary()), ("skipped", pa.string()),
])
#: The rows the model actors return, one per image: its detections above the threshold
#: (scores descending, boxes ``[x1, y1, x2, y2]`` pixels clipped to the image) and, with
#: pictures on, the PNG of its picture.
DETECTED_SCHEMA = pa.schema([
    ("image_id", pa.int64()), ("file_name", pa.string()), ("width", pa.int32()),
    ("height", pa.int32()), ("skipped", pa.string()), ("scores", pa.list_(pa.float32())),
    ("labels", pa.list_(pa.int64())), ("names", pa.list_(pa.string())),
    ("boxes", pa.list_(pa.list_(pa.float32(), 4))), ("picture", pa.large_binary()),
])


def decode_rows(batch: pa.Table, exif_transpose: bool) -> pa.Table:
    """Rows of ``image_id``, ``file_name`` (and, from a shard set, the encoded ``image`` and its
    ``exif_transpose``) -> :data:`DECODED_SCHEMA` rows. A file is read from where it is (local
    or an object store); EXIF orientation is applied as ``exif_transpose`` says, or as the shard
    row says (the orientation its annotations use)."""
    from samdetr.data.images import decode_image

    out: dict[str, list[Any]] = {name: [] for name in DECODED_SCHEMA.names}
    for row in batch.to_pylist():
        out["image_id"].append(row["image_id"])
        out["file_name"].append(row["file_name"])
        try:
            data = row["image"] if "image" in row else read_file(row["file_name"])
            image = decode_image(data, exif_transpose=bool(row.get("exif_transpose",
                                                                   exif_transpose)))
            if image.width < 1 or image.height < 1:
                raise ValueError(f"empty image ({image.width}x{image.height} pixels)")
        except Exception as err:  # noqa: BLE001 - any unreadable image is skipped, not fatal
            out["width"].append(0)
            out["height"].append(0)
            out["pixels"].append(None)
            out["skipped"].append(skip_reason(err))
            continue
        out["width"].append(image.width)
        out["height"].append(image.height)
        out["pixels"].append(image.tobytes())
        out["skipped"].append(None)
    return pa.Table.from_pydict(out, schema=DECODED_SCHEMA)


class ModelActor:
    """A Ray Data callable class: one model per actor, built once from the model file's bytes
    (an object-store reference: every actor reads the one copy the driver put there, nothing is
    downloaded again), then :meth:`__call__` per batch of decoded rows.

    ``checkpoint``: a one-item list holding the ``ObjectRef`` of the model file's bytes (a
    list, so that Ray hands the reference over instead of resolving it): the checkpoint, or the
    exported file of a non-torch ``runtime``. ``options``: the prediction settings the actor
    needs (``device``, ``batch_size``, ``num_top``, ``score_threshold``, ``pictures``,
    ``max_drawn``, ``salient_points``, ``runtime``).
    """

    def __init__(self, checkpoint: list[Any], options: dict[str, Any]) -> None:
        import ray

        self.options = dict(options)
        runtime = self.options["runtime"]
        with tempfile.TemporaryDirectory(prefix="samdetr-predict-") as folder:
            # An exported file's runner is chosen by its suffix; a checkpoint's name is free.
            path = Path(folder) / f"model{SUFFIXES.get(runtime, '.pt')}"
            path.write_bytes(ray.get(checkpoint[0]))
            self.predictor = open_predictor(str(path), runtime, self.options["device"],
                                            self.options["batch_size"], self.options["num_top"])

    def __call__(self, batch: pa.Table) -> pa.Table:
        from PIL import Image

        rows = batch.to_pylist()
        images = {i: Image.frombytes("RGB", (row["width"], row["height"]), row["pixels"])
                  for i, row in enumerate(rows) if row["skipped"] is None}
        results = self._detect(images, rows)
        out: dict[str, list[Any]] = {name: [] for name in DETECTED_SCHEMA.names}
        for i, row in enumerate(rows):
            for name in ("image_id", "file_name", "width", "height", "skipped"):
                out[name].append(row[name])
            result = results.get(i)
            if result is None:  # skipped, by decoding or here
                for name in ("scores", "labels", "names", "boxes"):
                    out[name].append([])
                out["picture"].append(None)
                continue
            labels = result["labels"].tolist()
            out["scores"].append(result["scores"].tolist())
            out["labels"].append(labels)
            out["names"].append([self.predictor.category_names.get(label, "")
                                 for label in labels])
            out["boxes"].append(result["boxes"].tolist())
            out["picture"].append(png_bytes(picture(
                images[i], result, self.predictor.category_names, self.options["max_drawn"],
                self.options["salient_points"])) if self.options["pictures"] else None)
        return pa.Table.from_pydict(out, schema=DETECTED_SCHEMA)

    def _detect(self, images: dict[int, Any], rows: list[dict[str, Any]]) -> dict[int, Any]:
        """``{row: result above the threshold}``; a batch that fails is run image by image so
        that only the image that fails is skipped (its row's ``skipped`` set)."""
        order = list(images)
        try:
            found = self.predictor([images[i] for i in order], exif_transpose=False)
        except Exception:  # noqa: BLE001 - found again image by image below
            found = []
            for i in order:
                try:
                    found.extend(self.predictor([images[i]], exif_transpose=False))
                except Exception as err:  # noqa: BLE001 - this image skipped, not the batch
                    rows[i]["skipped"] = skip_reason(err)
                    found.append(None)
        threshold = self.options["score_threshold"]
        return {i: above(result, threshold)
                for i, result in zip(order, found, strict=True) if result is not None}
