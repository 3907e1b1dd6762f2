"""samdetr: a PyTorch implementation of SAM-DETR (Semantic-Aligned-Matching DETR, CVPR 2022)."""

__version__ = "0.1.0"
