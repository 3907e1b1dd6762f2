"""A data set (COCO JSON, YOLO or Pascal VOC) -> Parquet shards + manifest, in parallel with
Ray Data.

    python -m pipelines.preprocess data=coco128 split=train output=/tmp/shards
    python -m pipelines.preprocess data.annotations=s3://bucket/ann.json \
        data.images=s3://bucket/images output=s3://bucket/shards/train
    python -m pipelines.preprocess data=custom data.name=pets data.format=yolo \
        data.annotations=/data/pets-yolo/data.yaml split=val
    python -m pipelines.preprocess data=custom data.name=pets data.format=voc \
        data.root=/data/pets-voc "data.classes=[cat,dog]" split=val
    python -m pipelines.preprocess data=coco128 "data.keep_classes=[person,car,truck]" \
        "data.rename_classes={car:vehicle,truck:vehicle}" data.val_fraction=0.2 split=val

Runs on the embedded local Ray by default and unchanged on a cluster (``ray_address=auto`` or
``RAY_ADDRESS``, e.g. inside ``ray job submit``). The manifest is written last: a run that dies
part-way leaves a folder without one, which readers refuse as incomplete.
"""

from __future__ import annotations

from pipelines.cli.config_store import settings_dict
from pipelines.data.shards import PreprocessSettings, format_summary, run_preprocess


def main() -> None:
    import hydra
    from omegaconf import DictConfig


    @hydra.main(version_base="1.3", config_path="../conf", config_name="preprocess")
    def _run(cfg: DictConfig) -> None:
        settings = PreprocessSettings.from_config(settings_dict(cfg))  # without output_root
        manifest = run_preprocess(settings, progress=print)
        print(format_summary(manifest))

    _run()


if __name__ == "__main__":
    main()
