"""bench/gpu_check.py is run by hand on rented GPUs; its CPU smoke mode keeps it working."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_quick_mode_passes_every_part_on_cpu(official_tiny_dir, tmp_path):
    out = tmp_path / "check.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--quick",
         "--fixtures", str(official_tiny_dir), "--out", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["parts"]) == {"fixture_fp32", "fixture_bf16", "train_bf16", "speed",
                                    "ddp_nccl"}
    assert all(part["ok"] for part in report["parts"].values())
    assert report["parts"]["ddp_nccl"]["backend"] == "gloo"
    # The library alone: no pipeline module is imported on the way.
    assert report["environment"]["pipeline_modules_loaded"] == []
