"""Generate a synthetic COCO-format detection data set (deterministic by seed).

    python -m pipelines.make_synthetic out_dir=data/synthetic/train num_images=200 seed=0

Writes ``images/`` and ``annotations.json``; then
``python -m pipelines.preprocess data=synthetic`` turns it into shards.
"""

from __future__ import annotations

from pipelines.cli.config_store import settings_dict
from pipelines.data.synthetic import write_synthetic


def main() -> None:
    import hydra
    from omegaconf import DictConfig


    @hydra.main(version_base="1.3", config_path="../conf", config_name="make_synthetic")
    def _run(cfg: DictConfig) -> None:
        summary = write_synthetic(settings_dict(cfg))  # without output_root
        print(
            f"wrote {summary['num_images']} images, {summary['num_annotations']} boxes, "
            f"K = {summary['num_classes']} to {summary['annotation_file']}"
        )

    _run()


if __name__ == "__main__":
    main()
