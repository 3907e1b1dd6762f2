"""A trained SAM-DETR as a file that runs without this library: ONNX (for ONNX Runtime and
other ONNX runtimes) or a ``torch.export`` ExportedProgram.

    result = export_model(model, "detector.onnx", categories=names, config=config,
                          postprocess=True)
    result.exporter            # "dynamo" (torch.export, then torch.onnx) or "torchscript"

Inputs of the exported graph, every size free (batch, height and width):

- ``images`` (B, 3, H, W) float32, ImageNet-normalised, zero-padded bottom/right;
- ``mask`` (B, H, W) bool, True on padding (all False for images of one size);
- with ``postprocess``: ``orig_sizes`` (B, 2) int64, each image's original (height, width).

Outputs: ``pred_logits`` (B, Q, K) and ``pred_boxes`` (B, Q, 4) normalised (cx, cy, w, h), as
the model's forward; with ``postprocess`` also the top-k detections of
:class:`samdetr.model.postprocess.PostProcess`: ``scores`` (B, k), ``labels`` (B, k) int64,
``boxes`` (B, k, 4) absolute (x1, y1, x2, y2) pixels of the original images and ``queries``
(B, k) int64, k = min(num_top, Q * K). The category names, the detector config and what the
graph takes and gives travel in the file (:func:`metadata`).

onnx, onnxscript and onnxruntime are the ``export`` extra: imported only when called here.
"""

from __future__ import annotations

import copy
import json
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from samdetr.config import DetectorConfig
from samdetr.model.detector import SAMDETR
from samdetr.model.postprocess import PostProcess
from samdetr.model.semantic_aligner import SemanticAligner

__all__ = ["FORMATS", "ExportResult", "export_model", "metadata", "require_export_extra"]

FORMATS = ("onnx", "exported_program")
EXPORTERS = ("auto", "dynamo", "torchscript")
RAW_OUTPUTS = ("pred_logits", "pred_boxes")
DETECTION_OUTPUTS = ("scores", "labels", "boxes", "queries")
# RoIAlign kernels that export: torchvision's op has an ONNX translation (RoiAlign, opset 16+,
# half_pixel = aligned=True, sampling_ratio 0 = its adaptive sample count). The matmul form
# sizes its sample grid from the boxes (a data-dependent shape), which torch.export refuses
# and the TorchScript tracer would freeze to the example's boxes.
EXPORT_ROI_ALIGN = ("torchvision",)
# 18: every operator used has had its current definition since (RoiAlign 16, the rest older),
# and every ONNX Runtime release of the extra's range runs it.
OPSET = 18
#: Where the ExportedProgram file keeps :func:`metadata` (``torch.export.save``'s extra files).
PROGRAM_METADATA = "samdetr_metadata.json"


def require_export_extra() -> None:
    """Raise ImportError naming the ``export`` extra when onnx, onnxscript or onnxruntime is
    missing."""
    missing = []
    for module in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ImportError(f"ONNX export needs {', '.join(missing)}: install the export extra "
                          "(pip install -e '.[export]')")


class ExportGraph(nn.Module):
    """What the exported graph computes: the detector's last-layer outputs and, with
    ``num_top``, its post-processed top-k detections, as a tuple in the order of
    :attr:`output_names`."""

    def __init__(self, model: SAMDETR, num_top: int | None):
        super().__init__()
        self.model = model
        self.postprocess = PostProcess(num_top) if num_top is not None else None
        self.output_names = RAW_OUTPUTS + (DETECTION_OUTPUTS if num_top is not None else ())

    def forward(self, images: Tensor, mask: Tensor,
                orig_sizes: Tensor | None = None) -> tuple[Tensor, ...]:
        out = self.model(images, mask)
        raw = (out["pred_logits"], out["pred_boxes"])
        if self.postprocess is None:
            return raw
        found = self.postprocess.batched(out, orig_sizes)
        return raw + tuple(found[name] for name in DETECTION_OUTPUTS)


