#!/usr/bin/env bash
# The registry walkthrough of docs/registry.md, end to end on this machine (~10 min on 2 CPUs):
# the demo's synthetic shapes (train, val, and a held-out set with another seed), two training
# runs of the demo recipe registered as `challenger` (4 and 12 epochs), promotion of each, a
# rejected re-promotion of the older one, a rollback, and an evaluation of `@champion`.
#   bash bench/registry_walkthrough.sh [OUT]        (default OUT: outputs/registry-walkthrough)
set -euo pipefail
OUT=$(realpath -m "${1:-outputs/registry-walkthrough}")
PY=${PYTHON:-.venv/bin/python}
export RAY_AUTH_MODE=disabled MLFLOW_TRACKING_URI="sqlite:///$OUT/mlflow.db"
MODEL=sam-detr-demo
SHAPES="image_size=[128,192] max_objects=2 object_size=[0.3,0.55]"
mkdir -p "$OUT"

for split in train:320:0 val:80:1 holdout:80:2; do
  IFS=: read -r name count seed <<< "$split"
  [ -f "$OUT/shards/$name/manifest.json" ] && continue
  $PY -m pipelines.make_synthetic out_dir="$OUT/data/$name" num_images="$count" seed="$seed" $SHAPES
  $PY -m pipelines.preprocess data=synthetic split="$name" output="$OUT/shards/$name" \
    data.annotations="$OUT/data/$name/annotations.json" data.images="$OUT/data/$name/images"
done

train() {  # train EPOCHS: the demo recipe, registered as the new challenger
  $PY -m pipelines.train experiment=shapes_small trainer.epochs="$1" trainer.run_name="e$1" \
    trainer.storage_path="$OUT/ray" data.train_shards="$OUT/shards/train" \
    data.val_shards="$OUT/shards/val" tracking.experiment=samdetr-demo \
    tracking.artifact_location="$OUT/mlartifacts" tracking.registered_model=$MODEL \
    tracking.alias=challenger
}
promote() { $PY -m pipelines.promote registered_model=$MODEL shards="$OUT/shards/holdout" "$@"; }

train 4
promote threshold=0.01                 # no champion yet: the threshold decides
train 12
promote margin=0.005                   # the 12-epoch model against the 4-epoch champion
$PY - "$MODEL" <<'PY'                  # point challenger at version 1 again: a worse challenger
import sys
from mlflow import MlflowClient
MlflowClient().set_registered_model_alias(sys.argv[1], "challenger", "1")
PY
promote margin=0.005                   # rejected: champion stays
promote rollback=true                  # champion back to version 1
$PY -m pipelines.evaluate model_uri=models:/$MODEL@champion shards="$OUT/shards/holdout"
