#!/usr/bin/env bash
# The fine-tuning study of docs/fine-tuning.md, end to end on this machine (~30 min on 2 CPUs).
# Task A: squares, discs and triangles (category ids 1, 3, 7; K = 8). Task B: diamonds and rings
# (ids 1, 3; K = 4): another category set and count, the same kind of images. The shapes_small
# recipe trains on A and is registered; then, on B, it trains from scratch and fine-tuned from
# that registered version (models:/shapes-a/1: every tensor but the class heads), 3 seeds each,
# the same epochs. The study writes its table and plot into docs/fine-tuning.md.
#   bash bench/finetune_study.sh [OUT]        (default OUT: outputs/finetune-study)
#   EPOCHS_A, EPOCHS_B: epochs on task A (default 28, the recipe's) and on B (default 10).
set -euo pipefail
OUT=$(realpath -m "${1:-outputs/finetune-study}")
PY=${PYTHON:-.venv/bin/python}
EPOCHS_A=${EPOCHS_A:-28}
EPOCHS_B=${EPOCHS_B:-10}
export RAY_AUTH_MODE=disabled MLFLOW_TRACKING_URI="sqlite:///$OUT/mlflow.db"
SHAPES="image_size=[128,192] max_objects=2 object_size=[0.3,0.55]"
mkdir -p "$OUT"

for task in a:square,disc,triangle b:diamond,ring; do
  IFS=: read -r name classes <<< "$task"
  for split in train:320:0 val:80:1; do
    IFS=: read -r part count seed <<< "$split"
    [ -f "$OUT/$name/shards/$part/manifest.json" ] && continue
    $PY -m pipelines.make_synthetic out_dir="$OUT/$name/data/$part" num_images="$count" \
      seed="$seed" classes="[$classes]" $SHAPES
    $PY -m pipelines.preprocess data=synthetic split="$part" output="$OUT/$name/shards/$part" \
      data.annotations="$OUT/$name/data/$part/annotations.json" \
      data.images="$OUT/$name/data/$part/images"
  done
done

# Task A, registered: what the fine-tuned runs start from.
$PY -m pipelines.train experiment=shapes_small trainer.run_name=task-a \
  trainer.epochs="$EPOCHS_A" trainer.storage_path="$OUT/ray" \
  data.train_shards="$OUT/a/shards/train" data.val_shards="$OUT/a/shards/val" \
  tracking.experiment=finetune-study tracking.artifact_location="$OUT/mlartifacts" \
  tracking.registered_model=shapes-a

# Task B: from scratch against fine-tuned, same recipe, budget and seeds.
$PY -m pipelines.study study.name=finetune '~study.variants' \
  '+study.variants={scratch:{},finetuned:{init.weights:"models:/shapes-a/1"}}' \
  study.baseline=scratch study.make_data=null study.report=docs/fine-tuning.md \
  model.num_classes=4 trainer.epochs="$EPOCHS_B" trainer.storage_path="$OUT/ray" \
  data.train_shards="$OUT/b/shards/train" data.val_shards="$OUT/b/shards/val" \
  tracking.experiment=finetune-study
