"""infra/: the KubeRay manifests, the MLflow deployment, the cluster launcher config and the
Dockerfiles, checked as far as this machine allows: schemas (the Kubernetes API's models,
KubeRay's spec fields, Ray's launcher schema), entrypoints that name real pipelines and compose
with their overrides, GPU counts that agree, values to change in one marked place, no secrets in
files, hadolint, and the constraints the image installs."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from support.manifest_check import check, load_one, problems

from pipelines.cli.config_store import register_defaults, settings_dict
from pipelines.cli.submit import check_overrides
from pipelines.jobs.settings import PIPELINES
from pipelines.promotion.gate import PromoteSettings
from pipelines.training.settings import REGISTERED_MODEL, TrainSettings

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
KUBE = sorted((INFRA / "kuberay").glob("*.yaml")) + [INFRA / "mlflow/mlflow.yaml"]
CLUSTERS = ["rayjob-train.yaml", "rayjob-sweep.yaml", "rayjob-promote.yaml", "raycluster.yaml"]
# Values the shell expands in a job's entrypoint (set on the Ray pods).
JOB_ENV = {"SAMDETR_STORAGE": "s3://bucket/samdetr"}


@pytest.mark.parametrize("path", KUBE, ids=lambda p: p.name)
def test_manifests_fit_their_schemas(path):
    assert problems(load_one(path)) == []


def test_the_checks_catch_typos_and_missing_fields():
    job = load_one(INFRA / "kuberay/rayjob-train.yaml")
    job["spec"]["shutdownAfterJobFinish"] = True
    spec = job["spec"]["rayClusterSpec"]
    spec["workerGroupSpecs"][0]["rayStartParams"] = {"num-gpus": 4}
    del spec["workerGroupSpecs"][0]["groupName"]
    spec["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = ["x"]
    spec["headGroupSpec"]["template"]["spec"]["containers"][0]["envv"] = []
    del spec["headGroupSpec"]["template"]["spec"]["containers"][0]["name"]
    found = "\n".join(problems(job))
    for expected in ("unknown field shutdownAfterJobFinish", "groupName is required",
                     "rayStartParams.num-gpus: expected str, got 4", "unknown field envv",
                     "imagePullPolicy: expected str", "`name`, must not be `None`"):
        assert expected in found, found
    assert check({"replicas": "2"}, "V1DeploymentSpec", "spec") != []


def _pods(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in spec.get("workerGroupSpecs", [])]


@pytest.mark.parametrize("name", CLUSTERS)
def test_ray_clusters_run_the_project_image_on_gpus(name):
    document = load_one(INFRA / "kuberay" / name)
    spec = document["spec"].get("rayClusterSpec", document["spec"])
    constraints = (INFRA / "constraints.txt").read_text()
    assert f"ray=={spec['rayVersion']}\n" in constraints  # the image's Ray
    images = {c["image"] for pod in _pods(spec) for c in pod["containers"]}
    assert len(images) == 1
    for group in spec["workerGroupSpecs"]:
        container = group["template"]["spec"]["containers"][0]
        assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
            group["template"]["spec"]["tolerations"]
    for pod in _pods(spec):  # /dev/shm as memory, object-store credentials from a Secret
        assert {"name": "dshm", "emptyDir": {"medium": "Memory"}} in pod["volumes"]
        assert pod["containers"][0]["envFrom"][0]["secretRef"]["name"]


def _gpus(spec: dict) -> int:
    return sum(g["replicas"] * int(g["template"]["spec"]["containers"][0]["resources"]["limits"]
                                   ["nvidia.com/gpu"]) for g in spec["workerGroupSpecs"])


def _commands(entrypoint: str) -> list[list[str]]:
    words = shlex.split(entrypoint)
    commands, current = [], []
    for word in words + ["&&"]:
        if word in ("&&", ";"):
            commands.append(current)
            current = []
        else:
            current.append(word)
    return [c for c in commands if c]


def _overrides(words: list[str]) -> dict[str, str]:
    return dict(w.split("=", 1) for w in words if "=" in w)


@pytest.mark.parametrize("name", ["rayjob-train.yaml", "rayjob-sweep.yaml"])
def test_entrypoints_name_real_pipelines_that_compose(name, monkeypatch):
    for key, value in JOB_ENV.items():
        monkeypatch.setenv(key, value)
    spec = load_one(INFRA / "kuberay" / name)["spec"]
    commands = _commands(spec["entrypoint"])
    assert commands
    for words in commands:
        assert words[:2] == ["python", "-m"] and words[2].startswith("pipelines."), words
        pipeline = words[2].removeprefix("pipelines.")
        assert pipeline in PIPELINES
        overrides = [os.path.expandvars(w) for w in words[3:]]
        assert not [w for w in overrides if "$" in w], overrides  # every variable is set
        check_overrides(pipeline, overrides)
    settings = _overrides(commands[-1][3:])
    gpus = _gpus(spec["rayClusterSpec"])
    if name == "rayjob-train.yaml":
        assert int(settings["trainer.num_workers"]) == gpus
    else:
        assert int(settings["sweep.max_concurrent_trials"]) * int(
            settings["trainer.num_workers"]) == gpus
    # What the job's training runs are: the recipe's global batch (TrainSettings refuses
    # another), runs and shards under $SAMDETR_STORAGE, the one registered model.
    train = _job_settings(commands[-1])
    recipe = re.search(r"experiment=(\w+)", spec["entrypoint"]).group(1)
    assert train.trainer.global_batch == RECIPE_GLOBAL_BATCH[recipe] == train.global_batch
    root = JOB_ENV["SAMDETR_STORAGE"]
    assert train.trainer.storage_path == f"{root}/ray"
    assert train.data.train_shards.startswith(f"{root}/shards/")
    # ... into the candidates model that the promotion job proposes from (docs/registry.md).
    assert train.tracking.registered_model == _promotion().challenger_model
    # The variables the entrypoint uses are set, to the same values, on the head (where the
    # job's driver runs) and in the submitter pod (whose shell may expand them first).
    used = set(re.findall(r"\$(\w+)", spec["entrypoint"]))
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    submitter = spec["submitterPodTemplate"]["spec"]["containers"][0]["env"]
    assert used and used <= {e["name"] for e in head} and head == submitter


# The official recipes' global batches (samdetr spec: 16 for R50, 8 for DC5).
RECIPE_GLOBAL_BATCH = {"sam_detr_r50_e12": 16, "sam_detr_r50_e50": 16}


def _job_settings(words: list[str]) -> TrainSettings:
    """The training settings a job's command composes to (a sweep's: its base settings)."""
    pipeline = words[2].removeprefix("pipelines.")
    register_defaults()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name=PIPELINES[pipeline],
                      overrides=[os.path.expandvars(w) for w in words[3:]])
    plain = settings_dict(cfg)
    plain.pop("sweep", None)
    return TrainSettings.from_dict(plain)


def _promotion() -> PromoteSettings:
    """What infra/kuberay/rayjob-promote.yaml's command composes to."""
    spec = load_one(INFRA / "kuberay/rayjob-promote.yaml")["spec"]
    words = _commands(spec["entrypoint"])[0]
    assert words[:3] == ["python", "-m", "pipelines.promote"]
    environ = {"SAMDETR_STORAGE": JOB_ENV["SAMDETR_STORAGE"]}
    register_defaults()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="promote", overrides=[
            w.replace("$SAMDETR_STORAGE", environ["SAMDETR_STORAGE"]) for w in words[3:]])
    return PromoteSettings(**settings_dict(cfg))


