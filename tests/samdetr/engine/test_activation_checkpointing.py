"""Activation checkpointing keeps fewer activations and gives the same loss and gradients."""

from __future__ import annotations

import copy

import pytest
import torch
from support.tiny import boxed_batch, tiny_config

from samdetr.builder import build_criterion, build_model
from samdetr.engine.activation_checkpointing import PARTS, check_parts, checkpoint_activations
from samdetr.model.criterion import num_boxes_for

VARIANTS = {"single-scale": {}, "multiscale": {"multiscale": True}}


def _model(variant: str, dropout: float = 0.1):
    torch.manual_seed(0)
    config = tiny_config(dropout=dropout, **VARIANTS[variant])
    return config, build_model(config)


def _loss_and_saved(model, criterion, batch, seed: int = 5):
    """The weighted loss (backward done) and the elements autograd kept for the backward."""
    images, mask, targets = batch
    saved = []

    def pack(tensor):
        saved.append(tensor.numel())
        return tensor

    torch.manual_seed(seed)
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        outputs = model(images, mask)
        loss = criterion.weighted_total(criterion(outputs, targets, num_boxes_for(targets)))
    loss.backward()
    return loss.detach(), sum(saved)


# With dropout, the recomputed forward must draw the masks it drew the first time; without, the
# attention may take another kernel (the model pins one in its forward: model.attention_kernel),
# and the recomputation must take the same.
@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_same_gradients_from_fewer_kept_activations(variant, dropout):
    config, plain = _model(variant, dropout)
    _, checkpointed = _model(variant, dropout)
    assert checkpoint_activations(checkpointed, PARTS) == (
        len([n for n, _ in checkpointed.backbone.body.named_children() if n.startswith("layer")])
        + config.model.num_encoder_layers + config.model.num_decoder_layers)
    criterion = build_criterion(config)
    batch = boxed_batch(3)
    loss, kept = _loss_and_saved(plain, criterion, batch)
    loss_c, kept_c = _loss_and_saved(checkpointed, criterion, batch)
    torch.testing.assert_close(loss_c, loss, rtol=0, atol=1e-6)
    grads = dict(plain.named_parameters())
    for name, p in checkpointed.named_parameters():
        if p.grad is not None or grads[name].grad is not None:
            torch.testing.assert_close(p.grad, grads[name].grad, rtol=1e-5, atol=1e-7, msg=name)
    assert kept_c < 0.6 * kept, (kept_c, kept)
    assert set(checkpointed.state_dict()) == set(plain.state_dict())  # names unchanged


def test_a_copy_of_a_checkpointed_model_runs_its_own_weights():
    """The moving average (samdetr.engine.ema) is a deep copy: it must not run the original."""
    config, model = _model("single-scale")
    checkpoint_activations(model, ["encoder", "decoder"])
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.transformer.encoder.parameters():
            p.mul_(0.5)
    reference = build_model(config)
    reference.load_state_dict(twin.state_dict())
    images, mask, _ = boxed_batch(1)
    for net in (twin, reference, model):
        net.eval()
    with torch.enable_grad():  # the checkpointed path
        got = twin(images.requires_grad_(), mask)["pred_logits"]
    torch.testing.assert_close(got, reference(images, mask)["pred_logits"])
    assert not torch.allclose(got, model(images, mask)["pred_logits"])


@pytest.mark.parametrize("parts", [["neck"], "encoder", ["encoder", "encoder"], None])
def test_unknown_parts_are_refused(parts):
    with pytest.raises(ValueError, match="must be a list"):
        check_parts(parts, "trainer.activation_checkpointing")
