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


def boxed_batch(seed: int, size: int = 2) -> tuple:
    """``size`` random 96 x 96 images with 1-3 boxes each, drawn from ``seed``. All the same
    size, so nothing is padded and batches can be merged (:func:`merged`) into a larger one."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(size, 3, 96, 96, generator=generator)
    mask = torch.zeros(size, 96, 96, dtype=torch.bool)
    targets = []
    for i in range(size):
        n = 1 + (seed + i) % 3
        centres = torch.rand(n, 2, generator=generator) * 0.5 + 0.25
        sizes = torch.rand(n, 2, generator=generator) * 0.3 + 0.1
        targets.append({
            "boxes": torch.cat([centres, sizes], 1),
            "labels": torch.randint(1, 5, (n,), generator=generator),
            "image_id": torch.tensor(100 * seed + i),
            "orig_size": torch.tensor([96, 96]),
        })
    return images, mask, targets


def merged(*batches: tuple) -> tuple:
    """One batch holding the images of ``batches`` in order."""
    import torch

    return (torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]),
            [t for b in batches for t in b[2]])
