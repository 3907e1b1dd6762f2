"""A sweep's results as data: one :class:`TrialOutcome` per trial, the CSV table, the console
table and the two plots (the metric against a searched setting, per option; the metric against
epoch, per trial). Pure functions of the outcomes: no Ray, no MLflow."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: The searched setting the first plot puts on its x axis when the sweep varies it.
PREFERRED_X = "model.num_salient_points"


@dataclass
class TrialOutcome:
    """One trial. ``params``: its draw (``{setting path or option name: value}``);
    ``history``: the reported epochs ``[{epoch, AP, AP50, ...}]`` in order; ``status``:
    ``finished``, ``stopped early`` (by the scheduler) or ``error``; ``seconds``: the wall
    time of its epochs (training and validation), summed over restarts."""
    trial_id: str
    run_name: str
    params: dict[str, Any]
    history: list[dict[str, float]]
    status: str
    seconds: float
    error: str | None = None
    mlflow_run_id: str | None = None

    @property
    def epochs_run(self) -> int:
        return len(self.history)

    def best(self, metric: str) -> dict[str, float] | None:
        """The epoch with the highest ``metric`` (the first of equals), or None."""
        scored = [h for h in self.history if isinstance(h.get(metric), (int, float))]
        return max(scored, key=lambda h: h[metric]) if scored else None


def outcome_status(error: Any, epochs_run: int, epochs: int) -> str:
    if error is not None:
        return "error"
    return "finished" if epochs_run >= epochs else "stopped early"


def history_from_rows(rows: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[dict]:
    """Tune's reported rows -> one entry per epoch (a resumed trial may repeat an epoch: the
    last report of it wins), in epoch order, with the ``keys`` that are numbers."""
    by_epoch: dict[int, dict[str, float]] = {}
    for row in rows:
        epoch = row.get("epoch")
        if not isinstance(epoch, (int, float)) or (isinstance(epoch, float) and math.isnan(epoch)):
            continue
        by_epoch[int(epoch)] = {
            "epoch": int(epoch),
            **{k: float(row[k]) for k in keys if isinstance(row.get(k), (int, float))},
        }
    return [by_epoch[e] for e in sorted(by_epoch)]


def winner(outcomes: Sequence[TrialOutcome], metric: str) -> TrialOutcome | None:
    """The trial whose best epoch scores highest on ``metric`` (errored trials included if
    they reported epochs: their checkpoints are as good as any)."""
    scored = [o for o in outcomes if o.best(metric) is not None]
    return max(scored, key=lambda o: o.best(metric)[metric]) if scored else None


def param_names(outcomes: Sequence[TrialOutcome]) -> list[str]:
    names: list[str] = []
    for outcome in outcomes:
        names += [k for k in outcome.params if k not in names]
    return names


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table_rows(outcomes: Sequence[TrialOutcome], metric: str) -> list[dict[str, Any]]:
    """One row per trial (the CSV's rows; the console table shows the same)."""
    rows = []
    for o in outcomes:
        best = o.best(metric) or {}
        rows.append({
            "trial_id": o.trial_id,
            **{name: o.params.get(name, "") for name in param_names(outcomes)},
            f"best_{metric}": best.get(metric, ""),
            "best_AP": best.get("AP", ""),
            "best_AP50": best.get("AP50", ""),
            "best_epoch": int(best["epoch"]) + 1 if best else "",
            "epochs_run": o.epochs_run,
            "stopped_early": o.status == "stopped early",
            "status": o.status,
            "wall_time_s": round(o.seconds, 1),
            "run_name": o.run_name,
            "mlflow_run_id": o.mlflow_run_id or "",
        })
    return rows


def results_csv(outcomes: Sequence[TrialOutcome], metric: str) -> str:
    rows = table_rows(outcomes, metric)
    if not rows:
        return ""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def console_table(outcomes: Sequence[TrialOutcome], metric: str) -> str:
    """A plain-text table, best trial first, metrics in percent."""
    order = sorted(outcomes, key=lambda o: -(o.best(metric) or {metric: -1.0})[metric])
    header = ["trial", *param_names(outcomes), f"best {metric} %", "AP50 %", "epochs", "status",
              "time"]
    lines = [header]
    for o in order:
        best = o.best(metric)
        lines.append([
            o.trial_id, *(_fmt(o.params.get(n, "")) for n in param_names(outcomes)),
            f"{100 * best[metric]:.2f}" if best else "-",
            f"{100 * best['AP50']:.2f}" if best and "AP50" in best else "-",
            str(o.epochs_run), o.status, f"{o.seconds / 60:.1f} min",
        ])
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def x_param(outcomes: Sequence[TrialOutcome]) -> str | None:
    """The setting on the first plot's x axis: M when searched, else the first numeric one."""
    names = param_names(outcomes)
    if PREFERRED_X in names:
        return PREFERRED_X
    numeric = [n for n in names if all(
        isinstance(o.params.get(n), (int, float)) and not isinstance(o.params.get(n), bool)
        for o in outcomes)]
    return numeric[0] if numeric else None


def _series_label(outcome: TrialOutcome, x: str | None, grouped: Sequence[str]) -> str:
    parts = [f"{n}={_fmt(outcome.params[n])}" for n in grouped if n != x and n in outcome.params]
    return ", ".join(parts) or "all trials"


def metric_vs_param_figure(outcomes: Sequence[TrialOutcome], metric: str) -> Any:
    """Best ``metric`` against the x setting (:func:`x_param`), one line per combination of
    the other listed settings and options (sampled floats are not grouped on). A trial that did
    not run every epoch is an open marker labelled with its epochs: its best is an early one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = x_param(outcomes)
    grouped = [n for n in param_names(outcomes)
               if not any(isinstance(o.params.get(n), float) for o in outcomes)]
    series: dict[str, list[tuple[Any, float, TrialOutcome]]] = {}
    for index, o in enumerate(outcomes):
        best = o.best(metric)
        if best is not None:
            xv = o.params.get(x, index) if x else index
            series.setdefault(_series_label(o, x, grouped), []).append(
                (xv, 100 * best[metric], o))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, points in sorted(series.items()):
        points.sort(key=lambda p: p[0])
        (line,) = ax.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                          label=label)
        for xv, yv, o in points:
            if o.status != "finished":
                ax.plot([xv], [yv], marker="o", markerfacecolor="white",
                        markeredgecolor=line.get_color(), linestyle="none")
                ax.annotate(f"{o.epochs_run} ep", (xv, yv), textcoords="offset points",
                            xytext=(4, 4), fontsize=7, color=line.get_color())
    if x == PREFERRED_X:
        ax.set_xscale("log", base=2)
        values = sorted({p[0] for points in series.values() for p in points})
        ax.set_xticks(values, [str(v) for v in values])
        ax.minorticks_off()
        ax.set_xlabel("salient points M (model.num_salient_points)")
    else:
        ax.set_xlabel(x or "trial")
    ax.set_ylabel(f"best validation {metric} (%)")
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8, title="open: stopped early", title_fontsize=7)
    fig.tight_layout()
    return fig


def metric_by_epoch_figure(outcomes: Sequence[TrialOutcome], metric: str) -> Any:
    """``metric`` by epoch for every trial; stopped trials dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = param_names(outcomes)
    fig, ax = plt.subplots(figsize=(7.2, 4.4))
    for o in outcomes:
        if not o.history:
            continue
        label = o.trial_id + ": " + ", ".join(f"{n}={_fmt(o.params.get(n, ''))}" for n in names)
        ax.plot([h["epoch"] + 1 for h in o.history],
                [100 * h.get(metric, math.nan) for h in o.history],
                linestyle="--" if o.status != "finished" else "-", marker=".", label=label)
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(f"validation {metric} (%)")
    ax.grid(alpha=0.3)
    if any(o.history for o in outcomes):
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
