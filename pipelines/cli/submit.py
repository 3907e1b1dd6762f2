"""The submit command (``python -m pipelines.submit``, whose docstring is the usage): its
settings and the pipelines' overrides composed and checked with Hydra before anything is sent,
then the job sent, followed, listed or stopped through :mod:`pipelines.jobs.client`."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pipelines.cli.config_store import register_defaults, settings_dict
from pipelines.jobs.client import (
    EXIT_CODES,
    client,
    describe,
    follow,
    job_status,
    list_jobs,
    say,
    submit,
)
from pipelines.jobs.settings import (
    PIPELINES,
    SubmitSettings,
    split_command,
)

CONF = Path(__file__).resolve().parents[2] / "conf"


def load_settings(overrides: list[str]) -> SubmitSettings:
    """``conf/submit.yaml`` with ``overrides``, as :class:`SubmitSettings`."""
    from hydra import compose, initialize_config_dir

    from samdetr.config import known_fields

    register_defaults()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="submit", overrides=overrides)
    return SubmitSettings(**known_fields(SubmitSettings, settings_dict(cfg), "submit"))


def check_overrides(pipeline: str, overrides: list[str]) -> None:
    """Compose the pipeline's config with ``overrides`` here (ValueError naming the problem),
    so a typo fails before the job is sent. Mandatory values may stay unset (``???``)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    register_defaults()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            compose(config_name=PIPELINES[pipeline], overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        raise ValueError(f"the overrides of {pipeline} do not compose: {err}") from err


def usage(doc: str) -> str:
    """What ``--help`` prints: ``doc`` (the entry's docstring: what the tool does and how to call
    it), then its settings."""
    lines = [doc.strip(), "", "Settings (conf/submit.yaml; defaults: "
             "pipelines.jobs.settings.SubmitSettings):"]
    for item in dataclasses.fields(SubmitSettings):
        default = (item.default_factory() if item.default_factory is not dataclasses.MISSING
                   else item.default)
        lines.append(f"  {item.name}={default!r}")
    lines += ["", f"Pipelines: {', '.join(PIPELINES)}; their own settings: "
              "python -m pipelines.PIPELINE --help", "Docs: docs/cluster.md"]
    return "\n".join(lines)


def run(argv: list[str], doc: str = "") -> int:
    """The command line; returns the exit status (``doc``: what ``--help`` prints first)."""
    if not argv or {"-h", "--help"} & set(argv):
        print(usage(doc))
        return 0 if argv else 2
    setting_words, command, args = split_command(argv)
    settings = load_settings(setting_words)
    if command in PIPELINES and settings.check:  # before contacting the cluster at all
        check_overrides(command, args)
    if command not in PIPELINES and command != "list" and len(args) != 1:
        raise ValueError(f"{command} takes one job id, got {args}")
    jobs = client(settings)
    if command in PIPELINES:
        job_id = submit(jobs, settings, command, args)
        if not settings.wait:
            say(f"follow it with `python -m pipelines.submit logs {job_id}`")
            return 0
        return follow(jobs, job_id)
    if command == "list":
        for row in list_jobs(jobs):
            print(f"{row['id']:<44} {row['status']:<10} {row['entrypoint']}")
        return 0
    job_id = args[0]
    if command == "logs":
        return follow(jobs, job_id)
    if command == "status":
        info = jobs.get_job_info(job_id)
        print(describe(job_id, info))
        return EXIT_CODES.get(job_status(info), 0)
    stopped = jobs.stop_job(job_id)
    say(f"{job_id}: " + ("stop requested" if stopped else "not running"))
    return 0
