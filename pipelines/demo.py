"""`make demo`: the whole pipeline on the embedded defaults, in one process.

    python -m pipelines.demo [--out outputs/demo] [--epochs 28] [--train-images 320] [--verbose]

Synthetic shapes (3 classes; :mod:`pipelines.data.shapes`) -> Parquet shards with Ray Data ->
the small SAM-DETR of the from-scratch recipe (``experiment=shapes_small``) trained by Ray Train
with 2 CPU workers -> COCO evaluation every epoch -> an MLflow run
in ``<out>/mlflow.db`` with metrics, the convergence plot, prediction pictures and the model.
Re-running resumes the same run (finished epochs are not trained again); ``--fresh`` starts over.
``--verbose`` shows Ray's own INFO logs and progress output as well (see docs/training.md).
"""

from __future__ import annotations

from pipelines.cli.demo import parser, run_demo


def main(argv: list[str] | None = None) -> None:
    run_demo(parser().parse_args(argv))


if __name__ == "__main__":
    main()
