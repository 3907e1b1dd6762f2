"""The detector, one module per box of the paper's diagram, and what trains and reads it.

``backbone`` (ResNet, frozen BatchNorm) -> ``position_encoding`` -> ``encoder`` ->
``decoder`` (whose SAM layers use ``semantic_aligner`` and ``attention``) joined by
``transformer``; ``detector`` wraps them with the input projection and the per-layer heads.
``matcher`` and ``criterion`` give the training losses, ``postprocess`` the detections.
Nothing here imports :mod:`samdetr.data`: the model only sees padded tensors.
"""
