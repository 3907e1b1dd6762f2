"""samdetr: a PyTorch implementation of SAM-DETR (Semantic-Aligned-Matching DETR, CVPR 2022).

Quick use::

    from samdetr import build_model, load_official, preset, PostProcess, Predictor

    model = build_model(preset("sam_detr_r50_smca_e50"))        # random init, no download
    model, config = load_official("checkpoint.pth")               # an official checkpoint
    detections = PostProcess()(model(images), original_sizes)    # top-100, absolute xyxy
    predictor = Predictor.from_checkpoint("checkpoint.pt")        # encoded bytes -> detections

Layout: :mod:`samdetr.model` holds the boxes of the paper's diagram (backbone, encoder,
semantic aligner, decoder, detector) and the matcher, losses and post-processing;
:mod:`samdetr.data` the data path (COCO rows, Parquet shards, decoding, augmentation, loading);
:mod:`samdetr.engine` what joins them (optimiser, train/eval loop, COCO evaluation). The modules
at the top build a model from its config, save and load checkpoints and run inference.
"""

from samdetr.batching import pad_images
from samdetr.builder import build_criterion, build_model, count_trainable_parameters
from samdetr.checkpoint import load_checkpoint, save_checkpoint
from samdetr.config import (
    PRESETS,
    BackboneConfig,
    DetectorConfig,
    LossConfig,
    ModelConfig,
    preset,
)
from samdetr.engine.coco_eval import COCOEvaluator, evaluate_detections
from samdetr.inference import Predictor, detections_table
from samdetr.model.detector import SAMDETR
from samdetr.model.postprocess import PostProcess
from samdetr.official import load_official
from samdetr.visualize import draw_detections

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
    "Predictor",
    "build_criterion",
    "build_model",
    "count_trainable_parameters",
    "detections_table",
    "draw_detections",
    "evaluate_detections",
    "load_checkpoint",
    "load_official",
    "pad_images",
    "preset",
    "save_checkpoint",
]
