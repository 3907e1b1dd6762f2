"""A registered model or a checkpoint exported to ONNX or an ExportedProgram, with its parity
report (``python -m pipelines.export`` is its command line, and its docstring the usage).

The model is read as the other commands read it (a checkpoint, or the checkpoint an MLflow
model carries, fetched from the command's store), exported by
:func:`samdetr.export.exporter.export_model` and run back on generated images beside the
PyTorch model (:mod:`samdetr.export.parity`); the report is written next to the file
(``<output>.parity.json``). A model URI's export is also recorded as an MLflow run holding the
file and its report, tagged with the registered version.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipelines.common.checkpoints import local_checkpoint
from pipelines.common.checks import flag, non_empty, positive_int
from pipelines.common.tracking import create_run, finish_run, store_client
from pipelines.common.tracking_settings import store_uri
from pipelines.registry.evaluation_record import registered_version
from pipelines.registry.model_uri import check_model_source
from pipelines.registry.register import fetched_checkpoint
from samdetr.export.exporter import EXPORT_ROI_ALIGN, EXPORTERS, FORMATS

EXPERIMENT = "samdetr-export"
SUFFIXES = {"onnx": ".onnx", "exported_program": ".pt2"}
# Parity images when none are given: the model's eval size in landscape and portrait, as the
# eval transform makes them (shorter side = size, longer side at most max_size).
DEFAULT_EVAL = {"size": 800, "max_size": 1333}


@dataclass(frozen=True)
class ExportSettings:
    """Exactly one of ``model_uri`` (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``,
    ``runs:/ID/model``) and ``checkpoint`` (``checkpoint.pt`` or a Ray Train checkpoint
    folder, local or a URI). ``output``: the file (``.onnx`` or ``.pt2``). ``parity_sizes``:
    (height, width) of the generated parity images (None: the model's eval size, landscape
    and portrait). ``record``: a model URI's export becomes an MLflow run in
    ``mlflow_experiment`` holding the file and the report."""
    output: str
    model_uri: str | None = None
    checkpoint: str | None = None
    format: str = "onnx"
    postprocess: bool = False
    num_top: int = 100
    roi_align: str = "torchvision"
    exporter: str = "auto"
    parity: bool = True
    parity_sizes: list[list[int]] | None = None
    record: bool = True
    tracking_uri: str | None = None
    mlflow_experiment: str = EXPERIMENT

    def __post_init__(self) -> None:
        check_model_source(self.model_uri, self.checkpoint)
        for name, allowed in (("format", FORMATS), ("exporter", EXPORTERS),
                              ("roi_align", EXPORT_ROI_ALIGN)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got "
                                 f"{getattr(self, name)!r}")
        non_empty(self.output, "output", "the file to write")
        if not str(self.output).endswith(SUFFIXES[self.format]):
            raise ValueError(f"output must end with {SUFFIXES[self.format]} for "
                             f"format={self.format}, got {self.output!r}")
        positive_int(self.num_top, "num_top")
        for name in ("postprocess", "parity", "record"):
            flag(getattr(self, name), name)
        if self.parity_sizes is not None and not (
                isinstance(self.parity_sizes, (list, tuple)) and self.parity_sizes and all(
                    isinstance(s, (list, tuple)) and len(s) == 2 and all(
                        isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in s)
                    for s in self.parity_sizes)):
            raise ValueError(f"parity_sizes must be a list of [height, width] pairs of "
                             f"positive integers, or null, got {self.parity_sizes!r}")
        non_empty(self.mlflow_experiment, "mlflow_experiment", "an MLflow experiment name")


@contextlib.contextmanager
def source_checkpoint(settings: ExportSettings) -> Iterator[str]:
    """A local samdetr checkpoint file: the checkpoint, or the one the MLflow model carries,
    fetched from the command's store."""
    if settings.checkpoint is not None:
        with local_checkpoint(settings.checkpoint) as path:
            yield path
        return
    with fetched_checkpoint(store_uri(settings.tracking_uri), settings.model_uri) as path:
        yield path


def parity_sizes(settings: ExportSettings, eval_transform: dict[str, Any] | None) -> list:
    """The (height, width) of the parity images: the settings', else a landscape and a portrait
    image at the model's eval size."""
    if settings.parity_sizes is not None:
        return [tuple(size) for size in settings.parity_sizes]
    sizes = {**DEFAULT_EVAL, **(eval_transform or {})}
    short, cap = int(sizes["size"]), int(sizes["max_size"] or 4 * sizes["size"])
    long = min(round(short * 4 / 3), cap)
    return [(short, long), (long, short)]


def _source_metadata(settings: ExportSettings, extra: dict[str, Any],
                     version: Any | None) -> dict[str, str]:
    info = {"samdetr.source": settings.model_uri or settings.checkpoint,
            "samdetr.eval_transform": json.dumps(extra.get("eval_transform"))}
    if version is not None:
        info["samdetr.registered_model"] = str(version.name)
        info["samdetr.model_version"] = str(version.version)
    return info


def _runner(settings: ExportSettings, path: str) -> Any:
    from samdetr.export.runtime import ExportedProgramDetector, OnnxDetector

    return OnnxDetector(path) if settings.format == "onnx" else ExportedProgramDetector(path)


