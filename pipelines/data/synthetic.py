"""The settings of a synthetic COCO-format data set and its writing
(``python -m pipelines.make_synthetic`` is its command line, and its docstring the usage)."""

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


def write_synthetic(settings: dict[str, Any]) -> dict[str, Any]:
    """Validate the plain settings dict and write the data set; returns the summary."""
    chosen = SyntheticSettings(**known_fields(SyntheticSettings, settings, "make_synthetic"))
    kwargs = dataclasses.asdict(chosen)
    for name in ("image_size", "classes", "object_size"):  # YAML gives lists
        kwargs[name] = tuple(kwargs[name])
    return make_synthetic_coco(**kwargs)
