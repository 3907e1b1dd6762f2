"""What a training run shows on the console: by default the project's lines, a progress bar per
epoch and Ray's warnings, none of Ray's INFO logs or pycocotools' prints; with
``trainer.verbose`` Ray's lines come back (pipelines/common/console.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("ray")

from pipelines.common.console import EpochBar, estimated_steps  # noqa: E402

TESTS = Path(__file__).resolve().parents[2]
ROOT = TESTS.parent

# A tiny 2-epoch run (tests/support/train_case.py) in a process of its own: Ray's logging is set up
# once per process, and the console is what the process writes to stdout and stderr.
RUN = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from support.train_case import tiny_settings, write_shards
from pipelines.training.run import format_summary, run_training
from pipelines.training.settings import TrainSettings

root = Path({root!r})
train = write_shards(root, "train", 12, seed=0)
val = write_shards(root, "val", 6, seed=1)
settings = tiny_settings(train, val, str(root / "ray"), "console", 2, verbose={verbose})
print(format_summary(run_training(TrainSettings.from_dict(settings))), flush=True)
"""

#: Lines of Ray and pycocotools that the default console must not show.
RAY_NOISE = (
    "Execution plan of Dataset",
    "Starting execution of Dataset",
    "execution finished in",
    "Reporting training result",
    "Checkpoint successfully created",
    "Started training worker group",
    "Moving model to device",
    "Progress bars disabled",
    "RayDeprecationWarning",
    "(RayTrainWorker pid=",
)
COCOEVAL_NOISE = ("Average Precision", "Average Recall", "creating index", "index created",
                  "Running per image evaluation")


def _console(tmp_path: Path, verbose: bool) -> str:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", PYTHONPATH=str(ROOT))
    code = RUN.format(tests=str(TESTS), root=str(tmp_path), verbose=verbose)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    return out


@pytest.mark.slow
def test_default_console_shows_the_epochs_and_no_ray_chatter(tmp_path):
    out = _console(tmp_path, verbose=False)
    for epoch in (1, 2):
        assert f"[samdetr] epoch {epoch}/2: loss " in out, out[-5000:]
        assert f"epoch {epoch}/2 loss " in out  # the progress bar, drawn through tqdm_ray
    assert "2.00/2.00" in out  # 12 images, batches of 3, 2 workers: 2 steps (as estimated)
    assert "(best AP " in out
    assert "run console finished in" in out
    shown = [s for s in RAY_NOISE + COCOEVAL_NOISE if s in out]
    assert not shown, f"the console shows {shown}:\n{out[-5000:]}"


@pytest.mark.slow
def test_verbose_brings_back_rays_logs(tmp_path):
    out = _console(tmp_path, verbose=True)
    assert "Reporting training result" in out, out[-5000:]
    assert "[samdetr] epoch 2/2: loss " in out


# --- without Ray running ------------------------------------------------------------------------


def test_estimated_steps():
    assert estimated_steps(12, batch_size=3, world_size=2) == 2
    assert estimated_steps(13, batch_size=3, world_size=2) == 3  # 7 images on the busier one
    assert estimated_steps(1, batch_size=4, world_size=8) == 1


def test_epoch_bar_counts_batches_and_describes_itself():
    bar = EpochBar(epoch=2, epochs=50, total_steps=3, world_size=2, enabled=False)
    batches = [(np.zeros((n, 3, 8, 8)), None, []) for n in (4, 4, 2)]
    assert list(bar.wrap(batches)) == batches
    assert bar.images == 10
    bar.set_loss(12.3456)
    assert bar.description().startswith("epoch 3/50 loss 12.346 ~")
    assert bar.description().endswith(" img/s")
    bar.close()
