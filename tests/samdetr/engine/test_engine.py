"""Optimiser recipe, one training epoch, inference output, RNG state and the eval split."""

from __future__ import annotations

import io
import random
import time

import numpy as np
import pytest
import torch
from support.tiny import tiny_config

from samdetr.builder import build_criterion, build_model
from samdetr.engine.loop import predict, train_one_epoch
from samdetr.engine.optim import OptimConfig, build_optimizer, build_scheduler, parameter_groups
from samdetr.engine.reproducibility import rng_state, seed_everything, set_rng_state
from samdetr.engine.step import StepOptions


def _batches(count: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    out = []
    for b in range(count):
        images = torch.randn(2, 3, 64, 80, generator=generator)
        mask = torch.zeros(2, 64, 80, dtype=torch.bool)
        mask[1, :, 60:] = True  # second image is 60 wide, padded to 80
        targets = [
            {"boxes": torch.tensor([[0.5, 0.5, 0.3, 0.4]]), "labels": torch.tensor([1]),
             "image_id": torch.tensor(2 * b), "orig_size": torch.tensor([64, 80])},
            {"boxes": torch.tensor([[0.3, 0.6, 0.2, 0.2], [0.7, 0.3, 0.3, 0.3]]),
             "labels": torch.tensor([2, 3]), "image_id": torch.tensor(2 * b + 1),
             "orig_size": torch.tensor([64, 60])},
        ]
        out.append((images, mask, targets))
    return out


def test_optim_config_validates():
    assert OptimConfig.from_dict({"lr_drop_epochs": [10], "betas": [0.9, 0.99]}).lr_drop_epochs \
        == (10,)
    with pytest.raises(ValueError, match="lr_drop_epochs"):
        OptimConfig(lr_drop_epochs=(10, 5))
    with pytest.raises(ValueError, match="optim.lr must be > 0"):
        OptimConfig(lr=0.0)
    with pytest.raises(ValueError, match="unknown field"):
        OptimConfig.from_dict({"learning_rate": 1e-4})


def test_backbone_gets_its_own_learning_rate_and_decay_steps():
    model = build_model(tiny_config())
    groups = parameter_groups(model, 1e-4, 1e-5)
    assert [g["name"] for g in groups] == ["transformer", "backbone"]
    backbone = {id(p) for p in model.backbone.parameters() if p.requires_grad}
    assert {id(p) for p in groups[1]["params"]} == backbone
    trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in groups) == trainable
    config = OptimConfig(lr_drop_epochs=(2,))
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    lrs = []
    for _ in range(3):
        lrs.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    assert lrs[1] == pytest.approx([1e-4, 1e-5]) and lrs[2] == pytest.approx([1e-5, 1e-6])


def test_train_one_epoch_lowers_the_loss_and_reports_steps():
    seed_everything(0)
    config = tiny_config()
    model, criterion = build_model(config), build_criterion(config)
    optimizer = build_optimizer(model, OptimConfig(lr=1e-3, lr_backbone=1e-4))
    batches = _batches(2)
    seen = []
    first = train_one_epoch(model, criterion, optimizer, batches, torch.device("cpu"),
                            StepOptions(on_step=lambda step, values: seen.append((step, values)),
                                        log_every=1))
    assert first["steps"] == 2 and first["images"] == 4
    assert [s for s, _ in seen] == [1, 2]
    assert {"loss", "loss_ce", "loss_bbox", "loss_giou", "lr", "lr_backbone", "grad_norm"} <= set(
        seen[0][1]
    )
    for _ in range(8):
        last = train_one_epoch(model, criterion, optimizer, batches, torch.device("cpu"))
    assert last["loss"] < first["loss"]


def test_train_one_epoch_counts_the_time_spent_waiting_for_batches():
    config = tiny_config()
    model, criterion = build_model(config), build_criterion(config)
    optimizer = build_optimizer(model, OptimConfig())

    def slow(batches, first_s, then_s):  # an input pipeline that is slow to start, then slow
        for i, batch in enumerate(batches):
            time.sleep(first_s if i == 0 else then_s)
            yield batch

    stats = train_one_epoch(model, criterion, optimizer, slow(_batches(3), 0.3, 0.1),
                            torch.device("cpu"))
    assert 0.3 <= stats["first_batch_s"] < stats["data_wait_s"] < stats["seconds"]
    assert stats["data_wait_s"] - stats["first_batch_s"] >= 0.2  # two later batches
    fed = train_one_epoch(model, criterion, optimizer, _batches(3), torch.device("cpu"))
    assert fed["data_wait_s"] < 0.1 and fed["first_batch_s"] <= fed["data_wait_s"]


