"""MLflow's basic-auth app as infra/mlflow/mlflow.yaml deploys it, on a real ``mlflow server
--app-name basic-auth`` on 127.0.0.1 (SQLite in place of PostgreSQL): the auth config is the
header's ``basic_auth.ini``, the admin runs the header's user setup verbatim, and each client
authenticates with the variables of the header's Secrets (MLFLOW_TRACKING_USERNAME and
MLFLOW_TRACKING_PASSWORD), as the Ray pods and ``pipelines.promote`` do.

What is checked: no request without valid credentials; the training user logs runs, registers
versions of ``sam-detr-candidates`` and moves its aliases, but can neither write ``sam-detr``
nor grant itself anything; the promoting user copies a candidate into ``sam-detr`` and moves
``challenger``, ``champion`` and ``previous``; and the two things MLflow's permissions cannot
express, so that docs/registry.md's claims stay true."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.mlflow_server import MlflowServer
from test_mlflow_deploy import header_script

pytestmark = pytest.mark.slow  # one server for the module: about 20 s to start

VARIABLE = re.compile(r"\$\(openssl rand -hex (\d+)\)|\$\{?(\w+)\}?")


def expand(text: str, variables: dict[str, str]) -> str:
    """``text`` as the shell expands it: ``$(openssl rand -hex N)`` is a fresh secret,
    ``$NAME`` a variable set before (an unknown one fails: the header would be wrong)."""
    def value(match: re.Match) -> str:
        if match.group(1):
            return secrets.token_hex(int(match.group(1)))
        if match.group(2) not in variables:
            raise AssertionError(f"${match.group(2)} is used before the header sets it")
        return variables[match.group(2)]
    return VARIABLE.sub(value, text)


@dataclass
class Registry:
    url: str
    root: Path
    identities: dict[str, dict[str, str]]  # Secret name -> the variables it gives a pod

    @contextlib.contextmanager
    def acting_as(self, secret: str | None) -> Iterator[None]:
        """MLflow's client reads MLFLOW_TRACKING_USERNAME/PASSWORD at each request: set them
        from one of the header's Secrets (``None``: no credentials at all)."""
        with pytest.MonkeyPatch.context() as patch:
            for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                         "MLFLOW_TRACKING_TOKEN"):
                patch.delenv(name, raising=False)
            for name, value in (self.identities[secret] if secret else {}).items():
                patch.setenv(name, value)
            yield


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Iterator[Registry]:
    root = tmp_path_factory.mktemp("mlflow-auth")
    script = header_script()
    variables: dict[str, str] = {}  # the shell's variables, as the header sets them
    exported: dict[str, str] = {}
    for words, _ in script:
        assignments = words[1:] if words[0] == "export" else words
        if words[0] == "export" or ("=" in words[0] and len(words) == 1):
            for word in assignments:
                name, value = word.split("=", 1)
                variables[name] = expand(value, variables)
                if words[0] == "export":
                    exported[name] = variables[name]
    # The auth Secret's basic_auth.ini, as written there, with a SQLite auth database.
    (ini,) = [body for words, body in script if "mlflow-auth" in words and body]
    documented_db = "database_uri = postgresql://mlflow-postgres:5432/mlflow_auth\n"
    assert documented_db in ini  # the database the init container creates
    ini = expand(ini, variables).replace(
        documented_db, f"database_uri = sqlite:///{root / 'basic_auth.db'}\n")
    (root / "basic_auth.ini").write_text(ini)
    server = MlflowServer(root, app_name="basic-auth", env={
        "MLFLOW_AUTH_CONFIG_PATH": str(root / "basic_auth.ini"),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32)}).start()
    try:
        # The admin's user setup, verbatim, with the admin's exported variables; only the
        # server's address differs from the port-forwarded one in the header.
        (setup,) = [body for words, body in script if words[:2] == ["python", "-"]]
        env = {**os.environ, **exported, "MLFLOW_TRACKING_URI": server.url}
        done = subprocess.run([sys.executable, "-"], input=setup, env=env, text=True,
                              capture_output=True, timeout=180)
        assert done.returncode == 0, done.stdout + done.stderr
        identities = {}
        for words, _ in script:
            if words[:4] == ["kubectl", "create", "secret", "generic"] and \
                    words[4].startswith("samdetr-mlflow-"):
                identities[words[4]] = dict(
                    expand(w.removeprefix("--from-literal="), variables).split("=", 1)
                    for w in words[5:] if w.startswith("--from-literal="))
        assert set(identities) == {"samdetr-mlflow-train", "samdetr-mlflow-promote"}
        yield Registry(server.url, root, identities)
    finally:
        server.stop()


