"""pipelines.submit's settings: the command line split, the entrypoint, the runtime environment,
the job server's address, and clear errors for bad settings (no Ray cluster needed)."""

from __future__ import annotations

import ast
import shlex

import pytest

from pipelines.cli.submit import check_overrides, load_settings
from pipelines.jobs.settings import (
    PROJECT_ROOT,
    SubmitSettings,
    entrypoint,
    exposed_credentials,
    runtime_env,
    split_command,
    submission_id,
)


def test_the_command_line_splits_into_settings_command_and_overrides():
    assert split_command(["address=http://h:8265", "wait=false", "train", "trainer=gpu",
                          "trainer.num_workers=8"]) == (
        ["address=http://h:8265", "wait=false"], "train", ["trainer=gpu", "trainer.num_workers=8"])
    assert split_command(["logs", "samdetr-train-1"]) == ([], "logs", ["samdetr-train-1"])
    for bad in ([], ["address=x"], ["fit", "x=1"], ["address=x", "nonsense", "train"]):
        with pytest.raises(ValueError, match="usage: python -m pipelines.submit"):
            split_command(bad)


def test_the_entrypoint_quotes_every_override():
    command = entrypoint("predict", ["images=[a.jpg,b c.jpg]", "model_uri=models:/m@champion"])
    assert shlex.split(command) == ["python", "-m", "pipelines.predict",
                                    "images=[a.jpg,b c.jpg]", "model_uri=models:/m@champion"]
    with pytest.raises(ValueError, match="unknown pipeline"):
        entrypoint("fit", [])


SHELL = {"MLFLOW_TRACKING_URI": "http://mlflow:5000", "AWS_SECRET_ACCESS_KEY": "s3cret",
         "AWS_SESSION_TOKEN": "", "HOME": "/home/me"}


def test_by_default_no_variable_of_this_shell_travels():
    """The cluster's own secrets hold the credentials: a job's runtime environment is shown to
    every dashboard user."""
    settings = SubmitSettings()
    assert runtime_env(settings, SHELL)["env_vars"] == {}
    assert exposed_credentials(settings, SHELL) == []


def test_the_runtime_env_passes_only_named_variables_that_are_set():
    settings = SubmitSettings(env={"RAY_AIR_NEW_OUTPUT": 0}, pip=["boto3"], pass_env=[
        "MLFLOW_TRACKING_URI", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"])
    env = runtime_env(settings, SHELL)
    assert env["working_dir"] == str(PROJECT_ROOT)
    assert env["env_vars"] == {"MLFLOW_TRACKING_URI": "http://mlflow:5000",
                               "AWS_SECRET_ACCESS_KEY": "s3cret", "RAY_AIR_NEW_OUTPUT": "0"}
    # Named and set here (AWS_SESSION_TOKEN is empty, so it stays): a warning names it.
    assert exposed_credentials(settings, SHELL) == ["AWS_SECRET_ACCESS_KEY"]
    literal = SubmitSettings(env={"MLFLOW_TRACKING_PASSWORD": "x", "DEBUG": "1"})
    assert exposed_credentials(literal, {}) == ["MLFLOW_TRACKING_PASSWORD"]
    assert "/.venv" in env["excludes"] and "/outputs" in env["excludes"]
    assert not [p for p in env["excludes"] if p.strip("/") in ("conf", "data") and
                not p.startswith("/")]  # conf/data/ must travel
    assert env["pip"] == ["boto3"]
    with pytest.raises(ValueError, match="does not hold this project"):
        runtime_env(SubmitSettings(working_dir="/tmp"), {})


def test_the_job_server_comes_from_the_setting_or_ray_address(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(ValueError, match="give address=http://HEAD:8265 or set RAY_ADDRESS"):
        SubmitSettings().job_server()
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265/")
    assert SubmitSettings().job_server() == "http://head:8265"
    assert SubmitSettings(address="https://ray.example.com").job_server() == \
        "https://ray.example.com"
    with pytest.raises(ValueError, match="GCS address"):
        SubmitSettings(address="head:6379").job_server()


def test_submission_ids_are_unique_unless_given():
    settings = SubmitSettings()
    first, second = submission_id(settings, "make_synthetic"), submission_id(settings, "train")
    assert first.startswith("samdetr-make-synthetic-") and first != second
    assert submission_id(SubmitSettings(submission_id="mine"), "train") == "mine"


@pytest.mark.parametrize("changes, message", [
    ({"wait": "yes"}, "wait must be true or false"),
    ({"auth_mode": "oauth"}, "auth_mode must be token, disabled or null"),
    ({"pass_env": "AWS_ACCESS_KEY_ID"}, "pass_env must be a list of strings"),
    ({"env": {"A": [1]}}, "env must map names to values"),
    ({"entrypoint_num_gpus": -1}, "entrypoint_num_gpus must be a number >= 0"),
])
def test_bad_settings_get_clear_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        SubmitSettings(**changes)


def test_settings_load_from_conf_with_overrides():
    settings = load_settings(["address=http://h:8265", "wait=false", "pass_env=[A,B]"])
    assert (settings.address, settings.wait, settings.pass_env) == ("http://h:8265", False,
                                                                    ["A", "B"])
    with pytest.raises(ValueError, match="unknown field"):
        load_settings(["+adress=http://h:8265"])


def test_overrides_are_checked_before_anything_is_sent():
    check_overrides("train", ["trainer=gpu", "trainer.num_workers=8"])
    check_overrides("evaluate", ["checkpoint=s3://b/ray/run/epoch_0012"])  # shards stays ???
    with pytest.raises(ValueError, match="the overrides of train do not compose"):
        check_overrides("train", ["trainer.num_wrkers=8"])
    with pytest.raises(ValueError, match="do not compose"):
        check_overrides("tune", ["sweep=nonexistent"])


@pytest.mark.parametrize("argv", [["--help"], ["-h"], ["address=x", "train", "--help"]])
def test_help_prints_what_it_does_and_its_settings_and_exits_0(argv, capsys):
    from pipelines.cli.submit import run

    # The entry module's docstring is the usage it hands to run() (entries are not imported).
    doc = ast.get_docstring(ast.parse((PROJECT_ROOT / "pipelines" / "submit.py").read_text()))
    assert run(argv, doc) == 0
    out = capsys.readouterr().out
    assert out.startswith("Run the project's pipelines as jobs on a Ray cluster")
    assert "conf/submit.yaml" in out and "pass_env=[]" in out and "Docs: docs/cluster.md" in out
    assert run([], doc) == 2  # no command: the same text, as an error
