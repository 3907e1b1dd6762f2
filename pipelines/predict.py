"""Detect objects in images with a registered model, a model version or a checkpoint.

    python -m pipelines.predict model_uri=models:/sam-detr@challenger images=photos/
    python -m pipelines.predict model_uri=models:/sam-detr/3 'images=s3://b/shots/*.jpg' \
        tracking_uri=http://mlflow:5000
    python -m pipelines.predict checkpoint=outputs/ray/shapes/epoch_0020 \
        'images=[a.jpg,b.png]' score_threshold=0.3 salient_points=true
    python -m pipelines.predict model_uri=models:/sam-detr@champion images=s3://b/shots \
        engine=ray actors=4 pictures=false
    python -m pipelines.predict model_uri=models:/sam-detr@champion images=photos/ runtime=onnx
    python -m pipelines.predict runtime=onnx exported=detector.onnx images=photos/

Writes into ``output``: ``results.json`` (COCO results: ``image_id``, ``category_id``, ``bbox``
``[x, y, w, h]``, ``score``, and the image's ``file_name``), ``images.json`` (the ids, files and
sizes), ``detections.csv`` (one row per detection) and, with ``pictures``, one picture per image
with boxes, class names, scores and, with ``salient_points``, each detection's salient points
(as in the paper's Figure 4). An image that cannot be read or decoded is listed in
``skipped.txt`` and on the console; the others go on. A model URI is looked up and downloaded in
the store ``tracking_uri`` (else $MLFLOW_TRACKING_URI, else ./mlflow.db), as in the other commands.

``engine=ray`` scales out: Ray Data reads and decodes the images (also a shard set folder of
``pipelines.preprocess``), a pool of ``actors`` model actors detects (``gpus_per_actor``: auto,
1 GPU each where the cluster has GPUs; ``cpus_per_actor``), and the outputs are written as they
come: ``detections/part-NNNNN.parquet`` (one row per detection) and ``results/part-NNNNN.json``
(COCO results) every ``part_images`` images, pictures, then ``images.json`` and
``skipped.txt``. A model actor that crashes is restarted and its batch run again: every image
is written exactly once.

``runtime=onnx`` (or ``exported_program``) runs a file of ``pipelines.export`` on the CPU instead
of the PyTorch model: ``exported=FILE``, or with ``model_uri`` the newest export of that model
(version) that ``pipelines.export`` recorded in the store with passed parity.
"""

from __future__ import annotations

from pipelines.inference.predict import PredictSettings, run_predict


def main() -> None:
    import hydra
    from omegaconf import DictConfig, OmegaConf

    from samdetr.config import known_fields

    @hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
    def _run(cfg: DictConfig) -> None:
        plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        plain.pop("output_root", None)
        run_predict(PredictSettings(**known_fields(PredictSettings, plain, "predict")))

    _run()


if __name__ == "__main__":
    main()
