"""infra/mlflow/mlflow.yaml: the MLflow tracking server's deployment, checked without a cluster:
every item against the Kubernetes API's models, credentials only from Secrets (none in an
argument or a literal value), the auth app's config from a mounted Secret, the wait for
PostgreSQL and the migration job, NetworkPolicies evaluated for the pods they must admit and
refuse, and the header's commands creating every Secret key the manifest reads.
(tests/project/test_mlflow_auth.py runs the header's auth config and user setup on a real
server.)"""

from __future__ import annotations

import re
import shlex
import textwrap
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from support.manifest_check import load_one, problems

INFRA = Path(__file__).resolve().parents[2] / "infra"
MANIFEST = INFRA / "mlflow/mlflow.yaml"
# What a KubeRay pod that talks to MLflow carries (and its namespace), by the manifest's design.
CLIENT_LABEL = {"samdetr.io/mlflow-client": "true"}


@pytest.fixture(scope="module")
def items() -> dict[str, dict]:
    return {item["kind"] + "/" + item["metadata"]["name"]: item
            for item in load_one(MANIFEST)["items"]}


def server_pod(items: dict) -> dict:
    return items["Deployment/mlflow"]["spec"]["template"]


def server(items: dict) -> dict:
    (container,) = [c for c in server_pod(items)["spec"]["containers"] if c["name"] == "mlflow"]
    return container


def upgrade_pod(items: dict) -> dict:
    return items["CronJob/mlflow-db-upgrade"]["spec"]["jobTemplate"]["spec"]["template"]


def pod_templates(items: dict) -> list[tuple[str, dict]]:
    """(name, pod template) of every workload in the manifest."""
    out = []
    for key, item in items.items():
        spec = item.get("spec") or {}
        if "template" in spec:
            out.append((key, spec["template"]))
        if "jobTemplate" in spec:
            out.append((key, spec["jobTemplate"]["spec"]["template"]))
    return out


