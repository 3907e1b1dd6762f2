"""The dataclass defaults as Hydra config nodes, so the YAML under ``conf/`` states only changes.

Config flows one way: Hydra YAML -> typed dataclasses (validated once) -> constructor args. The
defaults live in the dataclasses alone; :func:`register_defaults` stores a plain node of each
one's field defaults in Hydra's ConfigStore as ``<group>/base`` (``model/base``,
``loss/base``, ``optim/base``, ``data/base``, ``trainer/base``, ``tracking/base``, ``init/base``,
``study/base``, ``sweep/base``), and the
group YAMLs start from it (``defaults: [base]``) and set their differences. A field without a
default is ``???`` (mandatory); tuples become lists. Plain nodes, not structured configs: the
dataclasses are frozen, and Hydra cannot override fields of a read-only node.

Call :func:`register_defaults` before composing ``conf/train.yaml`` (the entry points'
``main()`` and the tests do). :func:`settings_dict` turns a composed config into the plain dict
the dataclasses take, without the helper keys (``output_root``) that only feed interpolations.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pipelines.common.tracking_settings import TrackingSettings
from pipelines.inference.export import ExportSettings
from pipelines.jobs.settings import SubmitSettings
from pipelines.promotion.gate import PromoteSettings
from pipelines.studies.run import StudySettings
from pipelines.sweeps.settings import SweepSettings
from pipelines.training.settings import DataSettings, InitSettings, TrainerSettings

#: Top-level keys of the composed configs that only feed interpolations (conf/paths.yaml).
HELPER_KEYS = ("output_root",)

MISSING = "???"  # OmegaConf's mandatory value


def _plain(value: Any) -> Any:
    """A YAML-safe copy: dataclasses as dicts, tuples as lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def defaults_node(cls: type) -> dict[str, Any]:
    """``{field: default}`` of dataclass ``cls`` (``???`` where a field has no default)."""
    node: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            node[f.name] = _plain(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            node[f.name] = _plain(f.default_factory())
        else:
            node[f.name] = MISSING
    return node


def default_classes() -> dict[str, type]:
    """Config group -> the dataclass whose defaults are that group's ``base`` node."""
    from samdetr.config import LossConfig, ModelConfig
    from samdetr.engine.optim import OptimConfig

    return {
        "model": ModelConfig,
        "loss": LossConfig,
        "optim": OptimConfig,
        "data": DataSettings,
        "trainer": TrainerSettings,
        "tracking": TrackingSettings,
        "init": InitSettings,
    }


def register_defaults() -> None:
    """Store ``<group>/base`` for every group of :func:`default_classes`, ``study/base``
    (:class:`pipelines.studies.run.StudySettings`) and ``sweep/base``
    (:class:`pipelines.sweeps.settings.SweepSettings`), and the top-level ``promote_base``
    (:class:`pipelines.promotion.gate.PromoteSettings`, conf/promote.yaml's start) and
    ``submit_base``
    (:class:`pipelines.jobs.settings.SubmitSettings`, conf/submit.yaml's) and ``export_base``
    (:class:`pipelines.inference.export.ExportSettings`, conf/export.yaml's) (idempotent)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    # study/base and sweep/base feed conf/study.yaml and conf/tune.yaml; the other groups are
    # conf/train.yaml's too.
    for group, cls in {**default_classes(), "study": StudySettings,
                       "sweep": SweepSettings}.items():
        store.store(group=group, name="base", node=defaults_node(cls))
    store.store(name="promote_base", node=defaults_node(PromoteSettings))
    store.store(name="submit_base", node=defaults_node(SubmitSettings))
    store.store(name="export_base", node=defaults_node(ExportSettings))


def settings_dict(cfg: Any) -> dict[str, Any]:
    """The composed ``cfg`` resolved into a plain dict, without :data:`HELPER_KEYS`."""
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    for key in HELPER_KEYS:
        plain.pop(key, None)
    return plain
