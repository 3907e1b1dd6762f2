"""This project's checkpoints: the model's state dict together with its config.

A checkpoint is a plain dict of tensors, numbers and strings, so it loads with
``torch.load(weights_only=True)`` and a model rebuilds from it with ``samdetr`` alone.

A training checkpoint may also hold the moving average of the weights (``ema``: ``{"model":
state dict, "updates": n}``, :mod:`samdetr.engine.ema`) and say which of the two is its model
(``weights``: ``"ema"`` or ``"raw"``): ``model`` is always the trained weights (a resume goes on
from them), :func:`model_state` the ones to use.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from samdetr.builder import build_model
from samdetr.config import DetectorConfig
from samdetr.model.detector import SAMDETR, unwrap_model

FORMAT = "samdetr-checkpoint"
VERSION = 1


def save_checkpoint(
    path: str | Path, model: nn.Module, config: DetectorConfig, **extra: Any
) -> Path:
    """Write ``model``'s weights, ``config`` and ``extra`` entries (e.g. ``optimizer``,
    ``epoch``) to ``path`` atomically: a crash mid-write never leaves a truncated file.

    Extra entries must be weights-only loadable (tensors, numbers, strings, lists, dicts).
    """
    if not isinstance(config, DetectorConfig):
        raise TypeError(f"config must be a DetectorConfig, got {type(config).__name__}")
    reserved = {"format", "version", "config", "model"} & set(extra)
    if reserved:
        raise ValueError(f"extra entries may not use the reserved names {sorted(reserved)}")
    inner = unwrap_model(model)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": config.to_dict(),
        "model": inner.state_dict(),
        **extra,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict safely (``weights_only=True``) and check its format."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError...
        raise ValueError(f"{path} is not a readable samdetr checkpoint: {err}") from err
    check_payload(payload, path)
    return payload


def check_payload(payload: Any, path: str | Path) -> None:
    """ValueError unless ``payload`` (loaded from ``path``) is a checkpoint of this format and
    version."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(
            f"{path} is not a samdetr checkpoint (for official SAM-DETR files use "
            "samdetr.official.load_official)"
        )
    if payload.get("version") != VERSION:
        raise ValueError(
            f"{path} has checkpoint version {payload.get('version')}, expected {VERSION}"
        )


def model_state(payload: dict[str, Any]) -> dict[str, Any]:
    """The state dict a checkpoint's user loads: the moving average's when the checkpoint
    says ``weights="ema"``, else ``model``."""
    weights = payload.get("weights", "raw")
    if weights == "raw":
        return payload["model"]
    if weights == "ema" and isinstance(payload.get("ema"), dict) and "model" in payload["ema"]:
        return payload["ema"]["model"]
    raise ValueError(f"checkpoint says weights={weights!r} but holds no such weights "
                     "(expected 'raw', or 'ema' with an 'ema' entry)")


def load_checkpoint(
    path: str | Path,
    map_location: str | torch.device = "cpu",
) -> tuple[SAMDETR, DetectorConfig, dict[str, Any]]:
    """Rebuild the model from a checkpoint (with the weights :func:`model_state` picks):
    ``(model, config, extra entries)``."""
    payload = read_checkpoint(path, map_location)
    config = DetectorConfig.from_dict(payload["config"])
    model = build_model(config)
    model.load_state_dict(model_state(payload), strict=True)
    extra = {k: v for k, v in payload.items() if k not in ("format", "version", "config", "model")}
    return model, config, extra
