"""Checks of Kubernetes manifests without a cluster: core objects against the Kubernetes API's
own models (the ``kubernetes`` client's generated classes: every field known, of the right
type, required fields present), KubeRay's RayJob and RayCluster against their spec fields.

The KubeRay field tables follow the ``ray.io/v1`` Go types (``rayjob_types.go``,
``raycluster_types.go``) of KubeRay 1.3-1.5; a field outside them would be dropped by the API
server without a word, which is what these checks are for.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as k8s


# field -> type ("str", "int", "bool", "float", "map" of strings, "any", or a table name)
def load_one(path: Path) -> dict:
    """The one YAML document of ``path`` (one document, so that YAML anchors reach every use)."""
    documents = list(yaml.safe_load_all(path.read_text()))
    assert len(documents) == 1, f"{path}: one document, so that YAML anchors reach every use"
    return documents[0]


RAYJOB_SPEC = {
    "activeDeadlineSeconds": "int", "backoffLimit": "int", "rayClusterSpec": "RayClusterSpec",
    "submitterPodTemplate": "V1PodTemplateSpec", "metadata": "map", "clusterSelector": "map",
    "submitterConfig": "any", "managedBy": "str", "deletionStrategy": "any", "entrypoint": "str",
    "runtimeEnvYAML": "str", "jobId": "str", "submissionMode": "str",
    "entrypointResources": "str", "entrypointNumCpus": "float", "entrypointNumGpus": "float",
    "ttlSecondsAfterFinished": "int", "shutdownAfterJobFinishes": "bool", "suspend": "bool",
}
RAYCLUSTER_SPEC = {
    "headGroupSpec": "HeadGroupSpec", "workerGroupSpecs": "list[WorkerGroupSpec]",
    "rayVersion": "str", "enableInTreeAutoscaling": "bool",
    "autoscalerOptions": "AutoscalerOptions", "headServiceAnnotations": "map", "suspend": "bool",
    "managedBy": "str", "gcsFaultToleranceOptions": "any", "authOptions": "AuthOptions",
    "upgradeStrategy": "any",
}
HEAD_GROUP = {
    "serviceType": "str", "headService": "V1Service", "enableIngress": "bool",
    "rayStartParams": "map", "template": "V1PodTemplateSpec", "resources": "map",
    "labels": "map",
}
WORKER_GROUP = {
    "groupName": "str", "replicas": "int", "minReplicas": "int", "maxReplicas": "int",
    "idleTimeoutSeconds": "int", "numOfHosts": "int", "rayStartParams": "map",
    "template": "V1PodTemplateSpec", "scaleStrategy": "any", "suspend": "bool",
    "resources": "map", "labels": "map",
}
AUTOSCALER_OPTIONS = {
    "resources": "V1ResourceRequirements", "image": "str", "imagePullPolicy": "str",
    "env": "list[V1EnvVar]", "envFrom": "list[V1EnvFromSource]",
    "volumeMounts": "list[V1VolumeMount]", "securityContext": "V1SecurityContext",
    "idleTimeoutSeconds": "int", "upscalingMode": "str", "version": "str",
}
# KubeRay 1.5.1+ (secretName: 1.6+); mode is an enum of the CRD.
AUTH_OPTIONS = {"mode": "AuthMode", "secretName": "str", "enableK8sTokenAuth": "bool"}
ENUMS = {"AuthMode": ("disabled", "token")}
TABLES = {"RayJobSpec": (RAYJOB_SPEC, ()),
          "AuthOptions": (AUTH_OPTIONS, ()),
          "RayClusterSpec": (RAYCLUSTER_SPEC, ("headGroupSpec",)),
          "HeadGroupSpec": (HEAD_GROUP, ("template",)),
          "WorkerGroupSpec": (WORKER_GROUP, ("groupName", "template")),
          "AutoscalerOptions": (AUTOSCALER_OPTIONS, ())}
KINDS = {("ray.io/v1", "RayJob"): "RayJobSpec", ("ray.io/v1", "RayCluster"): "RayClusterSpec"}
CORE = {("apps/v1", "Deployment"): "V1Deployment", ("v1", "Service"): "V1Service",
        ("apps/v1", "StatefulSet"): "V1StatefulSet", ("v1", "Secret"): "V1Secret",
        ("v1", "ConfigMap"): "V1ConfigMap",
        ("v1", "PersistentVolumeClaim"): "V1PersistentVolumeClaim",
        ("networking.k8s.io/v1", "NetworkPolicy"): "V1NetworkPolicy",
        ("batch/v1", "CronJob"): "V1CronJob"}
PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float)}


def problems(document: dict[str, Any]) -> list[str]:
    """What is wrong with one manifest (a ``v1`` ``List`` is checked item by item)."""
    key = (document.get("apiVersion"), document.get("kind"))
    if key == ("v1", "List"):
        return [p for i, item in enumerate(document.get("items") or [])
                for p in problems(item)] or ([] if document.get("items") else ["empty List"])
    if key in CORE:
        return check(document, CORE[key], document.get("kind", "?"))
    if key not in KINDS:
        return [f"unknown kind {key}"]
    out = check(document.get("metadata") or {}, "V1ObjectMeta", "metadata")
    if not (document.get("metadata") or {}).get("name"):
        out.append("metadata.name is required")
    extra = set(document) - {"apiVersion", "kind", "metadata", "spec"}
    out += [f"unknown top-level field {k}" for k in sorted(extra)]
    return out + check(document.get("spec") or {}, KINDS[key], "spec")


def check(value: Any, type_name: str, path: str) -> list[str]:
    """Problems of ``value`` read as ``type_name`` (a KubeRay table, a Kubernetes model or a
    model's type string such as ``list[V1Container]`` or ``dict[str, str]``)."""
    if type_name in ("any", "object"):
        return []
    if type_name == "map":
        type_name = "dict(str, str)"
    match = re.fullmatch(r"list\[(.+)\]", type_name)
    if match:
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {type(value).__name__}"]
        return [p for i, v in enumerate(value) for p in check(v, match.group(1), f"{path}[{i}]")]
    match = re.fullmatch(r"dict[(\[](\w+), (.+)[)\]]", type_name)
    if match:
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping, got {type(value).__name__}"]
        return [p for k, v in value.items() for p in check(v, match.group(2), f"{path}.{k}")]
    if type_name in PRIMITIVES:
        wanted = PRIMITIVES[type_name]
        if isinstance(value, bool) and type_name != "bool" or not isinstance(value, wanted):
            return [f"{path}: expected {type_name}, got {value!r}"]
        return []
    if type_name in ENUMS:
        if value not in ENUMS[type_name]:
            return [f"{path}: expected one of {list(ENUMS[type_name])}, got {value!r}"]
        return []
    if type_name in TABLES:
        return _table(value, *TABLES[type_name], path)
    return _model(value, type_name, path)


def _table(value: Any, fields: dict[str, str], required: tuple[str, ...], path: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{path}: expected a mapping"]
    out = [f"{path}: unknown field {k}" for k in value if k not in fields]
    out += [f"{path}: {k} is required" for k in required if k not in value]
    return out + [p for k, v in value.items() if k in fields
                  for p in check(v, fields[k], f"{path}.{k}")]


def _model(value: Any, type_name: str, path: str) -> list[str]:
    cls = getattr(k8s, type_name, None)
    if cls is None:
        return [] if type_name in ("datetime", "date") else [f"{path}: no model {type_name}"]
    if not isinstance(value, dict):
        return [f"{path}: expected a {type_name} mapping, got {type(value).__name__}"]
    by_key = {json_key: attr for attr, json_key in cls.attribute_map.items()}
    out = [f"{path}: unknown field {k}" for k in value if k not in by_key]
    try:  # the generated models refuse a missing required field
        cls(**{by_key[k]: v for k, v in value.items() if k in by_key})
    except ValueError as err:
        out.append(f"{path}: {err}")
    return out + [p for k, v in value.items() if k in by_key
                  for p in check(v, cls.openapi_types[by_key[k]], f"{path}.{k}")]
