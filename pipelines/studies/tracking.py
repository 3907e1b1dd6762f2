"""The study's MLflow parent run and its report files.

The parent run holds the study's settings and, at the end, the per-epoch results
(``results.csv``), the plot (``convergence.png``), the report (``convergence.md``) and, per
variant, the mean AP / AP50 over seeds as metrics by epoch (``AP50_mean.<variant>``). The runs
themselves are its children (``tracking.parent_run_id``). As in training, a tracking failure is
a warning: the report file is still written.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipelines.common.tracking import finish_run, open_parent_run, quietly
from pipelines.common.tracking_settings import TrackingSettings
from pipelines.studies.report import (
    Histories,
    epoch_stats,
    figure,
    merge_report,
    percent_table,
    report_section,
    results_csv,
)
from pipelines.training.settings import flatten

TITLE = "Convergence: SAM-DETR against the baseline decoder"


@dataclass
class StudyTracking:
    """The parent run (``run_id`` None: tracking off, or the store failed at the start)."""
    uri: str | None
    run_id: str | None

    @classmethod
    def open(cls, tracking: TrackingSettings, study: Any, run_id: str | None,
             command: str) -> StudyTracking:
        """Reopen the parent run of an interrupted study, or create it."""
        params = flatten({"study": asdict(study)})
        return cls(*open_parent_run(tracking, study.name, params, command + "\n", run_id,
                                    "study"))

    def finish(self, histories: Histories, facts: dict[str, str], report: Path | None,
               baseline: str) -> None:
        """Write the report (if asked), log everything to the parent run, print the table."""
        # The plot lies beside the report, named after it; in MLflow, beside convergence.md.
        section = report_section(histories, facts, baseline, "convergence.png")
        if report is not None:
            report.parent.mkdir(parents=True, exist_ok=True)
            existing = report.read_text() if report.is_file() else None
            beside = report_section(histories, facts, baseline, report.with_suffix(".png").name)
            report.write_text(merge_report(existing, beside, TITLE))
            figure(histories).savefig(report.with_suffix(".png"), dpi=110)
            print(f"[study] report {report} and {report.with_suffix('.png')}", flush=True)
        print("\nValidation AP50 (%) per epoch, mean ± stdev [min–max] over seeds:\n"
              + percent_table(histories, "AP50"), flush=True)
        if self.run_id is None:
            return
        _quietly("log the study's results", self._log, histories,
                 merge_report(None, section, TITLE))

        _quietly("mark the study's MLflow run FINISHED", finish_run, self.uri, self.run_id, True)

    def _log(self, histories: Histories, markdown: str) -> None:
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.uri)
        with tempfile.TemporaryDirectory() as folder:
            root = Path(folder)
            (root / "results.csv").write_text(results_csv(histories))
            (root / "convergence.md").write_text(markdown)
            figure(histories).savefig(root / "convergence.png", dpi=110)
            client.log_artifacts(self.run_id, folder)
        metrics = [
            Metric(f"{metric}_mean.{variant}", stats.mean, 0, epoch)
            for metric in ("AP", "AP50")
            for variant, per in epoch_stats(histories, metric).items()
            for epoch, stats in per.items()
        ]
        for i in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics per batch
            client.log_batch(self.run_id, metrics=metrics[i : i + 1000])


def _quietly(what: str, fn: Callable[..., Any], *args: Any) -> Any:
    return quietly(what, fn, *args, prefix="study")
