"""The study's statistics, tables, reading and report merging (pure functions), and its settings."""

from __future__ import annotations

import csv
import io
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipelines.studies.report import (
    BEGIN,
    END,
    epoch_stats,
    merge_report,
    percent_table,
    reading,
    report_section,
    results_csv,
)
from pipelines.studies.run import StudySettings, plan_runs
from pipelines.training.settings import TrainSettings


def _history(values: list[float]) -> list[dict[str, float]]:
    return [{"epoch": e, "AP": v / 2, "AP50": v, "AP75": v / 3, "loss": 1 - v}
            for e, v in enumerate(values)]


HISTORIES = {
    "baseline": {0: _history([0.1, 0.2]), 1: _history([0.2, 0.3])},
    "sam": {0: _history([0.3, 0.5]), 1: _history([0.4, 0.7])},
    "sam_smca": {0: _history([0.1, 0.25])},  # one seed: no spread
}


def test_epoch_stats_over_seeds():
    stats = epoch_stats(HISTORIES, "AP50")
    last = stats["sam"][1]
    assert last.mean == pytest.approx(0.6) and last.low == 0.5 and last.high == 0.7
    assert last.stdev == pytest.approx(math.sqrt(0.02)) and last.runs == 2
    assert stats["sam_smca"][1].stdev == 0.0 and stats["sam_smca"][1].runs == 1


@given(st.lists(st.lists(st.floats(0, 1), min_size=1, max_size=4), min_size=1, max_size=5))
def test_mean_lies_within_the_seeds_range(per_seed):
    histories = {"v": {seed: _history(values) for seed, values in enumerate(per_seed)}}
    for epoch, s in epoch_stats(histories, "AP50")["v"].items():
        assert s.low - 1e-12 <= s.mean <= s.high + 1e-12 and s.stdev >= 0
        assert s.runs == sum(1 for values in per_seed if len(values) > epoch)


def test_table_has_a_row_per_epoch_and_a_column_per_variant():
    table = percent_table(HISTORIES, "AP50").splitlines()
    assert table[0] == "| epoch | baseline | sam | sam_smca |"
    assert len(table) == 2 + 2
    assert table[3].startswith("| 2 | 25.0 ± 7.1 [20.0–30.0] | 60.0 ± 14.1 [50.0–70.0] |")


def test_reading_says_whether_the_ranges_overlap():
    lines = reading(HISTORIES, "baseline")
    assert len(lines) == 2
    assert "sam reaches AP50 60.0% against baseline's 25.0% (+35.0 points" in lines[0]
    assert "above the baseline with every seed" in lines[0]
    assert "sam_smca" in lines[1] and "within the seeds' spread" in lines[1]
    assert reading(HISTORIES, "missing") == []


def test_csv_has_one_row_per_run_and_epoch():
    rows = list(csv.DictReader(io.StringIO(results_csv(HISTORIES))))
    assert len(rows) == 2 * 2 + 2 * 2 + 2
    assert rows[0] == {"variant": "baseline", "seed": "0", "epoch": "1", "AP": "0.050000",
                       "AP50": "0.100000", "AP75": "0.033333", "loss": "0.900000"}


def test_report_keeps_the_hand_written_text_outside_the_markers():
    section = report_section(HISTORIES, {"date": "2026-11-30"}, "baseline", "plot.png")
    assert section.startswith(BEGIN) and section.endswith(END)
    assert "- **date**: 2026-11-30" in section
    assert "![AP50 and AP against epoch](plot.png)" in section
    fresh = merge_report(None, section, "Title")
    assert fresh.startswith("# Title\n")
    edited = fresh.replace(END, END + "\n\n## Reading\nwritten by hand\n")
    again = merge_report(edited, section.replace("2026-11-30", "2026-12-01"), "Title")
    assert "written by hand" in again and "2026-12-01" in again and "2026-11-30" not in again


def _base() -> TrainSettings:
    from support.train_case import tiny_settings

    return TrainSettings.from_dict(tiny_settings("t", "v", "/tmp/s", "x", 1))


def test_plan_names_every_run_and_switches_registration_off():
    study = StudySettings(name="s1", seeds=(0, 3))
    runs = plan_runs(study, _base())
    assert [r.key for r in runs] == ["baseline-s0", "baseline-s3", "sam-s0", "sam-s3",
                                     "sam_smca-s0", "sam_smca-s3"]
    assert {r.settings.trainer.run_name for r in runs} == {f"s1-{r.key}" for r in runs}
    assert runs[0].settings.detector.model.decoder == "baseline"
    assert runs[5].settings.detector.model.smca and runs[5].settings.trainer.seed == 3
    assert all(r.settings.tracking.registered_model is None for r in runs)


@pytest.mark.parametrize(("fields", "message"), [
    ({"seeds": ()}, "study.seeds must be distinct"),
    ({"seeds": (1, 1)}, "study.seeds must be distinct"),
    ({"baseline": "nope"}, "study.baseline='nope' is not one of"),
    ({"name": "a b"}, "study.name must be"),
    ({"variants": {}}, "study.variants must map"),
    ({"make_data": {"train": 3}}, "study.make_data must be"),
])
def test_bad_study_settings_are_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        StudySettings(**fields)


def test_variants_set_other_nodes_by_node_and_field(tmp_path):
    study = StudySettings(baseline="scratch", seeds=(0,), variants={
        "scratch": {}, "finetuned": {"init.weights": str(tmp_path / "a.pth"),
                                     "optim.freeze": ["backbone"], "num_queries": 5}})
    runs = {run.variant: run.settings for run in plan_runs(study, _base())}
    assert runs["scratch"].init.weights is None and runs["scratch"].optim.freeze == ()
    tuned = runs["finetuned"]
    assert tuned.init.weights == str(tmp_path / "a.pth")
    assert tuned.optim.freeze == ("backbone",) and tuned.detector.model.num_queries == 5


def test_a_bad_variant_is_refused_before_anything_trains():
    typo = StudySettings(variants={"baseline": {"decodr": "baseline"}})
    with pytest.raises(ValueError, match=r"study.variants.baseline sets unknown settings "
                                         r"\['decodr'\]"):
        plan_runs(typo, _base())
    node_typo = StudySettings(variants={"baseline": {"init.weigths": "a.pth"}})
    with pytest.raises(ValueError, match=r"unknown settings \['init.weigths'\]"):
        plan_runs(node_typo, _base())
    clash = StudySettings(variants={"baseline": {"decoder": "baseline", "smca": True}})
    with pytest.raises(ValueError, match="study variant 'baseline': .*smca"):
        plan_runs(clash, _base())
