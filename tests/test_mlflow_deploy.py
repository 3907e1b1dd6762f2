"""infra/mlflow/mlflow.yaml: the MLflow tracking server's deployment, checked without a cluster."""

from __future__ import annotations

from pathlib import Path

from manifest_check import load_one

INFRA = Path(__file__).resolve().parents[1] / "infra"


def test_the_mlflow_server_uses_postgres_and_an_object_store():
    items = {item["kind"] + "/" + item["metadata"]["name"]: item
             for item in load_one(INFRA / "mlflow/mlflow.yaml")["items"]}
    server = items["Deployment/mlflow"]["spec"]["template"]["spec"]["containers"][0]
    args = " ".join(server["args"])
    assert "--backend-store-uri=postgresql://" in args and "@mlflow-postgres:5432/" in args
    assert "--artifacts-destination=$(MLFLOW_ARTIFACTS)" in args and "--serve-artifacts" in args
    assert {s["secretRef"]["name"] for s in server["envFrom"]} == {"mlflow-postgres", "mlflow-s3"}
    assert items["Service/mlflow"]["spec"]["ports"][0]["port"] == 5000
    assert "mlflow.mlflow.svc.cluster.local:5000" in args  # the URI the Ray pods use
    ray_job = load_one(INFRA / "kuberay/rayjob-train.yaml")
    assert ray_job["metadata"]["annotations"]["samdetr.io/mlflow"] == \
        "http://mlflow.mlflow.svc.cluster.local:5000"
