"""Typed, validated configuration of a SAM-DETR detector.

Config flows one way: a plain dict (from YAML, JSON or a checkpoint) goes through
:meth:`DetectorConfig.from_dict`, is validated once here, and the builder turns it into
modules with explicit constructor arguments. Every architecture switch is a field of its own.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
NORMS = ("frozen_bn", "batch_norm", "group_norm")
DECODERS = ("sam", "baseline")
ROI_ALIGNS = ("auto", "matmul", "torchvision")
ATTENTION_KERNELS = ("math", "auto")

T = TypeVar("T")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _check_bools(obj: Any, prefix: str, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(obj, name)
        _check(isinstance(value, bool), f"{prefix}.{name} must be true or false, got {value!r}")


def known_fields(cls: type, data: Any, where: str) -> dict[str, Any]:
    """``data`` as keyword arguments of dataclass ``cls``, checked once for every config.

    Raises ``TypeError`` when ``data`` is not a mapping and ``ValueError`` naming the unknown
    keys (a typo in YAML or on the command line) together with the known ones.
    """
    if not isinstance(data, Mapping):
        raise TypeError(
            f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}"
        )
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(
            f"{where}: unknown field(s) {unknown} for {cls.__name__}; known: {sorted(known)}"
        )
    return dict(data)


def _from_dict(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass ``cls`` from a mapping, recursing into nested dataclass fields."""
    if isinstance(data, cls):
        return data
    kwargs = known_fields(cls, data, where)
    for name, value in kwargs.items():
        sub = _NESTED.get((cls.__name__, name))
        if sub:
            kwargs[name] = _from_dict(sub, value, f"{where}.{name}")
    return cls(**kwargs)


