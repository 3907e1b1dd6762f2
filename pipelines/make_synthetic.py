"""Generate a synthetic COCO-format detection data set (deterministic by seed).

    python -m pipelines.make_synthetic out_dir=data/synthetic/train num_images=200 seed=0

Writes ``images/`` and ``annotations.json``; then
``python -m pipelines.preprocess data=synthetic`` turns it into shards.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from samdetr.config import known_fields
from samdetr.data.synthetic import make_synthetic_coco


@dataclass(frozen=True)
class SyntheticSettings:
    """``conf/make_synthetic.yaml``: arguments of :func:`samdetr.data.synthetic.make_synthetic_coco`
    (which checks their values)."""

    out_dir: str
    num_images: int
    seed: int = 0
    image_size: tuple[int, int] = (192, 320)
    classes: tuple[str, ...] = ("square", "disc", "triangle")
    max_objects: int = 6
    object_size: tuple[float, float] = (0.12, 0.4)
    image_format: str = "jpg"


def run(settings: dict[str, Any]) -> dict[str, Any]:
    """Validate the plain settings dict and write the data set; returns the summary."""
    chosen = SyntheticSettings(**known_fields(SyntheticSettings, settings, "make_synthetic"))
    kwargs = dataclasses.asdict(chosen)
    for name in ("image_size", "classes", "object_size"):  # YAML gives lists
        kwargs[name] = tuple(kwargs[name])
    return make_synthetic_coco(**kwargs)


def main() -> None:
    import hydra
    from omegaconf import DictConfig

    from pipelines.config_defaults import settings_dict

    @hydra.main(version_base="1.3", config_path="../conf", config_name="make_synthetic")
    def _run(cfg: DictConfig) -> None:
        summary = run(settings_dict(cfg))  # without output_root
        print(
            f"wrote {summary['num_images']} images, {summary['num_annotations']} boxes, "
            f"K = {summary['num_classes']} to {summary['annotation_file']}"
        )

    _run()


if __name__ == "__main__":
    main()