@dataclass(frozen=True)
class ExportResult:
    """``path``: the file written. ``exporter``: ``dynamo`` (torch.export, then torch.onnx's
    translation of the ExportedProgram), ``torchscript`` (torch.onnx's tracing exporter) or
    ``torch.export`` (an ExportedProgram file). ``fallback_reason``: why the dynamo exporter
    was not used (None when it was). ``input_ranges``: the sizes the traced graph accepts,
    ``{"batch" | "height" | "width": [min, max or None]}`` (the TorchScript exporter records
    none). ``seconds``: the export's wall time."""
    path: str
    format: str
    exporter: str
    output_names: tuple[str, ...]
    metadata: dict[str, str]
    seconds: float
    fallback_reason: str | None = None
    input_ranges: dict[str, list[int | None]] = field(default_factory=dict)


def export_model(
    model: SAMDETR,
    path: str | os.PathLike[str],
    *,
    format: str = "onnx",
    config: DetectorConfig | None = None,
    categories: Mapping[int, str] | None = None,
    postprocess: bool = False,
    num_top: int = 100,
    roi_align: str = "torchvision",
    exporter: str = "auto",
    extra_metadata: Mapping[str, str] | None = None,
) -> ExportResult:
    """Export ``model`` (left unchanged: a copy is exported, on the CPU in float32).

    Args:
        model: the detector.
        path: the file to write (``.onnx`` or ``.pt2`` by convention).
        format: ``onnx`` or ``exported_program`` (``torch.export.save``).
        config: the detector's config, stored in the file (recommended).
        categories: ``{category id: name}``, stored in the file.
        postprocess: also output the top-``num_top`` detections (needs ``orig_sizes``).
        roi_align: the Semantics Aligner's RoIAlign kernel in the exported graph; only
            ``torchvision`` exports (:data:`EXPORT_ROI_ALIGN` says why). The values equal the
            matmul form's (``samdetr/model/roi_align.py``).
        exporter: ONNX only: ``auto`` (the dynamo exporter, the TorchScript exporter where
            torch.export or the translation fails), ``dynamo`` or ``torchscript``.
        extra_metadata: more ``{key: value}`` strings for the file (e.g. the registered version).
    Returns:
        :class:`ExportResult`.
    """
    _check_arguments(model, format, roi_align, exporter, postprocess, num_top)
    path = os.fspath(path)
    graph = ExportGraph(_export_copy(model, roi_align), num_top if postprocess else None)
    info = metadata(graph, config, categories, roi_align, extra_metadata)
    start = time.perf_counter()
    if format == "exported_program":
        program = _trace(graph)
        info["samdetr.exporter"] = "torch.export"
        info["samdetr.input_ranges"] = json.dumps(_input_ranges(program))
        torch.export.save(program, path, extra_files={PROGRAM_METADATA: json.dumps(info)})
        return ExportResult(path, format, "torch.export", graph.output_names, info,
                            time.perf_counter() - start, None, _input_ranges(program))
    require_export_extra()
    used, reason, ranges = write_onnx(graph, path, exporter)
    info["samdetr.exporter"] = used
    info["samdetr.input_ranges"] = json.dumps(ranges)
    _finish_onnx(path, info)
    return ExportResult(path, format, used, graph.output_names, info,
                        time.perf_counter() - start, reason, ranges)


def _check_arguments(model: Any, format: str, roi_align: str, exporter: str, postprocess: Any,
                     num_top: Any) -> None:
    if not isinstance(model, SAMDETR):
        raise TypeError(f"model must be a samdetr SAMDETR, got {type(model).__name__}")
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if roi_align not in EXPORT_ROI_ALIGN:
        raise ValueError(
            f"roi_align={roi_align!r} does not export: the matmul RoIAlign sizes its sample "
            f"grid from the boxes; use one of {EXPORT_ROI_ALIGN} (the same values)")
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    if format == "exported_program" and exporter == "torchscript":
        raise ValueError("exporter='torchscript' writes ONNX only; an ExportedProgram is "
                         "torch.export's")
    if not isinstance(postprocess, bool):
        raise TypeError(f"postprocess must be true or false, got {postprocess!r}")
    if isinstance(num_top, bool) or not isinstance(num_top, int) or num_top < 1:
        raise ValueError(f"num_top must be a positive int, got {num_top!r}")


