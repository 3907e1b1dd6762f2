"""Tests of PostProcess: top-k over (query, class) pairs and absolute xyxy boxes."""

from __future__ import annotations

import pytest
import torch

from samdetr.model.postprocess import PostProcess


def handcrafted():
    """B=2, Q=3, K=4 with known best (query, class) pairs."""
    logits = torch.full((2, 3, 4), -10.0)
    logits[0, 2, 1] = 3.0  # best in image 0: flat index 2*4+1 = 9
    logits[0, 0, 3] = 2.0  # flat 3
    logits[0, 2, 0] = 1.0  # flat 8 (same query twice, another class)
    logits[1, 1, 2] = 5.0
    boxes = torch.tensor(
        [
            [[0.5, 0.5, 0.2, 0.4], [0.1, 0.1, 0.1, 0.1], [0.25, 0.75, 0.5, 0.5]],
            [[0.5, 0.5, 1.0, 1.0], [0.5, 0.25, 0.5, 0.5], [0.9, 0.9, 0.1, 0.1]],
        ]
    )
    return {"pred_logits": logits, "pred_boxes": boxes}


def test_topk_decoding_and_scaling():
    outputs = handcrafted()
    sizes = torch.tensor([[100, 200], [50, 80]])  # (h, w)
    results = PostProcess(num_top=3)(outputs, sizes)
    assert len(results) == 2

    r0 = results[0]
    assert r0["labels"].dtype == torch.int64
    assert r0["labels"].tolist() == [1, 3, 0]
    assert torch.allclose(r0["scores"], torch.tensor([3.0, 2.0, 1.0]).sigmoid())
    # query 2: cx .25 cy .75 w .5 h .5 -> xyxy (0, .5, .5, 1) * (w=200, h=100)
    assert torch.allclose(r0["boxes"][0], torch.tensor([0.0, 50.0, 100.0, 100.0]))
    assert torch.allclose(r0["boxes"][1], torch.tensor([80.0, 30.0, 120.0, 70.0]))  # query 0
    assert torch.equal(r0["boxes"][2], r0["boxes"][0])  # same query, other class

    r1 = results[1]
    assert r1["labels"][0].item() == 2
    # query 1: xyxy (.25, 0, .75, .5) * (w=80, h=50)
    assert torch.allclose(r1["boxes"][0], torch.tensor([20.0, 0.0, 60.0, 25.0]))


def test_scores_sorted_descending_and_k():
    gen = torch.Generator().manual_seed(0)
    outputs = {
        "pred_logits": torch.randn(3, 50, 7, generator=gen),
        "pred_boxes": torch.rand(3, 50, 4, generator=gen),
    }
    results = PostProcess(num_top=100)(outputs, torch.tensor([[480, 640]] * 3))
    for res, logits in zip(results, outputs["pred_logits"], strict=True):
        assert (
            res["scores"].shape == (100,)
            and res["labels"].shape == (100,)
            and res["boxes"].shape == (100, 4)
        )
        assert (res["scores"][:-1] >= res["scores"][1:]).all()
        # the kept scores are exactly the 100 largest sigmoid probabilities
        assert torch.allclose(
            res["scores"], logits.sigmoid().flatten().sort(descending=True).values[:100]
        )


def test_k_clipped_when_few_pairs():
    outputs = handcrafted()
    results = PostProcess(num_top=100)(outputs, torch.tensor([[10, 10], [10, 10]]))
    assert all(r["scores"].shape == (12,) for r in results)  # Q*K = 3*4
    labels = results[0]["labels"].tolist()
    assert sorted(labels) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def test_boxes_scale_with_image_size():
    outputs = handcrafted()
    small = PostProcess(num_top=5)(outputs, torch.tensor([[100, 200], [50, 80]]))
    big = PostProcess(num_top=5)(outputs, torch.tensor([[300, 600], [150, 240]]))
    for s, b in zip(small, big, strict=True):
        assert torch.allclose(b["boxes"], 3 * s["boxes"])


def test_no_grad_output():
    outputs = {k: v.requires_grad_() for k, v in handcrafted().items()}
    res = PostProcess(num_top=2)(outputs, torch.tensor([[10, 10], [10, 10]]))
    assert not res[0]["scores"].requires_grad and not res[0]["boxes"].requires_grad


def test_validation():
    outputs = handcrafted()
    with pytest.raises(ValueError, match="target_sizes"):
        PostProcess()(outputs, torch.tensor([100, 200]))
    with pytest.raises(ValueError, match="target_sizes"):
        PostProcess()(outputs, torch.tensor([[100, 200, 3], [1, 2, 3]]))
    with pytest.raises(ValueError, match="target_sizes"):
        PostProcess()(outputs, torch.tensor([[100, 200]]))
    with pytest.raises(ValueError):
        PostProcess(num_top=0)


def test_queries_name_the_query_of_each_detection():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, 5, generator=generator)
    boxes = torch.rand(2, 7, 4, generator=generator) * 0.5 + 0.25
    sizes = torch.tensor([[100, 200], [60, 80]])
    results = PostProcess(num_top=9)({"pred_logits": logits, "pred_boxes": boxes}, sizes)
    for b, result in enumerate(results):
        queries = result["queries"]
        assert queries.shape == (9,) and queries.dtype == torch.int64
        # Each detection's score is its query's sigmoid score for its label ...
        expected = logits[b, queries, result["labels"]].sigmoid()
        torch.testing.assert_close(result["scores"], expected)
        # ... and its box is that query's box in pixels.
        cx, cy, w, h = boxes[b, queries].unbind(-1)
        height, width = sizes[b].tolist()
        corners = torch.stack([(cx - w / 2) * width, (cy - h / 2) * height,
                               (cx + w / 2) * width, (cy + h / 2) * height], -1)
        torch.testing.assert_close(result["boxes"], corners)