def test_the_promotion_job_judges_candidates_as_the_promoting_user():
    """It proposes what training registers, moves aliases of the served model, scores on
    held-out shards under $SAMDETR_STORAGE on a GPU, with the only MLflow user that may write
    the served model; the training jobs run as the training user."""
    promote = _promotion()
    assert promote.registered_model == REGISTERED_MODEL != promote.challenger_model
    assert promote.shards == f"{JOB_ENV['SAMDETR_STORAGE']}/shards/holdout"
    document = load_one(INFRA / "kuberay/rayjob-promote.yaml")
    assert document["spec"]["entrypointNumGpus"] >= 1 and _gpus(_clusters()[
        "rayjob-promote.yaml"]) >= 1
    secrets = {name: load_one(INFRA / "kuberay" / name)["metadata"]["annotations"][
        "samdetr.io/mlflow-secret"] for name in CLUSTERS}
    assert secrets.pop("rayjob-promote.yaml") == "samdetr-mlflow-promote"
    assert set(secrets.values()) == {"samdetr-mlflow-train"}
    for name in CLUSTERS:  # every Ray pod signs in to MLflow and may reach it
        for pod in _pods(_clusters()[name]):
            assert {"secretRef": {"name": secrets.get(name, "samdetr-mlflow-promote")}} in \
                pod["containers"][0]["envFrom"]