def client(registry: Registry):
    from mlflow import MlflowClient

    return MlflowClient(registry.url)


def refused(call, status: str = "PERMISSION_DENIED") -> bool:
    """Whether ``call()`` is refused by the server with ``status`` (403: PERMISSION_DENIED,
    401: UNAUTHENTICATED); anything else (success, another error) is False. The server's answer
    may be the cause of the error raised (``copy_model_version`` wraps it)."""
    from mlflow.exceptions import MlflowException

    try:
        call()
    except MlflowException as err:
        cause: BaseException | None = err
        while cause is not None:
            if isinstance(cause, MlflowException) and cause.error_code == status:
                return True
            cause = cause.__cause__
    return False


@pytest.fixture(scope="module")
def candidate(registry: Registry) -> dict[str, str]:
    """A training run with a model file, registered as a version of sam-detr-candidates and
    proposed as its ``challenger``: what a Ray training job does, as the training user."""
    mlflow_client = client(registry)
    model = registry.root / "model"
    model.mkdir()
    (model / "weights.txt").write_text("trained weights\n")
    with registry.acting_as("samdetr-mlflow-train"):
        experiment = mlflow_client.create_experiment("samdetr")
        run = mlflow_client.create_run(experiment).info.run_id
        mlflow_client.log_metric(run, "AP", 0.25)
        mlflow_client.log_artifacts(run, str(model), "model")
        version = mlflow_client.create_model_version(
            "sam-detr-candidates", f"runs:/{run}/model", run_id=run).version
        mlflow_client.set_registered_model_alias("sam-detr-candidates", "challenger", version)
    return {"run": run, "version": version}


def download(registry: Registry, mlflow_client, version: str, folder: str) -> str:
    """The files of ``sam-detr`` version ``version``, fetched through the server as the current
    user (the server names where they are; no process-wide tracking or registry URI is set)."""
    import mlflow

    where = mlflow_client.get_model_version_download_uri("sam-detr", version)
    return mlflow.artifacts.download_artifacts(artifact_uri=where, tracking_uri=registry.url,
                                               dst_path=str(registry.root / folder))


