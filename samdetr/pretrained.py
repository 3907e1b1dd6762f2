"""Starting a detector from a pretrained one: fine-tuning on other data, with other classes.

    pretrained = read_pretrained("sam_detr_r50_smca_e50.pth")    # official, or a samdetr file
    model = build_model(config_for_my_data)                        # e.g. num_classes=6
    report = transfer_weights(model, config_for_my_data, pretrained)  # ValueError: ~no fit
    print("\\n".join(report.lines()))

Every tensor of the model whose name and shape are in the file is loaded; the rest keep the
model's own initialisation. When the class count differs, the class heads cannot load, and they
are re-initialised as the official code initialises them (default Linear weights, the bias at
the focal-loss prior of 0.01): the box heads, the decoder and everything below them are kept,
which is what makes fine-tuning converge faster than training from scratch. A file that fits
almost nothing (another backbone, another width) is refused with both architectures named,
because such a "fine-tune" would silently be a run from random weights.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from samdetr.checkpoint import check_payload, model_state
from samdetr.config import DetectorConfig, ModelConfig
from samdetr.engine.parameter_groups import plain_name
from samdetr.model.detector import unwrap_model
from samdetr.official import (
    convert_state_dict,
    infer_config,
    load_weights_only,
    official_parts,
)

#: A model built anew keeps its class heads' initialisation only if the file has none of that
#: shape; these prefixes name them (under DDP the names carry ``module.`` first).
CLASS_HEADS = "class_heads."
BACKBONE = "backbone."
#: Below this share of the model's weights (by element count) a file is refused by default.
MIN_LOADED = 0.5


@dataclass(frozen=True)
class PretrainedWeights:
    """A pretrained detector's tensors, named as this project names them.

    ``kind``: ``"official"`` (a checkpoint of the official release) or ``"samdetr"`` (this
    project's). ``config``: the file's detector (recorded in a samdetr file, inferred from an
    official one's tensors). ``categories``: the ``[{id, name}]`` a samdetr file carries (empty
    for official files: COCO's ids). ``origin``: where it was read from, ``sha256``: of the file.
    """
    state: dict[str, Tensor]
    config: DetectorConfig
    kind: str
    origin: str
    sha256: str
    categories: tuple[dict[str, Any], ...] = ()

    def lineage(self) -> dict[str, Any]:
        """What a model fine-tuned from these weights records about them (JSON-safe)."""
        return {"origin": self.origin, "kind": self.kind, "sha256": self.sha256,
                "model": describe_model(self.config.model),
                "num_classes": self.config.model.num_classes}


@dataclass(frozen=True)
class TransferReport:
    """What :func:`transfer_weights` did, tensor by tensor.

    ``loaded``: names taken from the file. ``reinitialised``: ``(name, file shape, model
    shape)`` of the tensors present in both with other shapes (the class heads when K differs).
    ``missing``: the model's tensors the file lacks (kept as initialised). ``unused``: the
    file's tensors the model lacks. ``loaded_fraction``: the share of the model's elements that
    came from the file. ``notes``: parts left out on purpose, and why.
    """
    loaded: tuple[str, ...]
    reinitialised: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]
    missing: tuple[str, ...]
    unused: tuple[str, ...]
    loaded_fraction: float
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["reinitialised"] = [{"name": n, "file_shape": list(f), "model_shape": list(m)}
                                for n, f, m in self.reinitialised]
        return out

    def counts(self) -> dict[str, float]:
        """Numbers for a tracker's params: tensors per outcome and the loaded share."""
        return {"loaded": len(self.loaded), "reinitialised": len(self.reinitialised),
                "missing": len(self.missing), "unused": len(self.unused),
                "loaded_fraction": round(self.loaded_fraction, 6)}

    def lines(self, limit: int = 6) -> list[str]:
        """A short human account: totals, then up to ``limit`` names of each other outcome."""
        out = [f"loaded {len(self.loaded)} tensors ({self.loaded_fraction:.1%} of the model's "
               "weights)", *self.notes]
        groups = (
            ("re-initialised (shape differs)",
             [f"{n} {list(f)} -> {list(m)}" for n, f, m in self.reinitialised]),
            ("kept as initialised (not in the file)", list(self.missing)),
            ("skipped (not in the model)", list(self.unused)),
        )
        for title, names in groups:
            if names:
                more = f", ... {len(names) - limit} more" if len(names) > limit else ""
                out.append(f"{title}: {len(names)}: " + ", ".join(names[:limit]) + more)
        return out


def describe_model(model: ModelConfig) -> str:
    """One line that tells architectures apart, e.g. ``resnet50 d256 enc6 dec6 sam M8 smca
    300q K91``."""
    parts = [model.backbone.name + ("-dc5" if model.backbone.dilation else ""),
             f"d{model.hidden_dim}", f"enc{model.num_encoder_layers}",
             f"dec{model.num_decoder_layers}", model.decoder]
    if model.decoder == "sam":
        parts.append(f"M{model.num_salient_points}")
    if model.smca:
        parts.append("smca")
    if model.multiscale:
        parts.append(f"multiscale{model.num_feature_levels}")
    parts += [f"{model.num_queries}q", f"K{model.num_classes}"]
    return " ".join(parts)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_pretrained(path: str | Path, origin: str | None = None) -> PretrainedWeights:
    """The weights of an official SAM-DETR checkpoint or of a samdetr checkpoint at ``path``,
    told apart by their contents. Read with ``weights_only=True`` (``argparse.Namespace``, the
    official files' ``args``, is the one class allowed), so no code is ever unpickled.
    ``origin`` names the file in reports and lineage (default: the path), e.g. the URI it was
    downloaded from."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no pretrained checkpoint at {path}")
    payload = load_weights_only(path)
    origin = origin or str(path)
    if isinstance(payload, dict) and "format" in payload:
        check_payload(payload, path)
        return PretrainedWeights(
            state=model_state(payload), config=DetectorConfig.from_dict(payload["config"]),
            kind="samdetr", origin=origin, sha256=_sha256(path),
            categories=tuple(dict(c) for c in payload.get("categories") or ()))
    official, args = official_parts(payload, path)
    return PretrainedWeights(
        state=convert_state_dict(official), config=infer_config(official, args),
        kind="official", origin=origin, sha256=_sha256(path))


def transfer_weights(model: nn.Module, config: DetectorConfig | ModelConfig,
                     pretrained: PretrainedWeights,
                     min_loaded: float = MIN_LOADED) -> TransferReport:
    """Load into ``model`` (built from ``config``) every tensor of ``pretrained`` whose name
    and shape match; see the module docstring. The backbone loads only from a file with the
    same ResNet: other depths share many names and shapes (a ResNet-50 fills 57% of a
    ResNet-18 detector), which would pass for a fit and be noise. The model is changed only if
    the file passes the ``min_loaded`` check.

    Raises:
        ValueError: less than ``min_loaded`` of the model's elements would come from the file
            (the message names the file's architecture and the model's).
    """
    if not 0.0 <= min_loaded <= 1.0:
        raise ValueError(f"min_loaded must be in [0, 1], got {min_loaded!r}")
    model_config = config.model if isinstance(config, DetectorConfig) else config
    own = {plain_name(name): tensor for name, tensor in model.state_dict().items()}
    source = dict(pretrained.state)
    notes = []
    theirs, ours = pretrained.config.model.backbone.name, model_config.backbone.name
    if theirs != ours:
        source = {k: v for k, v in source.items() if not k.startswith(BACKBONE)}
        notes.append(f"backbone not loaded: the file's is a {theirs}, the model's a {ours}")
    loaded, reinitialised, missing = [], [], []
    for name, tensor in own.items():
        found = source.get(name)
        if found is None:
            missing.append(name)
        elif tuple(found.shape) != tuple(tensor.shape):
            reinitialised.append((name, tuple(found.shape), tuple(tensor.shape)))
        else:
            loaded.append(name)
    total = sum(tensor.numel() for tensor in own.values())
    fraction = sum(own[name].numel() for name in loaded) / max(total, 1)
    report = TransferReport(tuple(loaded), tuple(reinitialised), tuple(missing),
                            tuple(sorted(set(pretrained.state) - set(own))), fraction,
                            tuple(notes))
    if fraction < min_loaded:
        raise ValueError(
            f"{pretrained.origin}: only {fraction:.1%} of the model's weights have a tensor of "
            f"the same name and shape in this {pretrained.kind} checkpoint (at least "
            f"{min_loaded:.0%} must). The file holds a "
            f"{describe_model(pretrained.config.model)}; the model is a "
            f"{describe_model(model_config)}. Choose the model config that matches the file "
            "(same backbone, width, layers and decoder), or lower the threshold if so little "
            "is meant to load."
        )
    _load(model, {name: source[name] for name in loaded})
    if any(name.startswith(CLASS_HEADS) for name, _, _ in reinitialised):
        reset_class_heads(model)
    return report


def _load(model: nn.Module, tensors: dict[str, Tensor]) -> None:
    """Copy ``tensors`` (plain names) into ``model``'s parameters and buffers in place."""
    own = {plain_name(name): tensor for name, tensor in model.state_dict(keep_vars=True).items()}
    with torch.no_grad():
        for name, tensor in tensors.items():
            own[name].copy_(tensor.to(dtype=own[name].dtype, device=own[name].device))


def reset_class_heads(model: nn.Module) -> None:
    """The class heads of ``model`` (possibly DDP- or compile-wrapped) initialised anew, as
    :meth:`samdetr.model.detector.SAMDETR.reset_class_heads` does."""
    unwrap_model(model).reset_class_heads()
