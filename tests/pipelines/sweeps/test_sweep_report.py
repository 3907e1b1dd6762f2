"""A sweep's outcome table, CSV, winner and plots (pure functions of the trials' outcomes)."""

from __future__ import annotations

import csv
import io

from hypothesis import given
from hypothesis import strategies as st

from pipelines.sweeps.report import (
    TrialOutcome,
    console_table,
    history_from_rows,
    metric_by_epoch_figure,
    metric_vs_param_figure,
    outcome_status,
    results_csv,
    winner,
    x_param,
)


def _outcome(trial: str, m: int, smca: str, aps: list[float], status: str = "finished",
             lr: float | None = None) -> TrialOutcome:
    params = {"model.num_salient_points": m, "smca": smca}
    if lr is not None:
        params["optim.lr"] = lr
    history = [{"epoch": e, "AP": ap, "AP50": 2 * ap} for e, ap in enumerate(aps)]
    return TrialOutcome(trial, f"s-{trial}", params, history, status, 60.0 * len(aps))


OUTCOMES = [
    _outcome("a_00000", 2, "off", [0.10, 0.20]),
    _outcome("a_00001", 4, "off", [0.15, 0.30]),
    _outcome("a_00002", 2, "beta8", [0.05], "stopped early"),
    _outcome("a_00003", 4, "beta8", [0.25, 0.22]),
    TrialOutcome("a_00004", "s-a_00004", {"model.num_salient_points": 8, "smca": "off"}, [],
                 "error", 3.0, error="boom"),
]


def test_the_winner_is_the_trial_with_the_best_epoch():
    assert winner(OUTCOMES, "AP").trial_id == "a_00001"
    assert winner(OUTCOMES, "AP50").trial_id == "a_00001"
    assert winner(OUTCOMES[2:3], "AP").trial_id == "a_00002"  # stopped trials count too
    assert winner(OUTCOMES[4:], "AP") is None


def test_status_follows_error_and_epochs():
    assert outcome_status(None, 2, 2) == "finished"
    assert outcome_status(None, 1, 2) == "stopped early"
    assert outcome_status(RuntimeError("x"), 2, 2) == "error"


def test_the_csv_has_one_row_per_trial_with_params_best_epochs_and_flags():
    rows = list(csv.DictReader(io.StringIO(results_csv(OUTCOMES, "AP"))))
    assert [r["trial_id"] for r in rows] == [o.trial_id for o in OUTCOMES]
    first = rows[1]
    assert (first["model.num_salient_points"], first["smca"]) == ("4", "off")
    assert (float(first["best_AP"]), first["best_epoch"], first["epochs_run"]) == (0.3, "2", "2")
    assert [r["stopped_early"] for r in rows] == ["False", "False", "True", "False", "False"]
    assert rows[4]["status"] == "error" and rows[4]["best_AP"] == ""
    assert float(rows[2]["wall_time_s"]) == 60.0


def test_the_console_table_lists_the_best_trial_first():
    lines = console_table(OUTCOMES, "AP").splitlines()
    assert lines[0].split()[:3] == ["trial", "model.num_salient_points", "smca"]
    assert lines[2].startswith("a_00001") and "30.00" in lines[2] and "60.00" in lines[2]
    assert lines[-1].startswith("a_00004") and " error " in lines[-1]
    assert "stopped early" in console_table(OUTCOMES, "AP")


@given(st.lists(st.tuples(st.integers(0, 5), st.floats(0, 1)), max_size=30))
def test_history_keeps_the_last_report_of_each_epoch_in_order(reports):
    rows = [{"epoch": e, "AP": v, "trial_id": "x"} for e, v in reports]
    history = history_from_rows(rows, ["AP", "AP50"])
    assert [h["epoch"] for h in history] == sorted({e for e, _ in reports})
    last = {e: v for e, v in reports}
    assert all(h["AP"] == last[h["epoch"]] and "AP50" not in h for h in history)


def test_rows_without_an_epoch_are_skipped():
    assert history_from_rows([{"epoch": float("nan"), "AP": 1.0}, {"AP": 2.0}], ["AP"]) == []


def test_the_plots_put_m_on_the_x_axis_and_one_line_per_option():
    assert x_param(OUTCOMES) == "model.num_salient_points"
    figure = metric_vs_param_figure(OUTCOMES, "AP")
    axes = figure.axes[0]
    lines = [line for line in axes.lines if not line.get_label().startswith("_")]
    assert sorted(line.get_label() for line in lines) == ["smca=beta8", "smca=off"]
    off = next(line for line in lines if line.get_label() == "smca=off")
    assert list(off.get_xdata()) == [2, 4] and list(off.get_ydata()) == [20.0, 30.0]
    # The trial stopped after 1 epoch is an open marker with its epochs written beside it.
    assert [t.get_text() for t in axes.texts] == ["1 ep"]
    assert any(line.get_markerfacecolor() == "white" and list(line.get_xdata()) == [2]
               for line in axes.lines)
    by_epoch = metric_by_epoch_figure(OUTCOMES, "AP").axes[0]
    assert len(by_epoch.lines) == 4  # the errored trial reported nothing
    assert by_epoch.lines[2].get_linestyle() == "--"  # stopped early


def test_sampled_floats_are_not_grouped_on():
    outcomes = [_outcome("b_0", 2, "off", [0.1], lr=1e-4), _outcome("b_1", 4, "off", [0.2],
                                                                     lr=3e-4)]
    axes = metric_vs_param_figure(outcomes, "AP").axes[0]
    assert [line.get_label() for line in axes.lines if not line.get_label().startswith("_")] \
        == ["smca=off"]
    assert x_param([_outcome("c", 2, "off", [0.1], lr=1e-4)]) == "model.num_salient_points"
    only_lr = [TrialOutcome("d", "s-d", {"optim.lr": 1e-4, "smca": "off"}, [], "finished", 1.0)]
    assert x_param(only_lr) == "optim.lr"
