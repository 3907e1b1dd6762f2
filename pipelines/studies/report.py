"""What a convergence study found: per-epoch statistics over seeds, the table, the plot, the text.

A study trains several model variants with several seeds each on the same data and budget
(:mod:`pipelines.study`). Each run leaves its history: one dict per epoch with ``epoch``
(0-based), ``AP``, ``AP50``, ``AP75`` and ``loss``. Everything here is a pure function of those
histories, so it is tested without Ray or MLflow.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# A run's histories by variant, then by seed: {"sam": {0: [{epoch, AP, AP50, ...}, ...]}}.
Histories = Mapping[str, Mapping[int, Sequence[Mapping[str, float]]]]

BEGIN, END = "<!-- study:begin -->", "<!-- study:end -->"


@dataclass(frozen=True)
class EpochStats:
    """One metric of one variant at one epoch, over the seeds (in the metric's own units)."""
    mean: float
    stdev: float  # sample standard deviation; 0 with one seed
    low: float
    high: float
    runs: int


def epoch_stats(histories: Histories, metric: str) -> dict[str, dict[int, EpochStats]]:
    """``{variant: {epoch: EpochStats}}`` of ``metric`` over the seeds that reached the epoch."""
    out: dict[str, dict[int, EpochStats]] = {}
    for variant, seeds in histories.items():
        by_epoch: dict[int, list[float]] = {}
        for history in seeds.values():
            for entry in history:
                by_epoch.setdefault(int(entry["epoch"]), []).append(float(entry[metric]))
        out[variant] = {
            epoch: EpochStats(
                mean=statistics.fmean(values),
                stdev=statistics.stdev(values) if len(values) > 1 else 0.0,
                low=min(values), high=max(values), runs=len(values),
            )
            for epoch, values in sorted(by_epoch.items())
        }
    return out


def results_csv(histories: Histories) -> str:
    """One row per run and epoch: variant, seed, epoch (from 1), AP, AP50, AP75, loss."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    keys = ("AP", "AP50", "AP75", "loss")
    writer.writerow(("variant", "seed", "epoch", *keys))
    for variant, seeds in histories.items():
        for seed, history in sorted(seeds.items()):
            for entry in history:
                writer.writerow((variant, seed, int(entry["epoch"]) + 1,
                                 *(f"{float(entry.get(k, float('nan'))):.6f}" for k in keys)))
    return buffer.getvalue()


def percent_table(histories: Histories, metric: str) -> str:
    """A Markdown table: one row per epoch, per variant ``mean ± stdev [min-max]`` in %."""
    stats = epoch_stats(histories, metric)
    variants = list(stats)
    epochs = sorted({e for per in stats.values() for e in per})
    lines = [
        "| epoch | " + " | ".join(variants) + " |",
        "|---:|" + "---:|" * len(variants),
    ]
    for epoch in epochs:
        cells = []
        for variant in variants:
            s = stats[variant].get(epoch)
            cells.append("–" if s is None else
                         f"{100 * s.mean:.1f} ± {100 * s.stdev:.1f} "
                         f"[{100 * s.low:.1f}–{100 * s.high:.1f}]")
        lines.append(f"| {epoch + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reading(histories: Histories, baseline: str, metric: str = "AP50") -> list[str]:
    """Plain statements about each variant against ``baseline`` at the last common epoch:
    the difference of the means, and whether it exceeds the seeds' spread (both ranges apart).
    """
    stats = epoch_stats(histories, metric)
    if baseline not in stats:
        return []
    common = set.intersection(*(set(per) for per in stats.values())) if stats else set()
    if not common:
        return []
    last = max(common)
    base = stats[baseline][last]
    lines = []
    for variant, per in stats.items():
        if variant == baseline:
            continue
        s = per[last]
        gap = 100 * (s.mean - base.mean)
        if s.low > base.high:
            verdict = "above the baseline with every seed (the ranges do not overlap)"
        elif s.high < base.low:
            verdict = "below the baseline with every seed (the ranges do not overlap)"
        else:
            verdict = "within the seeds' spread of the baseline (the ranges overlap)"
        lines.append(
            f"At epoch {last + 1}, {variant} reaches {metric} {100 * s.mean:.1f}% against "
            f"{baseline}'s {100 * base.mean:.1f}% ({gap:+.1f} points, {s.runs} and {base.runs} "
            f"seeds): {verdict}."
        )
    return lines


def figure(histories: Histories) -> Any:
    """AP50 and AP against epoch: per variant the mean over seeds (line) and min-max (band)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.4))
    axes_list = fig.subplots(1, 2)
    for axes, metric in zip(axes_list, ("AP50", "AP"), strict=True):
        for variant, per in epoch_stats(histories, metric).items():
            epochs = [e + 1 for e in per]
            line = axes.plot(epochs, [100 * s.mean for s in per.values()], "o-", label=variant)
            axes.fill_between(epochs, [100 * s.low for s in per.values()],
                              [100 * s.high for s in per.values()],
                              color=line[0].get_color(), alpha=0.2)
        axes.set_xlabel("epoch")
        axes.set_ylabel(f"validation {metric} (%)")
        axes.grid(alpha=0.3)
        axes.xaxis.get_major_locator().set_params(integer=True)
    axes_list[0].legend()
    fig.suptitle("mean over seeds (line) and min-max (band)")
    fig.tight_layout()
    return fig


def report_section(histories: Histories, facts: Mapping[str, str], baseline: str,
                   plot_name: str) -> str:
    """The generated part of the report, between the :data:`BEGIN` / :data:`END` markers.

    ``facts``: ``{label: value}`` lines shown first (date, command, machine, wall time).
    """
    parts = [BEGIN, ""]
    parts += [f"- **{label}**: {value}" for label, value in facts.items()]
    parts += ["", f"![AP50 and AP against epoch]({plot_name})", "",
              "Validation AP50 (%) per epoch: mean ± standard deviation [min–max] over seeds.", "",
              percent_table(histories, "AP50"), "",
              "Validation AP (%, IoU 0.50:0.95), the same way.", "",
              percent_table(histories, "AP"), ""]
    statements = reading(histories, baseline)
    if statements:
        parts += ["What the numbers say (computed):", ""]
        parts += [f"- {line}" for line in statements]
        parts.append("")
    parts.append(END)
    return "\n".join(parts)


def merge_report(existing: str | None, section: str, title: str) -> str:
    """``existing`` with its generated section replaced by ``section`` (text outside the
    markers, such as a hand-written reading, is kept); a new document if there is none."""
    if existing and BEGIN in existing and END in existing:
        head, rest = existing.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        return head + section + tail
    return f"# {title}\n\n{section}\n"
