"""The examples/ scripts run (few steps, small images) and leave what they promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_fit_one_photo_runs_and_draws(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "fit_one_photo.py"), "--data", str(tmp_path),
         "--steps", "2", "--size", "96", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "using a generated image" in proc.stdout
    assert "step    1" in proc.stdout and "detections" in proc.stdout
    assert (tmp_path / "out" / "detections.png").stat().st_size > 0