def test_a_job_with_another_global_batch_is_refused(monkeypatch):
    monkeypatch.setenv("SAMDETR_STORAGE", JOB_ENV["SAMDETR_STORAGE"])
    words = _commands(load_one(INFRA / "kuberay/rayjob-train.yaml")["spec"]["entrypoint"])[0]
    with pytest.raises(ValueError, match="global batch of 32"):
        _job_settings([w for w in words if w != "data.batch_size=2"])


def _clusters() -> dict[str, dict]:
    out = {}
    for name in CLUSTERS:
        document = load_one(INFRA / "kuberay" / name)
        out[name] = document["spec"].get("rayClusterSpec", document["spec"])
    return out


def _containers(spec: dict) -> list[dict]:
    return [c for pod in _pods(spec) for c in pod.get("initContainers", []) + pod["containers"]]


def _auth_problems(spec: dict) -> list[str]:
    """Why a Ray cluster's containers would not all get Ray's token.

    KubeRay gives RAY_AUTH_MODE / RAY_AUTH_TOKEN to the Ray containers, the autoscaler's
    sidecar, the wait-gcs-ready init container and a RayJob's submitter only through
    spec.authOptions; set by hand on the Ray containers they reach no sidecar, and the
    autoscaler of a token-protected GCS never scales."""
    out = []
    if (spec.get("authOptions") or {}).get("mode") != "token":
        out.append("spec.authOptions.mode is not token")
    for container in _containers(spec):
        names = {e["name"] for e in container.get("env", [])}
        if names & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"}:
            out.append(f"{container['name']} sets Ray's auth by hand (spec.authOptions does)")
    autoscaler_env = (spec.get("autoscalerOptions") or {}).get("env") or []
    out += [f"autoscalerOptions.env sets {e['name']}" for e in autoscaler_env
            if e["name"].startswith("RAY_AUTH")]
    return out


@pytest.mark.parametrize("name", CLUSTERS)
def test_token_auth_reaches_every_container_that_talks_to_the_gcs(name):
    assert _auth_problems(_clusters()[name]) == []


def test_the_auth_check_finds_auth_set_by_hand():
    spec = _clusters()["raycluster.yaml"]
    del spec["authOptions"]
    container = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    container["env"].append({"name": "RAY_AUTH_MODE", "value": "token"})
    assert _auth_problems(spec) == [  # the workers share the head's env (a YAML anchor)
        "spec.authOptions.mode is not token",
        "ray-head sets Ray's auth by hand (spec.authOptions does)",
        "ray-worker sets Ray's auth by hand (spec.authOptions does)"]
    document = {"apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "x"},
                "spec": {**spec, "authOptions": {"mode": "on"}}}
    assert problems(document) == [
        "spec.authOptions.mode: expected one of ['disabled', 'token'], got 'on'"]


