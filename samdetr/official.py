"""Loading checkpoints of the official SAM-DETR release.

An official checkpoint is a ``torch.save`` dict with ``model`` (the state dict), ``args`` (an
argparse Namespace) and training state. It is read with ``weights_only=True`` after
allow-listing ``argparse.Namespace`` only, so no arbitrary object is ever unpickled. The
variant is inferred from the tensors (SMCA from the point-head width, GroupNorm from the keys
present, K from the class head, the multiscale model from its level embedding, its levels and
sampling points from their shapes); the few facts the tensors cannot tell (DC5 dilation, dropout)
come from ``args`` when present, else from ``overrides``.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from samdetr.builder import build_model
from samdetr.config import BackboneConfig, DetectorConfig, ModelConfig
from samdetr.model.detector import SAMDETR

# Official decoder-layer module names -> this project's names.
_DECODER_LAYER_NAMES = {
    "sa_qcontent_proj": "self_attn.q_content",
    "sa_qpos_proj": "self_attn.q_pos",
    "sa_kcontent_proj": "self_attn.k_content",
    "sa_kpos_proj": "self_attn.k_pos",
    "sa_v_proj": "self_attn.v",
    "self_attn.out_proj": "self_attn.out_proj",
    "ca_qcontent_proj": "cross_attn.q_content",
    "ca_kcontent_proj": "cross_attn.k_content",
    "ca_v_proj": "cross_attn.v",
    "ca_qpos_sine_proj": "cross_attn.q_pos",
    "ca_kpos_sine_proj": "cross_attn.k_pos",
    "cross_attn.out_proj": "cross_attn.out_proj",
    "point1.0": "aligner.point_conv",
    "point2": "aligner.point_mlp",
    "attn1": "aligner.content_gate",
    "attn2": "aligner.pos_gate",
    "norm1": "norm1",
    "norm2": "norm2",
    "norm3": "norm3",
    "linear1": "linear1",
    "linear2": "linear2",
}
_DECODER_LAYER = re.compile(
    r"^transformer\.decoder\.layers\.(\d+)\.("
    + "|".join(re.escape(k) for k in sorted(_DECODER_LAYER_NAMES, key=len, reverse=True))
    + r")\.(.+)$"
)
_PREFIXES = [
    (re.compile(r"^backbone\.0\.body\."), "backbone.body."),
    (re.compile(r"^input_proj\.0\.0\."), "input_proj.0."),
    (re.compile(r"^input_proj\.0\.1\."), "input_proj.1."),
    (re.compile(r"^query_embed\.weight$"), "reference_boxes.weight"),
    (re.compile(r"^class_embed\.(\d+)\."), r"class_heads.\1."),
    (re.compile(r"^bbox_embed\.(\d+)\."), r"transformer.decoder.box_heads.\1."),
    (re.compile(r"^transformer\.encoder\."), "transformer.encoder."),
]
# The multiscale model: one projection per level (conv + GroupNorm), named as here, and the
# level embedding.
_MULTISCALE_PREFIXES = [
    (re.compile(r"^input_proj\.(\d+)\.([01])\."), r"input_proj.\1.\2."),
    (re.compile(r"^transformer\.level_embed$"), "transformer.level_embed"),
]
_ALIAS = re.compile(r"^transformer\.decoder\.bbox_embed\.(.+)$")


def convert_state_dict(official: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename an official state dict to this project's module names.

    The ``transformer.decoder.bbox_embed.*`` aliases must equal ``bbox_embed.*`` and are
    dropped. Unknown names raise ``ValueError`` (nothing is silently ignored).
    """
    prefixes = _PREFIXES
    if "transformer.level_embed" in official:  # the multiscale model
        prefixes = _MULTISCALE_PREFIXES + [
            (p, r) for p, r in _PREFIXES if not p.pattern.startswith("^input_proj")]
    converted: dict[str, Tensor] = {}
    unknown = []
    for name, tensor in official.items():
        alias = _ALIAS.match(name)
        if alias:
            original = official.get(f"bbox_embed.{alias.group(1)}")
            if original is None or not torch.equal(original, tensor):
                raise ValueError(f"{name} should alias bbox_embed.{alias.group(1)} but differs")
            continue
        layer = _DECODER_LAYER.match(name)
        if layer:
            index, module, rest = layer.groups()
            converted[
                f"transformer.decoder.layers.{index}.{_DECODER_LAYER_NAMES[module]}.{rest}"
            ] = tensor
            continue
        for pattern, replacement in prefixes:
            if pattern.match(name):
                converted[pattern.sub(replacement, name, count=1)] = tensor
                break
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(f"unrecognised tensors in the official checkpoint: {unknown[:10]}")
    return converted


def _count(state: dict[str, Tensor], pattern: str) -> int:
    found = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    return len(found)


