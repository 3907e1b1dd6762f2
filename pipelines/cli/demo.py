"""The demo's walkthrough (``python -m pipelines.demo``, ``make demo``): synthetic shapes ->
Parquet shards with Ray Data -> the small SAM-DETR of the from-scratch recipe
(``experiment=shapes_small``) trained by Ray Train with 2 CPU workers -> COCO evaluation every
epoch -> an MLflow run in ``<out>/mlflow.db`` with metrics, the convergence plot, prediction
pictures and the registered model. Re-running resumes the same run; ``--fresh`` starts over.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pipelines.cli.config_store import register_defaults, settings_dict
from pipelines.common.console import connect
from pipelines.data.shapes import shapes_shards
from pipelines.inference.evaluate import EvaluateSettings, format_metrics, run_evaluate
from pipelines.training.run import format_summary as train_summary
from pipelines.training.run import run_training
from pipelines.training.settings import REGISTERED_MODEL, TrainSettings
from samdetr.checkpoint import read_checkpoint

CONF = Path(__file__).resolve().parents[2] / "conf"


def parser() -> argparse.ArgumentParser:
    """The demo's command line (its flags and their defaults)."""
    parse = argparse.ArgumentParser(
        prog="python -m pipelines.demo",
        description="`make demo`: the whole pipeline on the embedded defaults, in one process.")
    parse.add_argument("--out", type=Path, default=Path("outputs/demo"))
    parse.add_argument("--epochs", type=int, default=None,
                       help="epochs to train (default: the recipe's, 28)")
    parse.add_argument("--workers", type=int, default=2)
    parse.add_argument("--train-images", type=int, default=320)
    parse.add_argument("--val-images", type=int, default=80)
    parse.add_argument("--fresh", action="store_true", help="delete --out first")
    parse.add_argument("--verbose", action="store_true",
                       help="show Ray's own INFO logs and progress output too")
    return parse


def run_demo(args: argparse.Namespace) -> None:
    """Every step of the walkthrough, printing as it goes (``args``: :func:`parser`'s)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # embedded Ray: no token needed
    out = args.out.resolve()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    start = time.perf_counter()
    # One embedded Ray for every step; worker lines (epoch lines, progress bar) shown here.
    connect(verbose=args.verbose, log_to_driver=True)

    print("== 1/4 synthetic COCO-format data, 2/4 shards with Ray Data")
    shapes_shards(out, {"train": args.train_images, "val": args.val_images}, args.verbose)

    settings, config_yaml = demo_settings(out, args.epochs, args.workers, args.verbose)
    print(f"== 3/4 training with Ray Train ({args.workers} CPU workers, "
          f"{settings.trainer.epochs} epochs)")
    summary = run_training(settings, config_yaml)
    print(train_summary(summary))

    print("== 4/4 evaluation of the best checkpoint (one process, same numbers as reported)")
    result = run_evaluate(EvaluateSettings(
        shards=str(out / "shards/val"), checkpoint=summary["best_checkpoint"],
        output=str(out / "metrics.json"),
    ))
    print(format_metrics(result))
    _print_history(summary)
    print(f"\ndone in {time.perf_counter() - start:.0f}s. Open the MLflow UI with:\n"
          f"   mlflow ui --backend-store-uri {summary['tracking_uri']}\n"
          f"and look at run {summary['mlflow_run_id']} of experiment samdetr-demo "
          "(metrics, convergence.png, predictions/).")


def demo_settings(out: Path, epochs: int | None, workers: int, verbose: bool = False
                  ) -> tuple[TrainSettings, str]:
    """The training run's settings (``experiment=shapes_small`` on the demo's folders under
    ``out``) and the composed config's YAML."""
    overrides = [
        "experiment=shapes_small",
        f"data.train_shards={out / 'shards/train'}",
        f"data.val_shards={out / 'shards/val'}",
        f"trainer.storage_path={out / 'ray'}",
        *([f"trainer.epochs={epochs}"] if epochs else []),
        f"trainer.num_workers={workers}",
        f"tracking.tracking_uri=sqlite:///{out / 'mlflow.db'}",
        f"tracking.artifact_location={out / 'mlartifacts'}",
        "tracking.experiment=samdetr-demo",
        f"tracking.registered_model={REGISTERED_MODEL}",
        "tracking.alias=candidate",
        f"trainer.verbose={str(verbose).lower()}",
    ]
    register_defaults()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    return TrainSettings.from_dict(settings_dict(cfg)), OmegaConf.to_yaml(cfg, resolve=True)


def _print_history(summary: dict) -> None:
    payload = read_checkpoint(summary["latest_checkpoint"])
    print("\nCOCO AP on the validation images, epoch by epoch (# = 1 AP50 point):")
    for entry in payload["history"]:
        bar = "#" * int(round(100 * max(entry["AP50"], 0.0)))  # one # per AP50 point
        print(f"   epoch {entry['epoch'] + 1:2d}  AP {100 * entry['AP']:5.2f}%  AP50 "
              f"{100 * entry['AP50']:5.2f}%  loss {entry['loss']:7.3f}  {bar}")
