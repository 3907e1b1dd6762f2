"""Where model and data meet: ``optim`` (the official AdamW recipe), ``loop`` (one training
epoch, one inference pass), ``reproducibility`` (seeds and RNG state), ``coco_eval`` (COCO box
AP with pycocotools) and ``evaluation`` (ground truth and loaders for a shard set)."""
