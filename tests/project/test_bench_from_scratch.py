"""python -m bench.from_scratch runs (one tiny epoch) and prints its per-epoch line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_from_scratch_bench_prints_an_epoch_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "bench.from_scratch", "--name", "tiny",
         "--budget", "0.1", "--train-images", "8", "--val-images", "4", "--size", "64",
         "--data", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    fields = proc.stdout.strip().splitlines()[-1].split()
    assert fields[:2] == ["tiny", "0"] and len(fields) == 9
    assert all(float(v) >= 0 for v in fields[2:])
