"""A tiny training run for the Ray tests: synthetic shards and the settings of a small model."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from samdetr.data.synthetic import write_synthetic_shards

TINY_MODEL = {
    "backbone": {"name": "resnet18"}, "hidden_dim": 32, "num_heads": 4,
    "num_salient_points": 4, "num_encoder_layers": 1, "num_decoder_layers": 2,
    "dim_feedforward": 64, "dropout": 0.0, "num_queries": 8, "num_classes": 8,
}
TRAIN_TRANSFORM = {"scales": [80, 96], "max_size": 128, "crop_sizes": [80], "crop_range": [48, 80]}
EVAL_TRANSFORM = {"size": 80, "max_size": 128}


def write_shards(root: Path, split: str, count: int, seed: int) -> str:
    """``count`` synthetic 80x128 images with up to 3 shapes, as a shard set under ``root``."""
    write_synthetic_shards(root / "data" / split, root / "shards" / split, count, seed=seed,
                           split=split, image_size=(80, 128), max_objects=3)
    return str(root / "shards" / split)


def tiny_settings(train: str, val: str, storage: str, run_name: str, epochs: int,
                  tracking: dict[str, Any] | None = None, **trainer: Any) -> dict[str, Any]:
    """Plain settings (``TrainSettings.from_dict``) of a tiny run; tracking off unless given."""
    return {
        "model": dict(TINY_MODEL),
        "optim": {"lr": 2e-4, "lr_backbone": 2e-5},
        "data": {
            "name": "synthetic", "train_shards": train, "val_shards": val,
            "batch_size": 3, "eval_batch_size": 2, "shuffle_buffer": 4, "rows_per_block": 3,
            "train_transform": dict(TRAIN_TRANSFORM), "eval_transform": dict(EVAL_TRANSFORM),
        },
        "trainer": {
            "run_name": run_name, "storage_path": storage, "epochs": epochs,
            "num_workers": 2, "cpus_per_worker": 0.5, "log_every": 1, "num_pictures": 1,
            **trainer,
        },
        "tracking": tracking if tracking is not None else {"enabled": False},
    }


def train_in_background(plain: dict[str, Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """``run_training`` of ``plain`` in a started thread; ``outcome`` gets its ``summary`` or
    its ``error`` (for tests that act on the run while it trains: a node lost, a server down)."""
    from pipelines.training.run import run_training
    from pipelines.training.settings import TrainSettings

    outcome: dict[str, Any] = {}

    def train() -> None:
        try:
            outcome["summary"] = run_training(TrainSettings.from_dict(plain))
        except BaseException as err:  # noqa: BLE001 - reported by the test
            outcome["error"] = err

    runner = threading.Thread(target=train)
    runner.start()
    return runner, outcome