def run_export(settings: ExportSettings) -> dict[str, Any]:
    """Export, check parity, record; returns the summary (``passed``: the parity report's
    verdict, True when parity is off)."""
    from samdetr.checkpoint import load_checkpoint
    from samdetr.export.exporter import export_model
    from samdetr.export.parity import generated_images, parity_report

    uri = store_uri(settings.tracking_uri) if settings.model_uri is not None else None
    version = registered_version(store_client(uri), settings.model_uri) if uri else None
    with source_checkpoint(settings) as local:
        model, config, extra = load_checkpoint(local, map_location="cpu")
    categories = {int(c["id"]): str(c["name"]) for c in extra.get("categories") or []}
    output = Path(settings.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    result = export_model(model, output, format=settings.format, config=config,
                          categories=categories, postprocess=settings.postprocess,
                          num_top=settings.num_top, roi_align=settings.roi_align,
                          exporter=settings.exporter,
                          extra_metadata=_source_metadata(settings, extra, version))
    summary: dict[str, Any] = {
        "output": str(output), "format": result.format, "exporter": result.exporter,
        "fallback_reason": result.fallback_reason, "input_ranges": result.input_ranges,
        "export_s": round(result.seconds, 1), "size_mb": round(output.stat().st_size / 2**20, 1),
        "outputs": list(result.output_names), "source": settings.model_uri or settings.checkpoint,
        "num_top": settings.num_top, "passed": True, "report": None, "mlflow_run_id": None,
    }
    if settings.parity:
        model.eval().float()
        images = generated_images(parity_sizes(settings, extra.get("eval_transform")))
        report = parity_report(model, _runner(settings, str(output)), images, settings.num_top)
        report["export"] = {k: summary[k] for k in ("format", "exporter", "fallback_reason",
                                                    "input_ranges", "export_s", "source")}
        report["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        path = output.with_name(output.name + ".parity.json")
        path.write_text(json.dumps(report, indent=2) + "\n")
        summary.update(passed=report["passed"], report=str(path), max=report["max"],
                       failures=report["failures"])
    if uri is not None and settings.record:
        summary["mlflow_run_id"] = record_export(uri, settings, summary, version)
    return summary


def record_export(uri: str, settings: ExportSettings, summary: dict[str, Any],
                  version: Any | None) -> str:
    """A finished MLflow run in ``settings.mlflow_experiment`` holding the exported file and its
    parity report (artifacts under ``export/``), tagged with the model URI and the registered
    version; returns its id."""
    subject = f"{version.name}-v{version.version}" if version is not None else "model"
    when = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    params = {"model_uri": str(settings.model_uri), "format": settings.format,
              "postprocess": str(settings.postprocess), "num_top": str(settings.num_top),
              "exporter": summary["exporter"], "roi_align": settings.roi_align}
    run_id = create_run(uri, settings.mlflow_experiment, f"export-{subject}-{when}", params,
                        json.dumps(asdict(settings), indent=2))  # JSON is YAML
    client = store_client(uri)
    tags = {"samdetr.purpose": "export", "samdetr.model_uri": str(settings.model_uri),
            "samdetr.export.format": settings.format,
            "samdetr.export.parity": "passed" if summary["passed"] else "failed"}
    if version is not None:
        tags.update({"samdetr.model_name": str(version.name),
                     "samdetr.model_version": str(version.version)})
    ok = False
    try:
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
        client.log_artifact(run_id, summary["output"], "export")
        if summary["report"]:
            client.log_artifact(run_id, summary["report"], "export")
        ok = True
    finally:
        finish_run(uri, run_id, ok)
    return run_id


def find_export(uri: str, model_uri: str, format: str) -> tuple[str, str]:
    """``(run id, artifact path)`` of the newest export of ``model_uri`` in ``format`` whose
    parity passed, recorded by :func:`record_export` in the store ``uri`` (for a registered
    version: an export of that version, whichever alias or number it was exported by), or a
    ValueError saying how to make one."""
    client = store_client(uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    version = registered_version(client, model_uri)
    if version is not None:
        subject = (f"tags.`samdetr.model_name` = '{version.name}' and "
                   f"tags.`samdetr.model_version` = '{version.version}'")
    else:
        subject = f"tags.`samdetr.model_uri` = '{model_uri}'"
    runs = [] if experiment is None else client.search_runs(
        [experiment.experiment_id],
        f"{subject} and tags.`samdetr.export.format` = '{format}' and "
        "tags.`samdetr.export.parity` = 'passed' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        named = f"{version.name} v{version.version}" if version is not None else model_uri
        raise ValueError(
            f"no {format} export of {named} with passed parity in {uri}: export it first "
            f"(python -m pipelines.export model_uri={model_uri} format={format} "
            f"output=detector{SUFFIXES[format]}), or pass exported=FILE")
    artifacts = [a.path for a in client.list_artifacts(runs[0].info.run_id, "export")
                 if a.path.endswith(SUFFIXES[format])]
    if len(artifacts) != 1:
        raise ValueError(f"export run {runs[0].info.run_id} holds {len(artifacts)} "
                         f"{SUFFIXES[format]} files under export/, expected one")
    return runs[0].info.run_id, artifacts[0]


def format_export(summary: dict[str, Any]) -> str:
    """The console lines of an export."""
    lines = [f"[export] {summary['source']} -> {summary['output']} ({summary['format']}, "
             f"{summary['size_mb']} MB, exporter {summary['exporter']}, "
             f"{summary['export_s']} s)"]
    if summary["fallback_reason"]:
        lines.append(f"[export] not the dynamo exporter: {summary['fallback_reason']}")
    if summary["report"]:
        worst = summary["max"]
        verdict = "passed" if summary["passed"] else "FAILED"
        lines.append(f"[export] parity {verdict}: logits max |diff| "
                     f"{worst['pred_logits_max_abs']:.2e}, boxes {worst['pred_boxes_max_abs']:.2e}"
                     f", top-{summary['num_top']} agreement {worst['agreement']:.3f} "
                     f"-> {summary['report']}")
        lines += [f"[export]   {failure}" for failure in summary["failures"]]
    if summary["mlflow_run_id"]:
        lines.append(f"[export] recorded as MLflow run {summary['mlflow_run_id']}")
    return "\n".join(lines)
