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


def one_box_batches(count: int, size: int = 64) -> list:
    """``count`` training batches of one random ``size`` x ``size`` image with one box each,
    the same every call (for tests that take a few steps of :func:`tiny_config`'s model)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    target = {"boxes": torch.tensor([[0.5, 0.5, 0.3, 0.4]]), "labels": torch.tensor([1]),
              "image_id": torch.tensor(0), "orig_size": torch.tensor([size, size])}
    return [(torch.randn(1, 3, size, size, generator=generator),
             torch.zeros(1, size, size, dtype=torch.bool), [dict(target)])
            for _ in range(count)]
