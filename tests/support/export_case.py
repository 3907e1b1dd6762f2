"""What the export parity tests hold an exported detector to, checked directly (not through
:mod:`samdetr.export.parity`, which they test too).

The tolerances, float32 on the CPU, largest absolute difference from the PyTorch model:
logits 1e-4, normalised boxes 1e-5, scores 1e-5, detection boxes 2e-2 pixels (docs/export.md
states the same and what was measured). The images are at two sizes neither of which is the
export's example (96 x 128), one at a time and both padded into one batch, so the batch size
and the image sizes of the exported graph are free for real.
"""

from __future__ import annotations

import torch
from torch.testing import assert_close

from samdetr.batching import pad_images
from samdetr.export.parity import TOLERANCES, generated_images
from samdetr.model.postprocess import PostProcess

LOGITS_ATOL = 1e-4
BOXES_ATOL = 1e-5
SCORES_ATOL = 1e-5
PIXELS_ATOL = 2e-2
# The library's defaults are these (a report and a test agree on what passes).
assert TOLERANCES == {"pred_logits": LOGITS_ATOL, "pred_boxes": BOXES_ATOL,
                      "scores": SCORES_ATOL, "boxes_px": PIXELS_ATOL}

SIZES = [(80, 120), (144, 104)]
NUM_TOP = 100


def batches(images: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Each image alone (batch 1 at each size), then all of them padded together."""
    return [[image] for image in images] + [images]


def assert_same_detections(ours: dict, theirs: dict, num_classes: int) -> None:
    """One image's top-k: the same (query, class) pairs in the same places, with the same
    scores and boxes. Two detections may trade places only where their reference scores are
    within SCORES_ATOL (a tie the runtimes may break either way), and one may fall out of the
    top-k only at such a tie with the k-th score."""
    assert_close(theirs["scores"], ours["scores"], rtol=0, atol=SCORES_ATOL)
    keys = (ours["queries"] * num_classes + ours["labels"]).tolist()
    where = {key: j for j, key in enumerate(
        (theirs["queries"] * num_classes + theirs["labels"]).tolist())}
    scores = ours["scores"]
    for i, key in enumerate(keys):
        j = where.get(key)
        if j is None:
            assert float(scores[i] - scores[-1]) <= SCORES_ATOL, f"detection {i} is missing"
            continue
        assert abs(float(scores[i] - scores[j])) <= SCORES_ATOL, f"detection {i} moved to {j}"
        assert_close(theirs["boxes"][j], ours["boxes"][i], rtol=0, atol=PIXELS_ATOL)


def check_runner(model: torch.nn.Module, runner, postprocessed: bool, seed: int = 1) -> int:
    """Run ``model`` and ``runner`` on :data:`SIZES` as :func:`batches` make them; assert the
    raw outputs and the top-100 detections agree. Returns how many batches were checked."""
    post = PostProcess(NUM_TOP)
    groups = batches(generated_images(SIZES, seed=seed))
    for group in groups:
        batch, mask = pad_images(group)
        sizes = torch.tensor([[2 * image.shape[1], 2 * image.shape[2]] for image in group])
        with torch.no_grad():
            reference = model(batch, mask)
        out = runner(batch, mask, sizes if postprocessed else None)
        assert_close(out["pred_logits"], reference["pred_logits"], rtol=0, atol=LOGITS_ATOL)
        assert_close(out["pred_boxes"], reference["pred_boxes"], rtol=0, atol=BOXES_ATOL)
        if postprocessed:
            assert out["labels"].dtype == torch.int64 and out["scores"].shape[1] == NUM_TOP
            theirs = [{key: out[key][i] for key in ("scores", "labels", "boxes", "queries")}
                      for i in range(len(group))]
        else:
            assert set(out) == {"pred_logits", "pred_boxes"}
            theirs = post(out, sizes)
        num_classes = reference["pred_logits"].shape[-1]
        for ours, exported in zip(post(reference, sizes), theirs, strict=True):
            assert_same_detections(ours, exported, num_classes)
    return len(groups)