@pytest.mark.parametrize("name", CLUSTERS)
def test_every_pod_can_pull_from_a_private_registry(name):
    document = load_one(INFRA / "kuberay" / name)
    secret = document["metadata"]["annotations"]["samdetr.io/pull-secret"]
    pods = _pods(_clusters()[name])
    if document["kind"] == "RayJob":
        pods.append(document["spec"]["submitterPodTemplate"]["spec"])
    for pod in pods:
        assert pod["imagePullSecrets"] == [{"name": secret}]


def test_sam_detr_storage_is_the_project_root_everywhere(monkeypatch):
    """$SAMDETR_STORAGE: shards/ and ray/ under it, in the manifests and in trainer=gpu."""
    monkeypatch.setenv("SAMDETR_STORAGE", "s3://b/root")
    register_defaults()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["trainer=gpu"])
    assert cfg.trainer.storage_path == "s3://b/root/ray"
    for name in ("rayjob-train.yaml", "rayjob-sweep.yaml", "raycluster.yaml"):
        annotations = load_one(INFRA / "kuberay" / name)["metadata"]["annotations"]
        assert not annotations["samdetr.io/storage"].rstrip("/").endswith(("/ray", "/shards"))


@pytest.mark.parametrize("path", KUBE + [INFRA / "cluster-launcher/aws-gpu.yaml"],
                         ids=lambda p: p.name)
def test_values_to_change_sit_in_one_marked_place(path):
    text = path.read_text()
    lines = text.splitlines()
    placeholders = [i for i, line in enumerate(lines) if "CHANGE-ME" in line or
                    "registry.example.com" in line]
    assert placeholders
    for i in placeholders:  # each placeholder is defined once, as an anchor, and marked
        assert re.search(r"&\w+ ", lines[i]), lines[i]
    values = re.findall(r"(?:CHANGE-ME[\w./:-]*|registry\.example\.com[\w./:-]*)", text)
    assert len(values) == len(set(values)), values
    if path.suffix == ".yaml" and "annotations" in text:
        start = next(i for i, line in enumerate(lines) if "---- CHANGE THESE" in line)
        end = next(i for i in range(start + 1, len(lines)) if "------" in lines[i])
        assert all(start < i < end for i in placeholders), path


@pytest.mark.parametrize("path", KUBE + [INFRA / "cluster-launcher/aws-gpu.yaml"],
                         ids=lambda p: p.name)
def test_no_credentials_in_files(path):
    text = path.read_text()
    # A value after such a name (shell substitutions and "..." in the comments' commands aside).
    secret = r"(?i)(aws_secret_access_key|password|auth_token)\s*[:=]\s*(?!\$|\.\.\.)['\"]?\w{6,}"
    assert not re.search(secret, text), path
    assert "kind: Secret" not in text  # Secrets are created from the command line


def test_the_cluster_launcher_config_fits_rays_schema():
    import copy

    from jsonschema import ValidationError
    from ray.autoscaler._private.util import prepare_config, validate_config

    def validate(config: dict) -> None:  # as `ray up` does: defaults filled in, then checked
        validate_config(prepare_config(copy.deepcopy(config)))

    config = load_one(INFRA / "cluster-launcher/aws-gpu.yaml")
    validate(config)
    # Ray's AWS defaults would pip-install boto3 in the container as its user at every start.
    prepared = prepare_config(copy.deepcopy(config))
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands"):
        assert prepared[key] == [], key
    assert "docker login" in " ".join(prepared["initialization_commands"])
    assert config["available_node_types"][config["head_node_type"]]["resources"] == {"CPU": 0}
    with pytest.raises(ValidationError, match="'max_worker' was unexpected"):
        validate({**config, "max_worker": 4})
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_4x"]["min_workers"] = "0"
    with pytest.raises(ValidationError, match="is not of type 'integer'"):
        validate(broken)
