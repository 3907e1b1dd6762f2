"""Running an exported SAM-DETR (:mod:`samdetr.export.exporter`) and getting what the PyTorch model
gives: ONNX files with ONNX Runtime, ExportedProgram files with ``torch.export.load``.

    detector = OnnxDetector("detector.onnx")
    outputs = detector(images, mask, orig_sizes)   # {"pred_logits": ..., "scores": ..., ...}
    detector.categories                            # {id: name}, from the file

Both runners return a dict of CPU tensors named as the graph's outputs: ``pred_logits``
(B, Q, K), ``pred_boxes`` (B, Q, 4), and for a graph exported with ``postprocess`` also
``scores`` (B, k), ``labels`` (B, k), ``boxes`` (B, k, 4), ``queries`` (B, k).
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from torch import Tensor

from samdetr.export.exporter import PROGRAM_METADATA, require_export_extra

__all__ = ["ExportedProgramDetector", "OnnxDetector", "open_exported", "read_onnx_metadata"]


def _checked_inputs(images: Tensor, mask: Tensor | None, orig_sizes: Tensor | None,
                    inputs: list[str]) -> dict[str, Tensor]:
    """The graph's inputs by name, checked: a missing mask means no padding."""
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"images must be a (B, 3, H, W) tensor, got {shape}")
    batch, _, height, width = images.shape
    if mask is None:
        mask = torch.zeros(batch, height, width, dtype=torch.bool)
    if mask.shape != (batch, height, width) or mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool (B, H, W) = {(batch, height, width)}, got "
                         f"{mask.dtype} {tuple(mask.shape)}")
    named = {"images": images.detach().cpu().float(), "mask": mask.detach().cpu()}
    if "orig_sizes" in inputs:
        if orig_sizes is None:
            raise ValueError("this graph post-processes its detections: pass orig_sizes, the "
                             "(B, 2) original (height, width) of the images")
        sizes = torch.as_tensor(orig_sizes).detach().cpu().to(torch.int64)
        if sizes.shape != (batch, 2):
            raise ValueError(f"orig_sizes must be (B, 2) = ({batch}, 2), got "
                             f"{tuple(sizes.shape)}")
        named["orig_sizes"] = sizes
    elif orig_sizes is not None:
        raise ValueError("this graph has no post-processing: orig_sizes is not taken (export "
                         "with postprocess=True, or post-process the outputs with PostProcess)")
    return named


def read_onnx_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict (read without loading the weights'
    values into a session)."""
    require_export_extra()
    import onnx

    proto = onnx.load(os.fspath(path), load_external_data=False)
    return {entry.key: entry.value for entry in proto.metadata_props}


def _categories(info: dict[str, str]) -> dict[int, str]:
    return {int(c["id"]): str(c["name"])
            for c in json.loads(info.get("samdetr.categories", "[]"))}


class OnnxDetector:
    """An exported ONNX file in an ONNX Runtime session (CPU unless ``providers`` say
    otherwise).

    Args:
        path: the ``.onnx`` file.
        threads: ONNX Runtime's intra-op threads (None: its default, every core).
        providers: execution providers, e.g. ``["CUDAExecutionProvider",
            "CPUExecutionProvider"]``.
    """

    def __init__(self, path: str | os.PathLike[str], threads: int | None = None,
                 providers: list[str] | None = None):
        require_export_extra()
        import onnxruntime

        options = onnxruntime.SessionOptions()
        if threads is not None:
            if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
                raise ValueError(f"threads must be a positive int, got {threads!r}")
            options.intra_op_num_threads = threads
        self.path = os.fspath(path)
        self.session = onnxruntime.InferenceSession(
            self.path, options, providers=providers or ["CPUExecutionProvider"])
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.categories = _categories(self.metadata)

    def __call__(self, images: Tensor, mask: Tensor | None = None,
                 orig_sizes: Tensor | None = None) -> dict[str, Tensor]:
        """images (B, 3, H, W) normalised, mask (B, H, W) bool True on padding (None: none),
        orig_sizes (B, 2) (height, width) for a post-processing graph -> outputs by name."""
        named = _checked_inputs(images, mask, orig_sizes, self.input_names)
        values = self.session.run(self.output_names, {k: v.numpy() for k, v in named.items()})
        return {name: torch.from_numpy(value)
                for name, value in zip(self.output_names, values, strict=True)}


class ExportedProgramDetector:
    """An ExportedProgram file (``format=exported_program``), loaded with ``torch.export.load``
    and run as a module on the CPU. Loading needs torch and torchvision (whose ``roi_align``
    operator the graph calls), not this library's model code."""

    def __init__(self, path: str | os.PathLike[str]):
        import torchvision  # noqa: F401 - registers torchvision::roi_align before loading

        extra = {PROGRAM_METADATA: ""}
        self.path = os.fspath(path)
        program = torch.export.load(self.path, extra_files=extra)
        if not extra[PROGRAM_METADATA]:
            raise ValueError(f"{self.path} has no {PROGRAM_METADATA}: not a samdetr export")
        self.metadata: dict[str, Any] = json.loads(extra[PROGRAM_METADATA])
        self.input_names = json.loads(self.metadata["samdetr.inputs"])
        self.output_names = json.loads(self.metadata["samdetr.outputs"])
        self.categories = _categories(self.metadata)
        self.module = program.module()

    def __call__(self, images: Tensor, mask: Tensor | None = None,
                 orig_sizes: Tensor | None = None) -> dict[str, Tensor]:
        """As :meth:`OnnxDetector.__call__`."""
        named = _checked_inputs(images, mask, orig_sizes, self.input_names)
        with torch.no_grad():
            values = self.module(*(named[name] for name in self.input_names))
        return dict(zip(self.output_names, values, strict=True))


def open_exported(path: str | os.PathLike[str]) -> OnnxDetector | ExportedProgramDetector:
    """The runner of an exported file, told by its name: ``.onnx`` in ONNX Runtime (CPU),
    ``.pt2`` as an ExportedProgram."""
    name = os.fspath(path)
    if name.endswith(".onnx"):
        return OnnxDetector(name)
    if name.endswith(".pt2"):
        return ExportedProgramDetector(name)
    raise ValueError(f"{name} is not an exported samdetr model: expected a .onnx or .pt2 file "
                     "(python -m pipelines.export writes them)")
