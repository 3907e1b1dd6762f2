"""Tiny detector configs for fast CPU tests (width 32, 2 + 2 layers, ResNet-18)."""

from __future__ import annotations

from samdetr.config import BackboneConfig, DetectorConfig, ModelConfig

D = 32


def tiny_config(**changes) -> DetectorConfig:
    fields = dict(
        backbone=BackboneConfig(name="resnet18"),
        hidden_dim=D,
        num_heads=4,
        num_salient_points=4,
        num_encoder_layers=2,
        num_decoder_layers=2,
        dim_feedforward=64,
        dropout=0.0,
        num_queries=10,
        num_classes=5,
    )
    fields.update(changes)
    return DetectorConfig(model=ModelConfig(**fields))
