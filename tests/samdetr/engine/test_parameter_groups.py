"""Freezing parts of the detector and giving parts their own learning rates."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from support.tiny import tiny_config

from samdetr.builder import build_criterion, build_model
from samdetr.engine.optim import OptimConfig, build_optimizer, parameter_groups
from samdetr.engine.parameter_groups import PARTS, freeze_parameters

MODEL = build_model(tiny_config())


def _step(model, optimizer) -> None:
    criterion = build_criterion(tiny_config())
    images, mask = torch.randn(1, 3, 64, 64), torch.zeros(1, 64, 64, dtype=torch.bool)
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3]])}]
    loss = sum(criterion(model(images, mask), targets, 1.0).values())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_frozen_parts_stay_put_and_the_rest_trains():
    model = build_model(tiny_config())
    config = OptimConfig(freeze=("backbone", "encoder"))
    frozen = freeze_parameters(model, config.freeze)
    assert frozen and all(n.startswith(("backbone.", "transformer.encoder.")) for n in frozen)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _step(model, build_optimizer(model, config))
    for name, param in model.named_parameters():
        moved = not torch.equal(before[name], param)
        if name in frozen:
            assert not moved and param.grad is None, name
    assert not torch.equal(before["class_heads.1.weight"], model.class_heads[1].weight)


def test_the_most_specific_group_sets_a_parameters_learning_rate():
    config = OptimConfig(lr=1e-4, lr_backbone=1e-5, lr_groups={
        "decoder": 2e-5, "transformer.decoder.layers.1.": 3e-5, "class_heads": 1e-3})
    groups = {g["name"]: g for g in parameter_groups(MODEL, config.lr, config.lr_backbone,
                                                     config.lr_groups)}
    assert {n: g["lr"] for n, g in groups.items()} == {
        "transformer": 1e-4, "backbone": 1e-5, "decoder": 2e-5,
        "transformer.decoder.layers.1.": 3e-5, "class_heads": 1e-3}
    named = dict(MODEL.named_parameters())
    in_group = {name: g["name"] for name, p in named.items() for g in groups.values()
                if any(p is q for q in g["params"])}
    assert in_group["transformer.decoder.layers.0.linear1.weight"] == "decoder"
    assert in_group["transformer.decoder.layers.1.linear1.weight"] == \
        "transformer.decoder.layers.1."
    assert in_group["class_heads.0.bias"] == "class_heads"
    assert in_group["transformer.decoder.box_heads.0.layers.0.weight"] == "transformer"


@settings(max_examples=25, deadline=None)
@given(frozen=st.sets(st.sampled_from(sorted(PARTS))),
       rates=st.dictionaries(st.sampled_from(sorted(PARTS) + ["transformer.decoder.layers.0."]),
                             st.floats(1e-6, 1e-2), max_size=4))
def test_every_trainable_parameter_is_in_exactly_one_group(frozen, rates):
    rates = {k: v for k, v in rates.items() if k not in frozen}
    trainable = {id(p) for n, p in MODEL.named_parameters() if p.requires_grad
                 and not any(n.startswith(pre) for part in frozen for pre in PARTS[part])}
    if not trainable:
        with pytest.raises(ValueError, match="no trainable parameters"):
            parameter_groups(MODEL, 1e-4, 1e-5, rates, tuple(frozen))
        return
    groups = parameter_groups(MODEL, 1e-4, 1e-5, rates, tuple(frozen))
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == trainable
    assert all(g["params"] for g in groups)


@pytest.mark.parametrize("changes, match", [
    ({"freeze": "backbone"}, "must be a list of parts"),
    ({"freeze": [""]}, "every entry must be one of"),
    ({"lr_groups": {"encoder": 0}}, "optim.lr_groups.encoder must be a learning rate > 0"),
    ({"lr_groups": ["encoder"]}, "must map parts to learning rates"),
    ({"freeze": ["encoder"], "lr_groups": {"encoder": 1e-5}}, "both frozen"),
])
def test_bad_settings_are_refused(changes, match):
    with pytest.raises(ValueError, match=match):
        OptimConfig.from_dict(changes)


def test_a_part_that_names_nothing_is_an_error_not_a_no_op():
    with pytest.raises(ValueError, match="'transformer.decodr.' names no parameter"):
        freeze_parameters(build_model(tiny_config()), ["transformer.decodr."])
    with pytest.raises(ValueError, match="'heads' names no parameter"):
        build_optimizer(MODEL, OptimConfig(lr_groups={"heads": 1e-4}))
    config = OptimConfig(freeze=("backbone",), lr_groups={"class_heads": 1e-3})
    assert OptimConfig.from_dict(config.to_dict()) == config