def containers(pod: dict) -> list[dict]:
    spec = pod["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def test_every_item_fits_the_kubernetes_api(items):
    document = load_one(MANIFEST)
    assert problems(document) == []
    kinds = {key.split("/")[0] for key in items}
    assert {"Deployment", "Service", "StatefulSet", "NetworkPolicy", "CronJob"} <= kinds


def test_the_mlflow_server_uses_postgres_and_an_object_store(items):
    args = " ".join(server(items)["args"])
    assert "--backend-store-uri=postgresql://mlflow-postgres:5432/mlflow" in server(items)["args"]
    assert "--artifacts-destination=$(MLFLOW_ARTIFACTS)" in args and "--serve-artifacts" in args
    assert {s["secretRef"]["name"] for s in server(items)["envFrom"]} == {"mlflow-s3"}
    assert items["Service/mlflow"]["spec"]["ports"][0]["port"] == 5000
    assert "--port=5000" in server(items)["args"]
    hosts = next(a for a in server(items)["args"] if a.startswith("--allowed-hosts="))
    assert "mlflow.mlflow.svc.cluster.local:5000" in hosts.split("=", 1)[1].split(",")
    ray_job = load_one(INFRA / "kuberay/rayjob-train.yaml")
    assert ray_job["metadata"]["annotations"]["samdetr.io/mlflow"] == \
        "http://mlflow.mlflow.svc.cluster.local:5000"


# A URI with a password (user:password@host), or a Kubernetes $(VAR) expansion of a secret-looking
# variable into an argument: either puts the value in the process's command line, which every
# process on the node (and `ps`) can read.
URI_WITH_PASSWORD = re.compile(r"://[^/\s:@]+:[^/\s@]+@")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|KEY|CREDENTIAL", re.I)
EXPANSION = re.compile(r"\$\((\w+)\)")


def credential_problems(container: dict) -> list[str]:
    out = []
    for word in container.get("command", []) + container.get("args", []):
        if URI_WITH_PASSWORD.search(word):
            out.append(f"{container['name']}: a password in the URI {word!r}")
        out += [f"{container['name']}: $({name}) expanded into an argument"
                for name in EXPANSION.findall(word) if SECRET_NAME.search(name)]
    for name, entry in env_of(container).items():
        if SECRET_NAME.search(name) and "secretKeyRef" not in (entry.get("valueFrom") or {}):
            out.append(f"{container['name']}: {name} is not read from a Secret")
        if URI_WITH_PASSWORD.search(str(entry.get("value", ""))):
            out.append(f"{container['name']}: {name} holds a URI with a password")
    return out


def test_no_credential_in_arguments_or_literal_values(items):
    checked = 0
    for where, pod in pod_templates(items):
        for container in containers(pod):
            assert credential_problems(container) == [], where
            checked += 1
    assert checked >= 5  # server, its init, postgres, the upgrade job and its init
    # The database password reaches the server only as libpq's PGPASSWORD, from the Secret.
    ref = env_of(server(items))["PGPASSWORD"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "mlflow-postgres", "key": "POSTGRES_PASSWORD"}
    # The check itself catches what the deployment used to do, by both rules, and each rule
    # on its own.
    before = {"name": "mlflow", "args": [
        "--backend-store-uri=postgresql://$(POSTGRES_USER):$(POSTGRES_PASSWORD)@db:5432/mlflow"]}
    assert len(credential_problems(before)) == 2
    assert credential_problems({"name": "x", "args": ["--password=$(DB_PASSWORD)"]})
    assert credential_problems({"name": "x", "env": [{"name": "PGPASSWORD", "value": "hunter2"}]})
    assert credential_problems({"name": "x", "args": ["postgresql://u:p@db/mlflow"]})


def test_the_auth_app_reads_its_config_from_a_mounted_secret(items):
    container = server(items)
    assert "--app-name=basic-auth" in container["args"]
    env = env_of(container)
    config = PurePosixPath(env["MLFLOW_AUTH_CONFIG_PATH"]["value"])
    (mount,) = [m for m in container["volumeMounts"]
                if PurePosixPath(m["mountPath"]) == config.parent]
    assert mount["readOnly"] is True
    (volume,) = [v for v in server_pod(items)["spec"]["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "mlflow-auth"
    assert {"key": "basic_auth.ini", "path": config.name} in volume["secret"]["items"]
    # Group-readable only, by the group the server runs as.
    assert volume["secret"]["defaultMode"] & 0o007 == 0
    assert server_pod(items)["spec"]["securityContext"]["fsGroup"] == 1000
    # The CSRF key of the auth app's sign-up form: the same in every worker, from the Secret.
    ref = env["MLFLOW_FLASK_SERVER_SECRET_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == "mlflow-auth"
    assert not {"MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD"} & set(env)


def test_the_server_waits_for_postgres_and_migrates_only_on_demand(items):
    service = items["Service/mlflow-postgres"]
    (wait,) = server_pod(items)["spec"]["initContainers"]
    script = wait["command"][-1]
    assert re.search(r"until pg_isready\b[^\n]*; do", script), script
    env = {name: e.get("value") for name, e in env_of(wait).items()}
    assert env["PGHOST"] == service["metadata"]["name"]
    assert int(env["PGPORT"]) == service["spec"]["ports"][0]["port"]
    assert "createdb mlflow_auth" in script  # the auth app's database (see basic_auth.ini)
    assert items["Deployment/mlflow"]["spec"]["strategy"]["type"] == "Recreate"
    # `mlflow db upgrade` by hand only: a suspended CronJob, the server's image and database.
    cron = items["CronJob/mlflow-db-upgrade"]["spec"]
    assert cron["suspend"] is True
    pod = upgrade_pod(items)["spec"]
    assert pod["initContainers"] == server_pod(items)["spec"]["initContainers"]
    (job,) = pod["containers"]
    assert job["image"] == server(items)["image"]
    store = next(a for a in server(items)["args"] if a.startswith("--backend-store-uri="))
    assert job["args"] == ["mlflow", "db", "upgrade", store.split("=", 1)[1]]


def selects(selector: dict, labels: dict) -> bool:
    """A Kubernetes label selector (matchLabels only, what the manifest uses) against labels."""
    assert set(selector) <= {"matchLabels"}, selector
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def admits(policy: dict, port: int, pod: dict[str, str], namespace: str,
           namespace_labels: dict[str, str]) -> bool:
    """Whether ``policy``'s ingress rules admit a connection to ``port`` from a pod with
    labels ``pod`` in ``namespace`` (NetworkPolicy semantics: a peer's podSelector alone means
    the policy's own namespace; with a namespaceSelector, both must match)."""
    for rule in policy["spec"]["ingress"]:
        if port not in [p["port"] for p in rule["ports"]]:
            continue
        for peer in rule["from"]:
            if "namespaceSelector" in peer:
                in_namespace = selects(peer["namespaceSelector"], namespace_labels)
            else:
                in_namespace = namespace == policy["metadata"]["namespace"]
            if in_namespace and selects(peer.get("podSelector", {}), pod):
                return True
    return False


def test_network_policies_admit_only_the_labelled_clients(items):
    api = items["NetworkPolicy/mlflow-server"]
    database = items["NetworkPolicy/mlflow-postgres"]
    for policy, pod in ((api, server_pod(items)),
                        (database, items["StatefulSet/mlflow-postgres"]["spec"]["template"])):
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        assert selects(policy["spec"]["podSelector"], pod["metadata"]["labels"])
    labelled = {"samdetr.io/mlflow-client": "true"}
    assert labelled == CLIENT_LABEL
    ray = {"ray.io/node-type": "worker", **CLIENT_LABEL}
    # Port 5000: a labelled pod in a labelled namespace only.
    assert admits(api, 5000, ray, "default", labelled)
    assert not admits(api, 5000, {"ray.io/node-type": "worker"}, "default", labelled)
    assert not admits(api, 5000, ray, "other", {})
    assert not admits(api, 5432, ray, "default", labelled)
    assert not admits(api, 5000, server_pod(items)["metadata"]["labels"], "mlflow", {})
    # PostgreSQL: the server's pods and the migration job's, in namespace mlflow, nothing else.
    mlflow_ns = {"kubernetes.io/metadata.name": "mlflow"}
    for pod in (server_pod(items), upgrade_pod(items)):
        assert admits(database, 5432, pod["metadata"]["labels"], "mlflow", mlflow_ns)
        assert not admits(database, 5432, pod["metadata"]["labels"], "default", labelled)
    assert not admits(database, 5432, ray, "default", labelled)
    assert not admits(database, 5432, {"app": "anything"}, "mlflow", mlflow_ns)
    # The server is reached on the port it listens on, the one its Service targets.
    (port,) = server(items)["ports"]
    assert [p["port"] for p in api["spec"]["ingress"][0]["ports"]] == [port["containerPort"]]


COMMAND = re.compile(r"(kubectl|python|export) |[A-Z_]+=")


def header_script() -> list[tuple[list[str], str | None]]:
    """The shell commands of the manifest's header comment, in order, as (words, heredoc body or
    None): continuation lines joined, comments dropped, prose (any other line) skipped."""
    lines = []
    for line in MANIFEST.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:])
    script: list[tuple[list[str], str | None]] = []
    current, heredoc, body = "", None, []
    for line in lines:
        if heredoc:  # kept as written, less the indentation the comment gives every line
            if line.strip() == heredoc:
                script[-1] = (script[-1][0], textwrap.dedent("\n".join(body)) + "\n")
                heredoc, body = None, []
            else:
                body.append(line)
            continue
        current += line.strip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        match = re.search(r"<<'?(\w+)'?$", current)
        if match:
            heredoc, current = match.group(1), current[: match.start()]
        if COMMAND.match(current):
            script.append((shlex.split(current, comments=True), None))
        elif heredoc:
            raise AssertionError(f"a heredoc after prose: {current!r}")
        current = ""
    assert heredoc is None, f"the heredoc {heredoc} is never closed"
    return script


def header_commands() -> list[list[str]]:
    return [words for words, _ in header_script()]


def documented_secret_keys() -> dict[str, set[str]]:
    """Secret name -> the keys the header's `kubectl create secret generic` commands give it."""
    out: dict[str, set[str]] = {}
    for words in header_commands():
        if words[:1] == ["kubectl"] and "secret" in words and "generic" in words:
            name = words[words.index("generic") + 1]
            keys = {w.split("=", 2)[1] for w in words
                    if w.startswith(("--from-literal=", "--from-file="))}
            out.setdefault(name, set()).update(keys)
    return out


def test_the_header_creates_every_secret_key_the_manifest_reads(items):
    wanted: set[tuple[str, str]] = set()
    secrets_whole: set[str] = set()
    for _, pod in pod_templates(items):
        for volume in pod["spec"].get("volumes", []):
            if "secret" in volume:
                wanted |= {(volume["secret"]["secretName"], i["key"])
                           for i in volume["secret"]["items"]}
        for container in containers(pod):
            for entry in container.get("env", []):
                ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    wanted.add((ref["name"], ref["key"]))
            secrets_whole |= {s["secretRef"]["name"] for s in container.get("envFrom", [])
                              if "secretRef" in s}
    documented = documented_secret_keys()
    for name, key in sorted(wanted):
        assert key in documented.get(name, set()), f"Secret {name} key {key} is never created"
    assert secrets_whole <= set(documented)
    # The clients' Secrets carry exactly the variables MLflow's client reads.
    for name in ("samdetr-mlflow-train", "samdetr-mlflow-promote"):
        assert documented[name] == {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}


def test_the_header_labels_the_clients_namespace_as_the_policy_expects(items):
    (label,) = [w for words in header_commands() if words[:3] == ["kubectl", "label", "namespace"]
                for w in words[4:]]
    key, value = label.split("=")
    peer = items["NetworkPolicy/mlflow-server"]["spec"]["ingress"][0]["from"][0]
    assert peer["namespaceSelector"]["matchLabels"] == {key: value}


def _walk(value: Any):
    if isinstance(value, dict):
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v)
    else:
        yield value


def test_no_secret_object_and_no_credential_value_in_the_manifest(items):
    assert not [key for key in items if key.startswith("Secret/")]  # created from the shell
    for value in _walk(list(items.values())):
        assert not URI_WITH_PASSWORD.search(str(value)), value
