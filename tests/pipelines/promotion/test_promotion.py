"""The promotion gate's rules (pipelines.promotion.gate): the decision, the refusals, the
settings."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipelines.promotion.gate import (
    PromoteSettings,
    class_reason,
    class_regressions,
    decide,
    refusal,
)
from pipelines.registry.model_facts import ModelFacts

scores = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
CATS = [{"id": 1, "name": "square"}, {"id": 3, "name": "disc"}]


@given(challenger=scores, champion=scores, margin=st.floats(0.0, 0.2))
def test_a_champion_is_replaced_only_by_a_gain_above_the_margin(challenger, champion, margin):
    promote, reason = decide("AP", challenger, champion, margin, threshold=0.9)
    assert promote == (challenger - champion > margin)
    assert f"margin {margin:.4f}" in reason  # the threshold plays no part here


@given(challenger=scores, threshold=scores)
def test_a_first_champion_needs_the_threshold(challenger, threshold):
    promote, reason = decide("AP50", challenger, None, margin=0.5, threshold=threshold)
    assert promote == (challenger >= threshold)
    assert reason.startswith("no champion yet") and "AP50" in reason


def _row(cid, name, num_gt, ap, ap50=None):
    return {"category_id": cid, "name": name, "num_gt": num_gt, "num_detections": 9,
            "AP": ap, "AP50": ap if ap50 is None else ap50}


def test_the_class_guard_names_the_worst_fall_among_classes_with_enough_boxes():
    champion = [_row(1, "cat", 80, 0.50), _row(2, "dog", 60, 0.40), _row(3, "eel", 5, 0.90),
                _row(4, "owl", 70, 0.30)]
    challenger = [_row(1, "cat", 80, 0.47), _row(2, "dog", 60, 0.20), _row(3, "eel", 5, 0.10),
                  _row(4, "owl", 70, 0.60)]
    fallen = class_regressions(challenger, champion, "AP", max_drop=0.02, min_gt=50)
    assert fallen == [("dog", 60, 0.20, 0.40), ("cat", 80, 0.47, 0.50)]  # eel: 5 boxes
    reason = class_reason(fallen, "AP", 0.02)
    assert reason.startswith("challenger AP on class 'dog' (60 boxes) 0.2000 vs champion 0.4000:"
                             " a drop of 0.2000 > class_drop 0.0200 (and 1 more classes)")
    assert class_regressions(challenger, champion, "AP", max_drop=0.25, min_gt=50) == []
    assert class_regressions(challenger, champion, "AP", max_drop=0.25, min_gt=1)[0][0] == "eel"


@given(st.lists(st.tuples(scores, scores, st.integers(0, 100)), min_size=1, max_size=8),
       st.floats(0.0, 0.5), st.integers(1, 100))
def test_the_class_guard_flags_exactly_the_classes_past_the_drop(pairs, drop, min_gt):
    challenger = [_row(i, f"c{i}", n, 0.0, ours) for i, (ours, _, n) in enumerate(pairs)]
    champion = [_row(i, f"c{i}", n, 0.0, theirs) for i, (_, theirs, n) in enumerate(pairs)]
    fallen = class_regressions(challenger, champion, "AP50", drop, min_gt)
    expected = {f"c{i}" for i, (ours, theirs, n) in enumerate(pairs)
                if n >= min_gt and theirs - ours > drop}
    assert {f[0] for f in fallen} == expected
    assert [f[2] - f[3] for f in fallen] == sorted(f[2] - f[3] for f in fallen)


@pytest.mark.parametrize("changes, match", [
    ({"class_drop": 1.5}, "class_drop must be a number in"),
    ({"class_drop": True}, "class_drop must be a number in"),
    ({"class_min_gt": 0}, "class_min_gt must be a positive integer"),
])
def test_bad_class_guard_settings_are_refused(changes, match):
    with pytest.raises(ValueError, match=match):
        PromoteSettings(shards="held-out", **changes)


def test_nan_never_wins():
    assert decide("AP", math.nan, 0.1, 0.0, 0.0)[0] is False
    assert decide("AP", math.nan, None, 0.0, 0.0)[0] is False
    assert decide("AP", 0.2, math.nan, 0.0, 0.0)[0] is True  # a champion that cannot score


def _facts(categories=CATS, train="t" * 64) -> ModelFacts:
    return ModelFacts(tuple(sorted((c["id"], c["name"]) for c in categories)),
                      {"size": 64, "max_size": 96}, train, None, None, {"model": {}})


def test_refusals_name_the_version_and_the_reason():
    held_out = "h" * 64
    assert refusal({"challenger v2": _facts(), "champion v1": _facts()}, held_out, CATS,
                   False) is None
    renamed = [{"id": 1, "name": "box"}, {"id": 3, "name": "disc"}]
    why = refusal({"challenger v2": _facts(renamed), "champion v1": _facts()}, held_out, CATS,
                  False)
    assert "different category sets" in why and "1:box" in why and "1:square" in why
    why = refusal({"challenger v2": _facts(renamed)}, held_out, CATS, False)
    assert why.startswith("challenger v2 and the evaluation set differ in categories")
    why = refusal({"challenger v2": _facts(), "champion v1": _facts(train=held_out)}, held_out,
                  CATS, False)
    assert why.startswith("champion v1 was trained on this shard set")
    unknown = {"challenger v2": _facts(train=None)}
    assert "allow_unknown_training_data=true" in refusal(unknown, held_out, CATS, False)
    assert refusal(unknown, held_out, CATS, True) is None


@pytest.mark.parametrize("changes, message", [
    ({"shards": None}, "shards must name the held-out shard set"),
    ({"metric": "mAP"}, "metric must be one of"),
    ({"margin": -0.1}, "margin must be a number in [0, 1]"),
    ({"threshold": 2}, "threshold must be a number in [0, 1]"),
    ({"champion_alias": "challenger"}, "the three aliases must differ"),
    ({"registered_model": ""}, "registered_model must be a non-empty string"),
    ({"mlflow_experiment": " "}, "mlflow_experiment must be a non-empty string"),
    ({"rollback": "yes"}, "rollback must be true or false"),
    ({"batch_size": 0}, "batch_size must be a positive integer"),
])
def test_bad_settings_get_clear_errors(changes, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        PromoteSettings(**{"registered_model": "m", "shards": "s", **changes})


def test_a_rollback_needs_no_shards():
    assert PromoteSettings(registered_model="m", rollback=True).shards is None


def test_the_evaluation_runs_experiment_is_mlflow_experiment():
    from hydra import compose, initialize_config_dir

    from pipelines.cli.config_store import register_defaults, settings_dict

    register_defaults()
    conf = Path(__file__).resolve().parents[3] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        plain = settings_dict(compose(config_name="promote", overrides=[
            "shards=s", "mlflow_experiment=gate"]))
    assert PromoteSettings(**plain).mlflow_experiment == "gate"


def test_experiment_on_the_command_line_points_to_mlflow_experiment(tmp_path):
    """``experiment=`` is train's and tune's recipe group: a clear refusal (status 2)."""
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.promote", "shards=s", "experiment=gate"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 2, done.stdout + done.stderr[-2000:]
    assert "[promote] 'experiment=gate'" in done.stdout and "mlflow_experiment=NAME" in done.stdout
