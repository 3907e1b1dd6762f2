"""Generate a synthetic COCO-format detection data set (deterministic by seed).

    python -m pipelines.make_synthetic out_dir=data/synthetic/train num_images=200 seed=0

Writes ``images/`` and ``annotations.json``; then
``python -m pipelines.preprocess data=synthetic`` turns it into shards.
"""

from __future__ import annotations

from typing import Any

from samdetr.data.synthetic import make_synthetic_coco

_KEYS = (
    "out_dir", "num_images", "seed", "image_size", "classes", "max_objects", "object_size",
    "image_format",
)


def run(settings: dict[str, Any]) -> dict[str, Any]:
    """Validate the plain settings dict and write the data set; returns the summary."""
    unknown = sorted(set(settings) - set(_KEYS))
    if unknown:
        raise ValueError(f"unknown make_synthetic settings {unknown}; known: {list(_KEYS)}")
    kwargs = dict(settings)
    kwargs["image_size"] = tuple(kwargs.get("image_size", (192, 320)))
    kwargs["classes"] = tuple(kwargs.get("classes", ("square", "disc", "triangle")))
    if "object_size" in kwargs:
        kwargs["object_size"] = tuple(kwargs["object_size"])
    return make_synthetic_coco(**kwargs)


def main() -> None:
    import hydra
    from omegaconf import DictConfig, OmegaConf

    @hydra.main(version_base="1.3", config_path="../conf", config_name="make_synthetic")
    def _run(cfg: DictConfig) -> None:
        summary = run(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True))
        print(
            f"wrote {summary['num_images']} images, {summary['num_annotations']} boxes, "
            f"K = {summary['num_classes']} to {summary['annotation_file']}"
        )

    _run()


if __name__ == "__main__":
    main()