def infer_config(
    official: dict[str, Tensor], args: dict[str, Any] | None = None, **overrides: Any
) -> DetectorConfig:
    """Infer the detector config from official tensors (and ``args`` where tensors are silent).

    ``overrides`` are ModelConfig fields (``dilation`` goes to the backbone) that win over both.
    """
    args = dict(args or {})
    levels = official.get("transformer.level_embed")
    num_levels = 1 if levels is None else levels.shape[0]
    try:
        # the coarsest level's projection (the only one, single-scale) tells the ResNet
        proj = official[f"input_proj.{num_levels - 1}.0.weight"]
        d, channels = proj.shape[0], proj.shape[1]
        num_classes = official["class_embed.0.weight"].shape[0]
        num_queries = official["query_embed.weight"].shape[0]
        num_points = official["transformer.decoder.layers.0.attn1.weight"].shape[0] // d
        head_out = official["transformer.decoder.layers.0.point2.6.weight"].shape[0]
        ffn = official["transformer.decoder.layers.0.linear1.weight"].shape[0]
        encoder_ffn = official["transformer.encoder.layers.0.linear1.weight"].shape[0]
    except KeyError as err:
        raise ValueError(f"not an official SAM-DETR state dict: missing {err}") from err
    if head_out not in (2 * num_points, 4 * num_points):
        raise ValueError(
            f"salient-point head emits {head_out} values; expected 2M or 4M, M={num_points}"
        )
    bottleneck = "backbone.0.body.layer1.0.conv3.weight" in official
    layer3_blocks = _count(official, r"^backbone\.0\.body\.layer3\.(\d+)\.")
    if bottleneck:
        name = {6: "resnet50", 23: "resnet101"}.get(layer3_blocks)
    else:
        name = {2: "resnet18", 6: "resnet34"}.get(layer3_blocks)
    if name is None or (channels == 2048) != bottleneck:
        raise ValueError(
            f"unrecognised ResNet in the checkpoint (layer3 has {layer3_blocks} blocks)"
        )
    dilation = overrides.pop("dilation", args.get("dilation", False))
    fields = dict(
        backbone=BackboneConfig(
            name=name,
            dilation=bool(dilation),
            train_backbone=float(args.get("lr_backbone", 1e-5)) > 0,
        ),
        hidden_dim=d,
        # The official code ties the self-attention heads to the salient points.
        num_heads=int(args.get("nheads", num_points)),
        num_salient_points=num_points,
        num_encoder_layers=_count(official, r"^transformer\.encoder\.layers\.(\d+)\."),
        num_decoder_layers=_count(official, r"^transformer\.decoder\.layers\.(\d+)\."),
        dim_feedforward=ffn,
        dropout=float(args.get("dropout", 0.1)),
        num_queries=num_queries,
        num_classes=num_classes,
        decoder="sam",
        smca=head_out == 4 * num_points,
        input_proj_groupnorm=levels is None and "input_proj.0.1.weight" in official,
    )
    if levels is not None:
        heads = fields["num_heads"]
        offsets = official.get("transformer.encoder.layers.0.self_attn.sampling_offsets.weight")
        if offsets is None:
            raise ValueError("the checkpoint has a level embedding but no deformable encoder: "
                             "not an official multiscale SAM-DETR state dict")
        fields.update(multiscale=True, num_feature_levels=num_levels,
                      encoder_points=offsets.shape[0] // (2 * heads * num_levels))
    halved = ffn // 2 if levels is not None else ffn  # the official encoder's width
    if encoder_ffn != halved:
        fields["encoder_dim_feedforward"] = encoder_ffn
    fields.update(overrides)
    return DetectorConfig(model=ModelConfig(**fields))


def read_official_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read ``(state_dict, args)`` from an official checkpoint without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return official_parts(load_weights_only(path), path)


def load_weights_only(path: Path) -> Any:
    """What ``torch.save`` wrote at ``path``, loaded with ``weights_only=True`` and
    ``argparse.Namespace`` (the official files' ``args``) the one class allowed: no code is
    ever unpickled. ValueError when it cannot be loaded so."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError...
            raise ValueError(f"{path} is not a safely loadable checkpoint: {err}") from err


def official_parts(ckpt: Any, path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(state_dict, args)`` of an official checkpoint already loaded from ``path``."""
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise ValueError(
            f"{path} has no 'model' state dict; is it an official SAM-DETR checkpoint?"
        )
    args = ckpt.get("args")
    args = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    return ckpt["model"], args


def load_official(path: str | Path, **overrides: Any) -> tuple[SAMDETR, DetectorConfig]:
    """Build this project's model from an official SAM-DETR checkpoint (``strict=True``)."""
    official, args = read_official_checkpoint(path)
    return model_from_official_state(official, args, **overrides)


def model_from_official_state(
    official: dict[str, Tensor], args: dict[str, Any] | None = None, **overrides: Any
) -> tuple[SAMDETR, DetectorConfig]:
    """As :func:`load_official`, from an in-memory official state dict."""
    config = infer_config(official, args, **overrides)
    model = build_model(config)
    model.load_state_dict(convert_state_dict(official), strict=True)
    return model, config
