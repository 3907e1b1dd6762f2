"""Data on Ray: COCO folders to Parquet shards (Ray Data), the synthetic shapes sets, and the Ray
Data input of a training run with its epoch clock.
"""
