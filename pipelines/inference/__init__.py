"""Using a checkpoint or a registered model: COCO evaluation on shards, and prediction on images.
"""