@dataclass(frozen=True)
class BackboneConfig:
    """ResNet backbone. The defaults are the official ones: frozen BatchNorm (ImageNet
    statistics) and the stem and layer1 frozen. Training from random weights wants a trainable
    normalisation (``norm``) and every stage trainable (``trainable_layers=5``).

    ``weights`` names ImageNet weights to load *when asked* (``load_backbone_weights``):
    a local file path or a torchvision weights name such as ``"ResNet50_Weights.IMAGENET1K_V1"``.
    Building a model never reads or downloads them.
    """

    name: str = "resnet50"
    dilation: bool = False  # DC5: layer4 uses dilation instead of stride (output stride 16)
    train_backbone: bool = True  # the official code: lr_backbone > 0
    weights: str | None = None
    # frozen_bn: fixed statistics and affine (for ImageNet weights); batch_norm / group_norm
    # (32 groups): trained, for a backbone learning from random weights.
    norm: str = "frozen_bn"
    # With train_backbone, how many stages train, counted from layer4: 3 is layer2-4 (official),
    # 4 adds layer1, 5 the stem too; 0 freezes the whole trunk.
    trainable_layers: int = 3
    # The stage whose output the transformer reads: 4 (official, stride 32), 3 (stride 16) or
    # 2 (stride 8). Small images from scratch want a finer map; the later stages are dropped.
    last_stage: int = 4

    def __post_init__(self) -> None:
        _check_bools(self, "backbone", ("dilation", "train_backbone"))
        _check(
            self.name in BACKBONES, f"backbone.name must be one of {BACKBONES}, got {self.name!r}"
        )
        _check(
            not (self.dilation and self.name in ("resnet18", "resnet34")),
            f"backbone.dilation (DC5) needs a bottleneck ResNet (resnet50/101), not {self.name}",
        )
        _check(
            self.weights is None or (isinstance(self.weights, str) and self.weights != ""),
            "backbone.weights must be None or a non-empty path / torchvision weights name",
        )
        _check(self.norm in NORMS, f"backbone.norm must be one of {NORMS}, got {self.norm!r}")
        _check(
            not (self.norm == "group_norm" and self.weights is not None),
            "backbone.weights are BatchNorm ResNet weights; backbone.norm=group_norm has no "
            "statistics to load them into (use frozen_bn or batch_norm)",
        )
        _check(
            isinstance(self.trainable_layers, int)
            and not isinstance(self.trainable_layers, bool)
            and 0 <= self.trainable_layers <= 5,
            f"backbone.trainable_layers must be an integer in 0..5, got {self.trainable_layers!r}",
        )
        _check(
            self.last_stage in (2, 3, 4) and not isinstance(self.last_stage, bool),
            f"backbone.last_stage must be 2, 3 or 4, got {self.last_stage!r}",
        )
        _check(
            not (self.dilation and self.last_stage != 4),
            "backbone.dilation (DC5) dilates layer4; it needs backbone.last_stage=4",
        )

    @property
    def num_channels(self) -> int:
        """Channels of the feature map the transformer reads (the output of ``last_stage``)."""
        top = 512 if self.name in ("resnet18", "resnet34") else 2048
        return top // 2 ** (4 - self.last_stage)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the detector. Defaults are the official SAM-DETR-R50 (50-epoch) setting."""

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    hidden_dim: int = 256
    num_heads: int = 8  # encoder / decoder self-attention heads, baseline cross-attention heads
    num_salient_points: int = 8  # M: one cross-attention head per salient point
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.1
    num_queries: int = 300
    num_classes: int = 91  # K class logits = max category id + 1 (sigmoid, no "no-object")
    decoder: str = "sam"  # "sam": semantics aligner; "baseline": plain conditional decoder
    smca: bool = False  # Gaussian bias around each salient point (SAM decoder only)
    smca_beta: float = 8.0
    input_proj_groupnorm: bool = False  # official 12-epoch runs add GroupNorm(32, D)
    roi_size: int = 7
    # RoIAlign kernel: "matmul" (samdetr.model.roi_align: the same values, a backward that is a
    # matrix product), "torchvision" (its kernel), "auto" (matmul when training on CPU, where
    # it is faster; torchvision's for inference and on CUDA).
    roi_align: str = "auto"
    # Encoder and decoder attention kernel (torch's scaled_dot_product_attention): "math" (the
    # plain kernel, on every device: exact at any logit, where the fused kernels' backward gives
    # wrong, then NaN gradients above logits of ~1e6; docs/performance.md "Attention kernel"),
    # "auto" (torch picks, fused ones included: faster, safe while the logits stay small).
    attention_kernel: str = "math"
    # Multiscale (the official --multiscale): the last num_feature_levels backbone stages
    # (C3-C5), each with its own input projection + GroupNorm(32, D) and a level embedding, a
    # deformable encoder, and decoder layers reading one level each, coarse to fine.
    multiscale: bool = False
    num_feature_levels: int = 3
    encoder_points: int = 4  # deformable sampling points per head and level
    # The encoder's FFN width; None: dim_feedforward // 2 when multiscale (the official code
    # halves it there), dim_feedforward otherwise.
    encoder_dim_feedforward: int | None = None
    # The level each decoder layer reads, 0 = the finest (C3); None: the official split, the
    # layers shared evenly from the coarsest level to the finest (6 layers, 3 levels:
    # C5, C5, C4, C4, C3, C3).
    decoder_levels: tuple[int, ...] | None = None
    point_embed_grad: bool = False  # official: sine embeddings are computed without gradient
    aux_loss: bool = True  # predictions of every decoder layer

    def __post_init__(self) -> None:
        _check_bools(
            self, "model",
            ("smca", "input_proj_groupnorm", "point_embed_grad", "aux_loss", "multiscale"),
        )
        if isinstance(self.decoder_levels, list):  # YAML and JSON give lists
            object.__setattr__(self, "decoder_levels", tuple(self.decoder_levels))
        positive = (
            "hidden_dim",
            "num_heads",
            "num_salient_points",
            "num_encoder_layers",
            "num_decoder_layers",
            "dim_feedforward",
            "num_queries",
            "num_classes",
            "roi_size",
            "num_feature_levels",
            "encoder_points",
        )
        for name in positive:
            value = getattr(self, name)
            _check(
                isinstance(value, int) and not isinstance(value, bool) and value > 0,
                f"model.{name} must be a positive integer, got {value!r}",
            )
        _check(
            self.decoder in DECODERS,
            f"model.decoder must be one of {DECODERS}, got {self.decoder!r}",
        )
        _check(
            self.roi_align in ROI_ALIGNS,
            f"model.roi_align must be one of {ROI_ALIGNS}, got {self.roi_align!r}",
        )
        _check(
            self.attention_kernel in ATTENTION_KERNELS,
            f"model.attention_kernel must be one of {ATTENTION_KERNELS}, "
            f"got {self.attention_kernel!r}",
        )
        d = self.hidden_dim
        # Sine embeddings give D/2 features per axis as (sin, cos) pairs.
        _check(d % 4 == 0, f"model.hidden_dim must be a multiple of 4, got {d}")
        _check(
            d % self.num_heads == 0, f"model.num_heads={self.num_heads} must divide hidden_dim={d}"
        )
        _check(
            d % self.num_salient_points == 0,
            f"model.num_salient_points={self.num_salient_points} must divide hidden_dim={d} "
            "(each salient point's head gets hidden_dim / M value features)",
        )
        _check(
            not self.input_proj_groupnorm or d % 32 == 0,
            f"model.input_proj_groupnorm uses GroupNorm(32, D): hidden_dim={d} must divide by 32",
        )
        _check(
            isinstance(self.dropout, (int, float))
            and not isinstance(self.dropout, bool)
            and 0.0 <= self.dropout < 1.0,
            f"model.dropout must be in [0, 1), got {self.dropout!r}",
        )
        _check(
            not (self.smca and self.decoder != "sam"),
            "model.smca needs decoder='sam': the Gaussian is centred on salient points",
        )
        _check(
            isinstance(self.smca_beta, (int, float))
            and not isinstance(self.smca_beta, bool)
            and self.smca_beta > 0,
            f"model.smca_beta must be > 0, got {self.smca_beta!r}",
        )
        width = self.encoder_dim_feedforward
        _check(
            width is None or (isinstance(width, int) and not isinstance(width, bool)
                              and width > 0),
            f"model.encoder_dim_feedforward must be a positive integer or null, got {width!r}",
        )
        if self.multiscale:
            self._check_multiscale()

    def _check_multiscale(self) -> None:
        levels, stage = self.num_feature_levels, self.backbone.last_stage
        _check(
            stage - levels + 1 >= 2,
            f"model.num_feature_levels={levels} needs the stages {stage - levels + 1}..{stage}; "
            "the first with features is layer2 (at most 3 levels ending at layer4)",
        )
        _check(not self.backbone.dilation,
               "model.multiscale does not combine with backbone.dilation (DC5)")
        _check(self.hidden_dim % 32 == 0,
               f"model.multiscale uses GroupNorm(32, D): hidden_dim={self.hidden_dim} must "
               "divide by 32")
        _check(self.decoder == "sam", "model.multiscale is built for decoder='sam'")
        chosen = self.decoder_levels
        _check(
            chosen is None or (len(chosen) == self.num_decoder_layers and all(
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v < levels
                for v in chosen)),
            f"model.decoder_levels must give one level in 0..{levels - 1} per decoder layer "
            f"({self.num_decoder_layers}), got {chosen!r}",
        )

    @property
    def layer_levels(self) -> tuple[int, ...]:
        """The level each decoder layer reads (0 = the finest); single-scale: all 0."""
        if not self.multiscale:
            return (0,) * self.num_decoder_layers
        if self.decoder_levels is not None:
            return self.decoder_levels
        levels, layers = self.num_feature_levels, self.num_decoder_layers
        return tuple(levels - 1 - (i * levels) // layers for i in range(layers))

    @property
    def encoder_ffn(self) -> int:
        """The encoder's FFN width (see ``encoder_dim_feedforward``)."""
        if self.encoder_dim_feedforward is not None:
            return self.encoder_dim_feedforward
        return self.dim_feedforward // 2 if self.multiscale else self.dim_feedforward


@dataclass(frozen=True)
class LossConfig:
    """Hungarian matching costs and loss weights (the same on every decoder layer)."""

    cost_class: float = 2.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    loss_class: float = 2.0
    loss_bbox: float = 5.0
    loss_giou: float = 2.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            _check(
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
                and value >= 0,
                f"loss.{f.name} must be a finite number >= 0, got {value!r}",
            )
        _check(
            self.cost_class + self.cost_bbox + self.cost_giou > 0,
            "loss: at least one matching cost must be positive",
        )
        _check(
            0.0 <= self.focal_alpha <= 1.0,
            f"loss.focal_alpha must be in [0, 1], got {self.focal_alpha}",
        )


@dataclass(frozen=True)
class DetectorConfig:
    """Everything needed to rebuild a detector and its training objective."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON/YAML-safe) that :meth:`from_dict` turns back into this config."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectorConfig:
        """Validate a nested mapping; unknown keys and bad values raise ``ValueError``."""
        return _from_dict(cls, data, "config")

    def replace(self, **model_changes: Any) -> DetectorConfig:
        """A copy with some ``model`` fields changed (validated again)."""
        return dataclasses.replace(self, model=dataclasses.replace(self.model, **model_changes))


_NESTED = {
    ("DetectorConfig", "model"): ModelConfig,
    ("DetectorConfig", "loss"): LossConfig,
    ("ModelConfig", "backbone"): BackboneConfig,
}


def _official(smca: bool, dilation: bool, epochs: int, multiscale: bool = False
              ) -> DetectorConfig:
    if epochs not in (12, 50):
        raise ValueError(f"official presets exist for 12 and 50 epochs, got {epochs}")
    return DetectorConfig(
        model=ModelConfig(
            backbone=BackboneConfig(name="resnet50", dilation=dilation),
            smca=smca,
            # The official code adds this GroupNorm exactly when trained for < 25 epochs; the
            # multiscale model has one after every level's projection whatever the epochs.
            input_proj_groupnorm=epochs < 25 and not multiscale,
            multiscale=multiscale,
        )
    )


PRESETS = {
    f"sam_detr_r50{'_dc5' if dc5 else ''}{'_smca' if smca else ''}_e{epochs}": (smca, dc5, epochs)
    for dc5 in (False, True)
    for smca in (False, True)
    for epochs in (12, 50)
} | {
    f"sam_detr_r50_ms{'_smca' if smca else ''}_e{epochs}": (smca, False, epochs, True)
    for smca in (False, True)
    for epochs in (12, 50)
}


def preset(name: str) -> DetectorConfig:
    """Config of an official variant, e.g. ``"sam_detr_r50_smca_e12"`` (see ``PRESETS``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {sorted(PRESETS)}")
    return _official(*PRESETS[name])