def _export_copy(model: SAMDETR, roi_align: str) -> SAMDETR:
    """A CPU float32 copy in eval mode whose aligners use ``roi_align``; the caller's model
    keeps its device, dtype, mode and kernel."""
    exported = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
    for module in exported.modules():
        if isinstance(module, SemanticAligner):
            module.roi_align = roi_align
    return exported


def example_inputs(graph: ExportGraph) -> tuple[Tensor, ...]:
    """Two images, the second padded, as the graph's example inputs: batch 2 so that torch.export
    does not specialise the batch size to 1, sizes large enough for three levels of a stride-32
    backbone, and a padded image so that the mask path is the general one."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 96, 128, generator=generator)
    mask = torch.zeros(2, 96, 128, dtype=torch.bool)
    mask[1, 80:, :] = True
    mask[1, :, 112:] = True
    images[1][:, mask[1]] = 0.0
    if graph.postprocess is None:
        return images, mask
    return images, mask, torch.tensor([[480, 640], [400, 560]])


def _input_names(graph: ExportGraph) -> list[str]:
    return ["images", "mask"] + (["orig_sizes"] if graph.postprocess is not None else [])


def _dynamic_shapes(graph: ExportGraph) -> dict[str, Any]:
    """Batch, height and width free: ``Dim.DYNAMIC`` makes torch.export fail rather than
    silently freeze a size the traced code depends on."""
    batch = torch.export.Dim("batch", min=1)
    height, width = torch.export.Dim.DYNAMIC, torch.export.Dim.DYNAMIC
    shapes: dict[str, Any] = {"images": {0: batch, 2: height, 3: width},
                              "mask": {0: batch, 1: height, 2: width}}
    if graph.postprocess is not None:
        shapes["orig_sizes"] = {0: batch}
    return shapes


def _trace(graph: ExportGraph) -> torch.export.ExportedProgram:
    """torch.export of ``graph`` with free batch and image sizes (non-strict: the model's
    Python runs as written, the torch calls are traced)."""
    with torch.no_grad():
        return torch.export.export(graph, example_inputs(graph),
                                   dynamic_shapes=_dynamic_shapes(graph), strict=False)


def _input_ranges(program: torch.export.ExportedProgram) -> dict[str, list[int | None]]:
    """``{"batch": [min, max], "height": ..., "width": ...}`` of the traced images input (max
    None: unbounded), read off the program's symbolic shapes."""
    images = next(node for node in program.graph.nodes
                  if node.op == "placeholder" and node.name == "images")
    ranges: dict[str, list[int | None]] = {}
    for name, size in zip(("batch", None, "height", "width"), images.meta["val"].shape,
                          strict=True):
        if name is None:
            continue
        if not isinstance(size, torch.SymInt):
            raise ValueError(f"torch.export fixed the {name} of images to {size}: the graph "
                             "would take that size only")
        bounds = program.range_constraints[size.node.expr]
        # Finite bounds are sympy Integers; an unbounded one is torch's own infinity.
        upper = int(bounds.upper) if bounds.upper.is_Integer else None
        ranges[name] = [int(bounds.lower), upper]
    return ranges


