"""Reads the official-tiny fixture: dequantised official state dicts, inputs and references."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def official_state_dict(fixture_dir: Path, variant: str) -> dict[str, torch.Tensor]:
    """float32 official state dict of ``variant`` ("base" or "smca")."""
    packed = torch.load(fixture_dir / "weights.pt", weights_only=True)
    base, own = packed["base"], packed[variant]
    state = {}
    for name in base["int8"]:
        source = own if name in own["int8"] else base
        state[name] = source["int8"][name].float() * source["scale"][name]
    return state


def official_args(fixture_dir: Path, variant: str) -> dict:
    config = json.loads((fixture_dir / "config.json").read_text())
    args = dict(config["official_args"])
    args["smca"] = variant == "smca"
    return args


def grad_keys(fixture_dir: Path) -> list[str]:
    return json.loads((fixture_dir / "config.json").read_text())["grad_keys"]


def inputs(fixture_dir: Path) -> dict:
    return torch.load(fixture_dir / "inputs.pt", weights_only=True)


def reference(fixture_dir: Path, variant: str) -> dict:
    return torch.load(fixture_dir / "reference.pt", weights_only=True)[variant]