def _status(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_requests_without_valid_credentials_are_refused(registry):
    search = registry.url + "/api/2.0/mlflow/registered-models/search"
    assert _status(search) == 401
    import base64

    wrong = base64.b64encode(b"samdetr-promote:not-the-password").decode()
    assert _status(search, {"Authorization": f"Basic {wrong}"}) == 401
    assert _status(registry.url + "/health") == 200  # the probes need no credentials
    mlflow_client = client(registry)
    with registry.acting_as(None):
        assert refused(lambda: mlflow_client.set_registered_model_alias(
            "sam-detr", "champion", "1"), "UNAUTHENTICATED")
    with registry.acting_as("samdetr-mlflow-promote"):
        names = {m.name for m in mlflow_client.search_registered_models()}
        assert names == {"sam-detr", "sam-detr-candidates"}


def test_the_training_user_registers_candidates_but_cannot_touch_sam_detr(registry, candidate):
    from mlflow.server.auth.client import AuthServiceClient

    mlflow_client = client(registry)
    run, version = candidate["run"], candidate["version"]
    with registry.acting_as("samdetr-mlflow-train"):
        model = mlflow_client.get_registered_model("sam-detr-candidates")
        assert model.aliases == {"challenger": version}
        # Reading is open to every signed-in user (default_permission = READ) ...
        assert mlflow_client.get_registered_model("sam-detr").name == "sam-detr"
        # ... writing sam-detr is not: no alias, no version, no tag, no rename.
        assert refused(lambda: mlflow_client.set_registered_model_alias(
            "sam-detr", "champion", version))
        assert refused(lambda: mlflow_client.delete_registered_model_alias("sam-detr", "champion"))
        assert refused(lambda: mlflow_client.create_model_version(
            "sam-detr", f"runs:/{run}/model", run_id=run))
        assert refused(lambda: mlflow_client.copy_model_version(
            f"models:/sam-detr-candidates/{version}", "sam-detr"))
        assert refused(lambda: mlflow_client.set_registered_model_tag(
            "sam-detr", "champion.version", version))
        assert refused(lambda: mlflow_client.rename_registered_model("sam-detr", "x"))
        # Nor can it give itself the permission.
        assert refused(lambda: AuthServiceClient(registry.url).grant_user_permission(
            "samdetr-train", "registered_model", "sam-detr", "MANAGE"))
        # EDIT, not MANAGE, on its own registered model: aliases move, versions stay.
        assert refused(lambda: mlflow_client.delete_model_version("sam-detr-candidates", version))
        # It may record evaluations (pipelines.evaluate on the cluster).
        evaluation = mlflow_client.get_experiment_by_name("samdetr-evaluation").experiment_id
        mlflow_client.create_run(evaluation)


def test_the_promoting_user_moves_champion(registry, candidate):

    mlflow_client = client(registry)
    with registry.acting_as("samdetr-mlflow-promote"):
        # The candidate enters sam-detr as a copy (the promoting user only reads candidates).
        copy = mlflow_client.copy_model_version("models:/sam-detr-candidates@challenger",
                                                "sam-detr")
        assert copy.run_id == candidate["run"]
        mlflow_client.set_registered_model_alias("sam-detr", "challenger", copy.version)
        # What pipelines.promote does once it has scored the challenger.
        evaluation = mlflow_client.get_experiment_by_name("samdetr-evaluation").experiment_id
        scored = mlflow_client.create_run(evaluation).info.run_id
        mlflow_client.log_metric(scored, "AP", 0.25)
        mlflow_client.set_model_version_tag("sam-detr", copy.version, "promotion.decision",
                                            "promoted")
        mlflow_client.set_registered_model_alias("sam-detr", "previous", copy.version)
        mlflow_client.set_registered_model_alias("sam-detr", "champion", copy.version)
        mlflow_client.set_registered_model_tag("sam-detr", "champion.version", copy.version)
        mlflow_client.delete_registered_model_alias("sam-detr", "previous")  # rollback's step
        assert mlflow_client.get_registered_model("sam-detr").aliases == {
            "challenger": copy.version, "champion": copy.version}
        champion = mlflow_client.get_model_version_by_alias("sam-detr", "champion").version
        files = download(registry, mlflow_client, champion, "champion")
        assert (Path(files) / "weights.txt").read_text() == "trained weights\n"
        # Candidates stay the training user's: the promoting user cannot move their aliases.
        assert refused(lambda: mlflow_client.set_registered_model_alias(
            "sam-detr-candidates", "challenger", candidate["version"]))


def test_what_mlflow_permissions_cannot_express(registry):
    """Documented limits (docs/registry.md): EDIT on a registered model moves ANY of its aliases
    (there is no per-alias permission), and a promoted version's files stay writable by whoever
    may write the run they came from. If MLflow ever closes either, this fails: update the docs.
    """

    mlflow_client = client(registry)
    files = registry.root / "limits"
    files.mkdir()
    (files / "weights.txt").write_text("scored weights\n")
    with registry.acting_as("samdetr-mlflow-train"):
        experiment = mlflow_client.get_experiment_by_name("samdetr").experiment_id
        run = mlflow_client.create_run(experiment).info.run_id
        mlflow_client.log_artifacts(run, str(files), "model")
        version = mlflow_client.create_model_version(
            "sam-detr-candidates", f"runs:/{run}/model", run_id=run).version
        mlflow_client.set_registered_model_alias("sam-detr-candidates", "champion", version)
    with registry.acting_as("samdetr-mlflow-promote"):
        assert mlflow_client.get_registered_model("sam-detr-candidates").aliases["champion"] \
            == version
        copy = mlflow_client.copy_model_version(f"models:/sam-detr-candidates/{version}",
                                                "sam-detr")
    with registry.acting_as("samdetr-mlflow-train"):  # after the copy: the run's files change
        (files / "weights.txt").write_text("other weights\n")
        mlflow_client.log_artifacts(run, str(files), "model")
    with registry.acting_as("samdetr-mlflow-promote"):
        fetched = download(registry, mlflow_client, copy.version, "limits-copy")
        assert (Path(fetched) / "weights.txt").read_text() == "other weights\n"
