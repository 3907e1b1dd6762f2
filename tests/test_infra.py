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
from manifest_check import check, load_one, problems

from pipelines.submit import check_overrides
from pipelines.submit_settings import PIPELINES

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
KUBE = sorted((INFRA / "kuberay").glob("*.yaml")) + [INFRA / "mlflow/mlflow.yaml"]
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


@pytest.mark.parametrize("name", ["rayjob-train.yaml", "rayjob-sweep.yaml", "raycluster.yaml"])
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
    # The variables the entrypoint uses are set, to the same values, on the head (where the
    # job's driver runs) and in the submitter pod (whose shell may expand them first).
    used = set(re.findall(r"\$(\w+)", spec["entrypoint"]))
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    submitter = spec["submitterPodTemplate"]["spec"]["containers"][0]["env"]
    assert used and used <= {e["name"] for e in head} and head == submitter


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
    assert config["available_node_types"][config["head_node_type"]]["resources"] == {"CPU": 0}
    with pytest.raises(ValidationError, match="'max_worker' was unexpected"):
        validate({**config, "max_worker": 4})
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_4x"]["min_workers"] = "0"
    with pytest.raises(ValidationError, match="is not of type 'integer'"):
        validate(broken)
