"""Turns a validated config into modules, passing every part in explicitly."""

from __future__ import annotations

import copy

import torch
from torch import nn

from samdetr.config import DetectorConfig, ModelConfig
from samdetr.model.attention import (
    ConditionalCrossAttention,
    ConditionalSelfAttention,
    SalientPointCrossAttention,
)
from samdetr.model.backbone import build_resnet, load_backbone_state, load_backbone_weights
from samdetr.model.criterion import SetCriterion
from samdetr.model.decoder import BaselineDecoderLayer, SAMDecoderLayer, TransformerDecoder
from samdetr.model.deformable_attention import MultiScaleDeformableAttention
from samdetr.model.deformable_encoder import DeformableEncoder, DeformableEncoderLayer
from samdetr.model.detector import SAMDETR
from samdetr.model.encoder import TransformerEncoder, TransformerEncoderLayer
from samdetr.model.matcher import HungarianMatcher
from samdetr.model.mlp import MLP
from samdetr.model.multiscale_transformer import MultiScaleTransformer
from samdetr.model.position_encoding import PositionEmbeddingSine
from samdetr.model.semantic_aligner import SemanticAligner
from samdetr.model.transformer import Transformer


def _model_config(config: DetectorConfig | ModelConfig) -> ModelConfig:
    if isinstance(config, DetectorConfig):
        return config.model
    if isinstance(config, ModelConfig):
        return config
    raise TypeError(f"expected DetectorConfig or ModelConfig, got {type(config).__name__}")


def build_decoder_layer(cfg: ModelConfig) -> nn.Module:
    """One decoder layer of the kind ``cfg.decoder`` names."""
    d = cfg.hidden_dim
    self_attn = ConditionalSelfAttention(d, cfg.num_heads, cfg.dropout)
    if cfg.decoder == "baseline":
        cross = ConditionalCrossAttention(d, cfg.num_heads, cfg.dropout)
        return BaselineDecoderLayer(
            self_attn, cross, d, cfg.dim_feedforward, cfg.dropout, cfg.point_embed_grad
        )
    aligner = SemanticAligner(
        d,
        cfg.num_salient_points,
        predict_scales=cfg.smca,
        roi_size=cfg.roi_size,
        point_embed_grad=cfg.point_embed_grad,
        roi_align=cfg.roi_align,
    )
    cross = SalientPointCrossAttention(d, cfg.num_salient_points, cfg.dropout)
    return SAMDecoderLayer(
        self_attn,
        aligner,
        cross,
        d,
        cfg.dim_feedforward,
        cfg.dropout,
        smca_beta=cfg.smca_beta if cfg.smca else None,
        point_embed_grad=cfg.point_embed_grad,
    )