def write_onnx(graph: ExportGraph, path: str,
               exporter: str) -> tuple[str, str | None, dict[str, list[int | None]]]:
    """Write ``graph`` as an ONNX file at ``path`` with ``exporter`` (as
    :func:`export_model`'s); returns (the exporter used, why not the dynamo one, the input
    ranges). The TorchScript exporter traces the example inputs: a graph whose Python depends
    on sizes or values may then hold only the example's case, which parity (not the exporter)
    finds out; hence it is only the fallback."""
    if exporter == "torchscript":
        _torchscript_onnx(graph, path)
        return "torchscript", "exporter='torchscript' was asked for", {}
    try:
        program = _trace(graph)
        ranges = _input_ranges(program)
        with torch.no_grad(), warnings.catch_warnings():
            # onnxscript warns that torchvision's sampling_ratio -1 becomes RoiAlign's 0: both
            # mean the adaptive sample count, ceil(RoI size / bins), so nothing changes.
            warnings.filterwarnings("ignore", message="ONNX export for RoIAlign")
            torch.onnx.export(program, example_inputs(graph), path, dynamo=True,
                              input_names=_input_names(graph),
                              output_names=list(graph.output_names), opset_version=OPSET,
                              external_data=False, optimize=True, verbose=False)
    except Exception as err:  # any failure of the tracer or of the translation: fall back
        if exporter == "dynamo":
            raise
        reason = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"
        warnings.warn(f"the dynamo exporter failed ({reason}); exporting with the TorchScript "
                      "exporter instead: check its parity", stacklevel=3)
        _torchscript_onnx(graph, path)
        return "torchscript", reason, {}
    return "dynamo", None, ranges


def _torchscript_onnx(graph: ExportGraph, path: str) -> None:
    """torch.onnx's tracing exporter with named dynamic axes."""
    names = _input_names(graph)
    axes = {"images": {0: "batch", 2: "height", 3: "width"},
            "mask": {0: "batch", 1: "height", 2: "width"}, "orig_sizes": {0: "batch"}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="ONNX export for RoIAlign")  # as in write_onnx
        torch.onnx.export(graph, example_inputs(graph), path, dynamo=False, input_names=names,
                          output_names=list(graph.output_names), opset_version=OPSET,
                          dynamic_axes={n: axes[n] for n in names})


def _finish_onnx(path: str, info: Mapping[str, str]) -> None:
    """Write ``info`` into the file's metadata_props and check the model with onnx.checker
    (full check: shape inference included)."""
    import onnx

    proto = onnx.load(path)
    del proto.metadata_props[:]
    for key, value in info.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, path)


def metadata(graph: ExportGraph, config: DetectorConfig | None,
             categories: Mapping[int, str] | None, roi_align: str,
             extra: Mapping[str, str] | None) -> dict[str, str]:
    """What the file says about itself, as string values (JSON where structured):
    ``samdetr.inputs`` / ``samdetr.outputs`` (names in order), ``samdetr.categories``
    (``[{"id", "name"}, ...]``, as checkpoints hold them), ``samdetr.config`` (the detector
    config), ``samdetr.num_top``, ``samdetr.roi_align``, ``samdetr.torch``; ``extra`` is added
    as given."""
    if config is not None and not isinstance(config, DetectorConfig):
        raise TypeError(f"config must be a DetectorConfig, got {type(config).__name__}")
    if categories is not None and not isinstance(categories, Mapping):
        raise TypeError(f"categories must be a mapping {{id: name}}, got "
                        f"{type(categories).__name__}")
    info = {
        "samdetr.inputs": json.dumps(_input_names(graph)),
        "samdetr.outputs": json.dumps(list(graph.output_names)),
        "samdetr.categories": json.dumps(
            [{"id": int(i), "name": str(n)} for i, n in sorted((categories or {}).items())]),
        "samdetr.config": json.dumps(config.to_dict() if config is not None else None,
                                     sort_keys=True),
        "samdetr.num_top": str(graph.postprocess.num_top if graph.postprocess else ""),
        "samdetr.roi_align": roi_align,
        "samdetr.torch": torch.__version__,
    }
    for key, value in (extra or {}).items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(f"extra_metadata must map strings to strings, got {key!r}: "
                            f"{value!r}")
        info[key] = value
    return info
