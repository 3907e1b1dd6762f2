"""MLflow model URIs, parsed in one place (pipelines.registry.model_uri)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipelines.registry.evaluation_record import logged_model_id
from pipelines.registry.model_uri import ModelUri, is_model_uri, parse_model_uri, version_uri


@pytest.mark.parametrize(("uri", "expected"), [
    ("models:/sam-detr/3", ModelUri("version", name="sam-detr", version="3")),
    ("models:/sam-detr/3/", ModelUri("version", name="sam-detr", version="3")),
    ("models:/sam-detr@champion", ModelUri("alias", name="sam-detr", alias="champion")),
    ("models:/m-0123abcd", ModelUri("logged", model_id="m-0123abcd")),
    ("runs:/abc123/model", ModelUri("run", run_id="abc123", path="model")),
    ("runs:/abc123/nested/model", ModelUri("run", run_id="abc123", path="nested/model")),
    ("outputs/ray/run/checkpoint_000001", None),
    ("s3://bucket/model", None),
])
def test_parses_every_form(uri, expected):
    assert parse_model_uri(uri) == expected
    assert is_model_uri(uri) == (expected is not None)


@pytest.mark.parametrize("uri", ["models:/", "models:/a/b/c", "models:/@champion",
                                 "models:/name@", "runs:/abc", "runs:/"])
def test_malformed_uris_name_the_forms(uri):
    with pytest.raises(ValueError, match="models:/NAME|runs:/RUN_ID/PATH"):
        parse_model_uri(uri)


def test_only_registered_kinds_are_registered():
    assert parse_model_uri("models:/a/1").registered
    assert parse_model_uri("models:/a@x").registered
    assert not parse_model_uri("models:/m-1").registered
    assert not parse_model_uri("runs:/r/model").registered


names = st.from_regex(r"[A-Za-z][A-Za-z0-9_.-]{0,20}", fullmatch=True)


@given(names, st.integers(1, 10_000))
def test_version_uri_round_trips(name, version):
    assert parse_model_uri(version_uri(name, version)) == ModelUri(
        "version", name=name, version=str(version))


def test_logged_model_id_only_for_a_logged_model():
    assert logged_model_id("models:/m-42") == "m-42"
    assert logged_model_id("models:/sam-detr/2") is None
    assert logged_model_id("runs:/r/model") is None
    assert logged_model_id("s3://bucket/x") is None
    assert logged_model_id("models:/a/b/c") is None  # malformed: no id, no error here
