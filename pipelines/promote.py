"""Promote the registered ``challenger`` to ``champion`` if it scores better, or roll back.

    python -m pipelines.promote registered_model=sam-detr shards=outputs/shards/coco/holdout
    python -m pipelines.promote registered_model=sam-detr shards=... margin=0.005 metric=AP50
    python -m pipelines.promote registered_model=sam-detr rollback=true
    python -m pipelines.promote shards=... tracking_uri=sqlite:///outputs/demo/mlflow.db
    python -m pipelines.promote challenger_model=sam-detr-candidates shards=...

The challenger and the champion are downloaded, checked (same categories, as the evaluation set's;
neither trained on the evaluation set; files complete) and scored on the same shards by the same
code (:func:`pipelines.inference.evaluate.evaluate_mlflow_model`). Each scoring is an MLflow
evaluation run;
the decision and its reason are tags on both versions and on the registered model, so the
registry alone says which version is champion, why, and since when (:mod:`pipelines.promotion.gate`
has the rules). A refusal moves no alias and exits with status 2. With ``challenger_model``
the proposed version comes from that registered model and is copied into ``registered_model``
first (:func:`propose`). The registry, the models' files and the evaluation runs are all in one
store: ``tracking_uri``, else $MLFLOW_TRACKING_URI, else ./mlflow.db.
"""

from __future__ import annotations

import sys

from pipelines.cli.config_store import register_defaults, settings_dict
from pipelines.promotion.gate import PromoteSettings
from pipelines.promotion.promote import format_decision, run_promote
from pipelines.registry.evaluation_record import refuse_experiment_override


def main() -> None:
    import hydra
    from omegaconf import DictConfig

    from samdetr.config import known_fields

    try:
        refuse_experiment_override(sys.argv[1:], "promote")
    except ValueError as err:
        print(f"[promote] {err}", flush=True)
        raise SystemExit(2) from None
    register_defaults()  # promote_base, the node conf/promote.yaml starts from

    @hydra.main(version_base="1.3", config_path="../conf", config_name="promote")
    def _run(cfg: DictConfig) -> None:
        plain = settings_dict(cfg)
        try:
            out = run_promote(PromoteSettings(**known_fields(PromoteSettings, plain, "promote")))
        except ValueError as err:  # refusals and bad settings: a message, not a traceback
            print(f"[promote] {err}", flush=True)
            raise SystemExit(2) from None
        print(format_decision(out), flush=True)

    _run()


if __name__ == "__main__":
    main()