def build_model(config: DetectorConfig | ModelConfig, load_pretrained: bool = False,
                backbone_state: dict[str, torch.Tensor] | None = None) -> SAMDETR:
    """Build a randomly initialised detector from its config.

    With ``load_pretrained=True`` and ``backbone.weights`` set, the ImageNet backbone weights
    are loaded: ``backbone_state`` when given (those weights, already read, e.g. once for all
    the workers of a run), else read from ``backbone.weights``. Otherwise nothing is read from
    disk or network.
    """
    cfg = _model_config(config)
    d = cfg.hidden_dim
    b = cfg.backbone
    backbone = build_resnet(
        b.name, b.dilation, b.train_backbone, b.norm, b.trainable_layers, b.last_stage,
        num_levels=cfg.num_feature_levels if cfg.multiscale else 1,
    )
    if load_pretrained:
        if cfg.backbone.weights is None:
            raise ValueError("load_pretrained=True but model.backbone.weights is not set")
        if backbone_state is not None:
            load_backbone_state(backbone, backbone_state, cfg.backbone.weights)
        else:
            load_backbone_weights(backbone, cfg.backbone.weights)
    elif backbone_state is not None:
        raise ValueError("backbone_state is given but load_pretrained is false")
    # As the official code: one class head and one box head (PyTorch's default init; the box
    # heads are not part of the Xavier init below), cloned into every decoder layer, so all
    # layers start from the same heads and then train apart.
    box_heads = _clones(MLP(d, d, 4, 3), cfg.num_decoder_layers)
    decoder = TransformerDecoder(build_decoder_layer(cfg), cfg.num_decoder_layers, box_heads)
    if cfg.multiscale:
        input_proj, transformer = _multiscale_parts(cfg, backbone, decoder)
    else:
        proj = [nn.Conv2d(backbone.num_channels, d, kernel_size=1)]
        if cfg.input_proj_groupnorm:
            proj.append(nn.GroupNorm(32, d))
        input_proj = nn.Sequential(*proj)
        encoder = TransformerEncoder(
            TransformerEncoderLayer(d, cfg.num_heads, cfg.encoder_ffn, cfg.dropout),
            cfg.num_encoder_layers,
        )
        transformer = Transformer(encoder, decoder)
    transformer.reset_parameters()
    class_heads = _clones(nn.Linear(d, cfg.num_classes), cfg.num_decoder_layers)
    model = SAMDETR(
        backbone=backbone,
        position_encoding=PositionEmbeddingSine(d // 2),
        input_proj=input_proj,
        transformer=transformer,
        class_heads=class_heads,
        num_queries=cfg.num_queries,
        aux_loss=cfg.aux_loss,
        attention_kernel=cfg.attention_kernel,
        multiscale=cfg.multiscale,
    )
    model.reset_head_parameters()
    return model


def _multiscale_parts(cfg: ModelConfig, backbone: nn.Module,
                      decoder: TransformerDecoder) -> tuple[nn.ModuleList, MultiScaleTransformer]:
    """One input projection per level (1x1 conv + GroupNorm(32, D), Xavier with zero bias as
    the official code) and the multiscale transformer with its deformable encoder."""
    d, levels = cfg.hidden_dim, cfg.num_feature_levels
    input_proj = nn.ModuleList()
    for channels in backbone.level_channels:
        conv = nn.Conv2d(channels, d, kernel_size=1)
        nn.init.xavier_uniform_(conv.weight)
        nn.init.zeros_(conv.bias)
        input_proj.append(nn.Sequential(conv, nn.GroupNorm(32, d)))
    attention = MultiScaleDeformableAttention(d, levels, cfg.num_heads, cfg.encoder_points)
    encoder = DeformableEncoder(
        DeformableEncoderLayer(attention, d, cfg.encoder_ffn, cfg.dropout),
        cfg.num_encoder_layers,
    )
    transformer = MultiScaleTransformer(encoder, decoder, d, levels, cfg.layer_levels)
    return input_proj, transformer


def _clones(module: nn.Module, count: int) -> nn.ModuleList:
    """``count`` independent copies of ``module`` (equal values, separate parameters)."""
    return nn.ModuleList(copy.deepcopy(module) for _ in range(count))


def count_trainable_parameters(model: nn.Module) -> int:
    """Number of parameters that receive gradient updates."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_criterion(config: DetectorConfig) -> SetCriterion:
    """The Hungarian-matched set criterion with the config's costs and weights."""
    if not isinstance(config, DetectorConfig):
        raise TypeError(f"expected DetectorConfig, got {type(config).__name__}")
    loss = config.loss
    matcher = HungarianMatcher(
        cost_class=loss.cost_class,
        cost_bbox=loss.cost_bbox,
        cost_giou=loss.cost_giou,
        focal_alpha=loss.focal_alpha,
        focal_gamma=loss.focal_gamma,
    )
    return SetCriterion(
        matcher,
        config.model.num_classes,
        weight_class=loss.loss_class,
        weight_bbox=loss.loss_bbox,
        weight_giou=loss.loss_giou,
        focal_alpha=loss.focal_alpha,
        focal_gamma=loss.focal_gamma,
    )
