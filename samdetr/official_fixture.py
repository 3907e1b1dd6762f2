"""Reads the official-code parity fixtures (``official-tiny`` and ``official-tiny-v2``): the
official code's state dicts stored as int8 values and scales, its inputs, outputs, losses and
gradients. The test suite and ``bench/gpu_fixture.py`` (the same check on a GPU) both read them
here, so a verdict means the same on every device."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from samdetr.official import load_official


def official_state_dict(fixture_dir: Path, variant: str) -> dict[str, torch.Tensor]:
    """float32 official state dict of ``variant`` ("base" or "smca")."""
    packed = torch.load(fixture_dir / "weights.pt", weights_only=True)
    base, own = packed["base"], packed[variant]
    state = {}
    for name in base["int8"]:
        source = own if name in own["int8"] else base
        state[name] = source["int8"][name].float() * source["scale"][name]
    return state


def official_state_dict_v2(fixture_dir: Path, variant: str) -> dict[str, torch.Tensor]:
    """float32 official state dict of an ``official-tiny-v2`` variant: every tensor the variant
    scales, its int8 values from the variant if it has them, else from ``base``."""
    packed = torch.load(fixture_dir / "weights.pt", weights_only=True)
    base, own = packed["base"], packed[variant]
    return {
        name: (own if name in own["int8"] else base)["int8"][name].float() * scale
        for name, scale in own["scale"].items()
    }


def official_args(fixture_dir: Path, variant: str) -> dict:
    """The official ``args`` of ``variant``: the common ones plus the variant's flags."""
    config = json.loads((fixture_dir / "config.json").read_text())
    args = dict(config["official_args"])
    added = config.get("variants_add", {}).get(variant, ["--smca"] if variant == "smca" else [])
    for flag in added:
        args[flag.lstrip("-")] = True
    return args


def grad_keys(fixture_dir: Path) -> list[str]:
    return json.loads((fixture_dir / "config.json").read_text())["grad_keys"]


def multiscale_grad_keys(fixture_dir: Path) -> list[str]:
    """``official-tiny-v2``: the gradients recorded for the multiscale variants only."""
    return json.loads((fixture_dir / "config.json").read_text())["multiscale_grad_keys"]


def inputs(fixture_dir: Path) -> dict:
    return torch.load(fixture_dir / "inputs.pt", weights_only=True)


def reference(fixture_dir: Path, variant: str) -> dict:
    return torch.load(fixture_dir / "reference.pt", weights_only=True)[variant]


def load_as_official_checkpoint(state: dict[str, torch.Tensor], args: dict, path: Path):
    """Save ``state`` and ``args`` as an official checkpoint file at ``path`` and load it through
    this project's loader, as a user's checkpoint would be: ``(model in eval mode, config)``."""
    torch.save({"model": state, "args": argparse.Namespace(**args), "epoch": 49}, path)
    model, config = load_official(path)
    return model.eval(), config
