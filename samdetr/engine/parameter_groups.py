"""The detector's parameters by part, for freezing and for per-part learning rates.

A part is one of :data:`PARTS` (the boxes of the architecture) or any prefix of parameter names
(``transformer.decoder.layers.5.``), so that a recipe can name what it means at either grain.
Fine-tuning on a small data set often freezes the backbone (``freeze=["backbone"]``) or gives
the pretrained parts a smaller rate than the re-initialised class heads.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from torch import nn

#: Named parts and the parameter-name prefixes that make each.
PARTS: dict[str, tuple[str, ...]] = {
    "backbone": ("backbone.",),
    "input_proj": ("input_proj.",),
    "encoder": ("transformer.encoder.", "transformer.level_embed"),
    "decoder": ("transformer.decoder.layers.",),
    "box_heads": ("transformer.decoder.box_heads.",),
    "class_heads": ("class_heads.",),
    "queries": ("reference_boxes.",),
}


def check_part_names(names: Iterable[str], where: str) -> tuple[str, ...]:
    """``names`` as a tuple, each a non-empty string (a part or a name prefix); ValueError
    naming ``where`` (the config field) otherwise."""
    if isinstance(names, str):
        raise ValueError(f"{where} must be a list of parts, got the string {names!r} "
                         f"(write [{names}])")
    out = tuple(names)
    for name in out:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"{where}: every entry must be one of {sorted(PARTS)} or a "
                             f"parameter-name prefix, got {name!r}")
    return out


def plain_name(name: str) -> str:
    """A parameter's name without the ``module.`` (DDP) and ``_orig_mod.`` (compile) wrappers."""
    return name.removeprefix("module.").removeprefix("_orig_mod.")


def prefixes(part: str) -> tuple[str, ...]:
    """The name prefixes of ``part``: its own if it is in :data:`PARTS`, else itself."""
    return PARTS.get(part, (part,))


def match_length(name: str, part: str) -> int:
    """How specifically ``part`` names parameter ``name``: the length of its longest prefix
    that ``name`` starts with (0: it does not)."""
    return max((len(p) for p in prefixes(part) if plain_name(name).startswith(p)), default=0)


def parts_parameters(model: nn.Module, parts: Iterable[str]
                     ) -> Iterator[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of ``model`` in any of ``parts``.

    Raises:
        ValueError: a part names no parameter of the model (a typo would otherwise change
            nothing, silently).
    """
    parts = tuple(parts)
    named = list(model.named_parameters())
    for part in parts:
        if not any(match_length(name, part) for name, _ in named):
            raise ValueError(f"{part!r} names no parameter of the model: use one of "
                             f"{sorted(PARTS)} or a prefix of its parameter names")
    for name, param in named:
        if any(match_length(name, part) for part in parts):
            yield name, param


def freeze_parameters(model: nn.Module, parts: Iterable[str]) -> list[str]:
    """Stop gradients to the parameters of ``parts`` (before DDP wraps the model, so that DDP
    neither waits for nor reduces them); returns their names."""
    frozen = []
    for name, param in parts_parameters(model, parts):
        param.requires_grad_(False)
        frozen.append(plain_name(name))
    return frozen
