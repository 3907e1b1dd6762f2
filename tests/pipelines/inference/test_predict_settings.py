"""What python -m pipelines.predict checks before it runs, and the parts of its Ray engine that
need no Ray: the decoding stage, the writer of parts (each image once), GPUs per actor."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.inference.batch_predict import PartWriter, gpus_per_actor
from pipelines.inference.predict import PredictSettings, run_predict
from pipelines.inference.predict_sources import shard_set_of
from pipelines.inference.predict_workers import DETECTED_SCHEMA, decode_rows
from samdetr.data.synthetic import write_synthetic_shards


@pytest.mark.parametrize("node, message", [
    ({"engine": "spark"}, "engine must be one of local, ray, got 'spark'"),
    ({"engine": "ray", "actors": 0}, "actors must be an integer >= 1, got 0"),
    ({"engine": "ray", "actors": True}, "actors must be an integer >= 1"),
    ({"engine": "ray", "cpus_per_actor": -1}, "cpus_per_actor must be a number >= 0"),
    ({"engine": "ray", "gpus_per_actor": "many"}, r"gpus_per_actor \(or auto\) must be a number"),
    ({"engine": "ray", "gpus_per_actor": -0.5}, r"gpus_per_actor \(or auto\) must be a number"),
    ({"engine": "ray", "part_images": 0}, "part_images must be an integer >= 1"),
    ({"engine": "ray", "ray_address": " "}, "ray_address must be a Ray address"),
    ({"ray_address": "ray://head:10001"}, "ray_address is used by engine=ray only"),
])
def test_bad_engine_settings_get_clear_errors(node, message):
    with pytest.raises(ValueError, match=message):
        PredictSettings(**{"checkpoint": "c.pt", "images": "x", "output": "o", **node})


def test_good_engine_settings():
    config = PredictSettings(checkpoint="c.pt", images="x", output="o", engine="ray",
                             actors=4, cpus_per_actor=0.5, gpus_per_actor=0.25,
                             ray_address="auto", part_images=10)
    assert (config.actors, config.gpus_per_actor, config.part_images) == (4, 0.25, 10)
    assert PredictSettings(checkpoint="c.pt", images="x", output="o").engine == "local"


def test_gpus_per_actor():
    assert gpus_per_actor("auto", {"CPU": 8.0, "GPU": 2.0}) == 1.0
    assert gpus_per_actor("auto", {"CPU": 8.0}) == 0.0
    assert gpus_per_actor(0.5, {"CPU": 8.0}) == 0.5


def test_a_shard_set_is_recognised_and_refused_by_the_local_engine(tmp_path):
    write_synthetic_shards(tmp_path / "data", tmp_path / "shards", 2, seed=0, split="val",
                           image_size=(40, 60))
    assert shard_set_of(str(tmp_path / "shards")) == str(tmp_path / "shards")
    assert shard_set_of([str(tmp_path / "shards")]) == str(tmp_path / "shards")
    for other in (str(tmp_path / "data" / "images"), str(tmp_path / "shards" / "*.parquet"),
                  [str(tmp_path / "shards"), str(tmp_path / "data")], str(tmp_path / "none")):
        assert shard_set_of(other) is None
    with pytest.raises(ValueError, match="is a shard set: engine=ray reads shard sets"):
        run_predict(PredictSettings(checkpoint="c.pt", images=str(tmp_path / "shards"),
                                    output=str(tmp_path / "o")))


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_decoding_skips_what_it_cannot_read(tmp_path):
    (tmp_path / "a.png").write_bytes(_png(5, 3))
    (tmp_path / "b.jpg").write_bytes(b"garbage")
    files = [str(tmp_path / n) for n in ("a.png", "b.jpg", "gone.png")]
    out = decode_rows(pa.table({"image_id": [0, 1, 2], "file_name": files}),
                      exif_transpose=True).to_pylist()
    assert [(r["image_id"], r["width"], r["height"]) for r in out] == [(0, 5, 3), (1, 0, 0),
                                                                       (2, 0, 0)]
    assert out[0]["pixels"] == bytes([10, 20, 30]) * 15 and out[0]["skipped"] is None
    assert out[1]["skipped"].startswith("ValueError: could not decode")
    assert out[2]["skipped"].startswith("FileNotFoundError")
    # Shard rows carry their bytes (and their orientation): nothing is read from disk.
    shard = decode_rows(pa.table({"image_id": [7], "file_name": ["x/never-read.png"],
                                  "image": [_png(4, 2)], "exif_transpose": [False]}),
                        exif_transpose=True).to_pylist()
    assert (shard[0]["width"], shard[0]["height"], shard[0]["skipped"]) == (4, 2, None)


def _detected(image_id: int, detections: int, skipped: str | None = None) -> dict:
    return {"image_id": image_id, "file_name": f"/p/{image_id}.jpg", "width": 10, "height": 8,
            "skipped": skipped, "scores": [0.9 - 0.1 * k for k in range(detections)],
            "labels": [1] * detections, "names": ["square"] * detections,
            "boxes": [[1.0, 2.0, 5.0, 6.0]] * detections,
            "picture": _png(10, 8) if skipped is None else None}


def test_the_writer_writes_each_image_once_in_parts(tmp_path):
    writer = PartWriter(tmp_path, part_images=2)
    writer.add(pa.Table.from_pylist([_detected(2, 1), _detected(0, 2)], schema=DETECTED_SCHEMA))
    assert sorted(p.name for p in (tmp_path / "detections").iterdir()) == ["part-00000.parquet"]
    writer.add(pa.Table.from_pylist([_detected(0, 2), _detected(1, 0, "ValueError: bad"),
                                     _detected(3, 3)], schema=DETECTED_SCHEMA))
    summary = writer.close()
    assert summary == {"images": 3, "skipped": 1, "detections": 6, "parts": 2, "repeats": 1,
                       "output": str(tmp_path)}
    rows = pq.read_table(tmp_path / "detections").to_pylist()
    assert sorted(r["image_id"] for r in rows) == [0, 0, 2, 3, 3, 3]
    assert rows[0]["name"] == "square" and rows[0]["x2"] == 5.0
    results = [r for n in ("part-00000.json", "part-00001.json")
               for r in json.loads((tmp_path / "results" / n).read_text())]
    assert len(results) == 6 and results[0]["bbox"] == [1.0, 2.0, 4.0, 4.0]
    assert [i["id"] for i in json.loads((tmp_path / "images.json").read_text())] == [0, 2, 3]
    assert (tmp_path / "skipped.txt").read_text() == "/p/1.jpg\tValueError: bad\n"
    assert sorted(p.name for p in (tmp_path / "pictures").iterdir()) == [
        "000000_0.png", "000002_2.png", "000003_3.png"]
