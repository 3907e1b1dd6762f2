"""samdetr: a PyTorch implementation of SAM-DETR (Semantic-Aligned-Matching DETR, CVPR 2022).

Quick use::

    from samdetr import build_model, load_official, preset, PostProcess

    model = build_model(preset("sam_detr_r50_smca_e50"))        # random init, no download
    model, config = load_official("checkpoint.pth")               # an official checkpoint
    detections = PostProcess()(model(images), original_sizes)    # top-100, absolute xyxy
"""

from samdetr.batching import pad_images
from samdetr.builder import build_criterion, build_model, count_trainable_parameters
from samdetr.checkpoint import load_checkpoint, save_checkpoint
from samdetr.coco_eval import COCOEvaluator, evaluate_detections
from samdetr.config import (
    PRESETS,
    BackboneConfig,
    DetectorConfig,
    LossConfig,
    ModelConfig,
    preset,
)
from samdetr.detector import SAMDETR
from samdetr.official import load_official
from samdetr.postprocess import PostProcess

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "SAMDETR",
    "BackboneConfig",
    "COCOEvaluator",
    "DetectorConfig",
    "LossConfig",
    "ModelConfig",
    "PostProcess",
    "build_criterion",
    "build_model",
    "count_trainable_parameters",
    "evaluate_detections",
    "load_checkpoint",
    "load_official",
    "pad_images",
    "preset",
    "save_checkpoint",
]