def test_train_one_epoch_stops_on_a_non_finite_loss():
    config = tiny_config()
    model, criterion = build_model(config), build_criterion(config)
    optimizer = build_optimizer(model, OptimConfig())
    images, mask, targets = _batches(1)[0]
    with pytest.raises(ValueError, match="NaN or inf"):  # the matcher sees it first
        train_one_epoch(model, criterion, optimizer, [(images * float("nan"), mask, targets)],
                        torch.device("cpu"))
    weighted = criterion.weighted_total
    criterion.weighted_total = lambda losses: weighted(losses) * float("inf")
    with pytest.raises(FloatingPointError, match="loss is inf at step 1"):
        train_one_epoch(model, criterion, optimizer, [(images, mask, targets)],
                        torch.device("cpu"))


def test_predict_gives_coco_detections_in_original_pixels():
    model = build_model(tiny_config())
    batches = _batches(2)
    detections = predict(model, batches, torch.device("cpu"))
    assert [d["image_id"] for d in detections] == [0, 1, 2, 3]
    for d in detections:
        assert d["boxes"].shape == (len(d["scores"]), 4) and isinstance(d["boxes"], np.ndarray)
    images, mask, _ = batches[1]
    with torch.no_grad():
        outputs = model(images, mask)
    # Image 3 is 60 x 64: its normalised boxes scale by (60, 64), not the padded (80, 64).
    cx, cy, w, h = outputs["pred_boxes"][1].unbind(-1)
    corners = torch.stack([(cx - w / 2) * 60, (cy - h / 2) * 64, (cx + w / 2) * 60,
                           (cy + h / 2) * 64], -1)
    top = torch.topk(outputs["pred_logits"][1].sigmoid().flatten(), len(detections[3]["scores"]))
    expected = corners[top.indices // outputs["pred_logits"].shape[-1]]
    np.testing.assert_allclose(detections[3]["boxes"], expected.numpy(), atol=1e-4)


def test_rng_state_round_trips_through_a_weights_only_checkpoint():
    seed_everything(5)
    buffer = io.BytesIO()
    torch.save({"rng": rng_state()}, buffer)
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    buffer.seek(0)
    set_rng_state(torch.load(buffer, weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_eval_loader_processes_give_the_same_batches_and_stay_alive(tmp_path):
    """Validation images decoded by worker processes (the training default) come in the same
    batches as decoded in-process, and the processes live from one pass to the next."""
    from samdetr.data.synthetic import write_synthetic_shards
    from samdetr.engine.evaluation import eval_loader, eval_shapes, shape_batches

    write_synthetic_shards(tmp_path / "data", tmp_path / "shards", 7, image_size=(48, 64),
                           max_objects=2)
    shards = str(tmp_path / "shards")
    inline = list(eval_loader(shards, size=48, max_size=64, batch_size=2, rank=1, world_size=2))
    loader = eval_loader(shards, size=48, max_size=64, batch_size=2, rank=1, world_size=2,
                         num_workers=2)
    assert loader.persistent_workers
    for _ in range(2):  # two "epochs"
        batches = list(loader)
        mine = shape_batches(eval_shapes(shards, 48, 64), 2)[1::2]  # rank 1's batches
        assert len(batches) == len(inline) == len(mine) >= 2
        for (images, mask, targets), (ref_images, ref_mask, ref_targets) in zip(
            batches, inline, strict=True
        ):
            assert torch.equal(images, ref_images) and torch.equal(mask, ref_mask)
            assert [int(t["image_id"]) for t in targets] == [
                int(t["image_id"]) for t in ref_targets
            ]
            assert not mask.any()  # one shape per batch: nothing padded


def test_step_options_refuse_bad_values():
    with pytest.raises(ValueError, match="log_every must be an integer >= 1"):
        StepOptions(log_every=0)
    with pytest.raises(ValueError, match="log_every"):
        StepOptions(log_every=True)
    with pytest.raises(ValueError, match="clip_max_norm must be a number >= 0"):
        StepOptions(clip_max_norm=-1.0)
    with pytest.raises(ValueError, match="clip_max_norm"):
        StepOptions(clip_max_norm=float("nan"))
