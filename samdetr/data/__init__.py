"""The data path, from COCO files to padded batches.

``coco_source`` (COCO JSON; ``yolo_source`` and ``voc_source`` read YOLO and Pascal VOC data
into the same; ``class_map`` keeps, renames and merges its classes, ``source_split`` carves a
seeded val split out of it) ->
``coco_rows`` (validated rows of ``row_schema``) -> ``shard_writer`` and ``shards`` (Parquet
shards and their manifest, on ``storage``: local paths or object-store URIs) -> ``images``
(decoding) -> ``transforms`` (augmentation) -> ``loader`` and ``samplers`` (rows to batches).
``synthetic`` writes a generated COCO-format data set.
Nothing here imports :mod:`samdetr.model`.
"""
