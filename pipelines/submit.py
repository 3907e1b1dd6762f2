"""Run the project's pipelines as jobs on a Ray cluster, through Ray's job server.

    python -m pipelines.submit address=http://head:8265 train trainer=gpu trainer.num_workers=8
    python -m pipelines.submit tune sweep.num_samples=2           # address from $RAY_ADDRESS
    python -m pipelines.submit wait=false preprocess data=coco2017 split=train
    python -m pipelines.submit list | logs JOB_ID | status JOB_ID | stop JOB_ID

The ``key=value`` words before the command are this tool's settings (``conf/submit.yaml``,
:class:`pipelines.submit_settings.SubmitSettings`); the words after a pipeline's name are that
pipeline's Hydra overrides, checked here first (composed as ``--cfg job`` would) and passed on
quoted. The project folder is uploaded as the job's working directory. Credentials come from
the cluster's own secrets; variables named in ``pass_env=[...]`` go with the request, where
Ray's job listing shows them to every dashboard user (a warning names them).
With ``wait=true`` (the default) the job's logs stream here and the exit status is the job's:
0 succeeded, 1 failed, 3 stopped, 2 bad settings or overrides (nothing sent). Ctrl-C stops
following, not the job.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

from pipelines.submit_settings import (
    PIPELINES,
    SubmitSettings,
    entrypoint,
    exposed_credentials,
    runtime_env,
    split_command,
    submission_id,
)

CONF = Path(__file__).resolve().parents[1] / "conf"
EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 3}


def _say(message: str) -> None:
    print(f"[submit] {message}", flush=True)


def load_settings(overrides: list[str]) -> SubmitSettings:
    """``conf/submit.yaml`` with ``overrides``, as :class:`SubmitSettings`."""
    from hydra import compose, initialize_config_dir

    from pipelines.config_defaults import register_defaults, settings_dict
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

    from pipelines.config_defaults import register_defaults

    register_defaults()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            compose(config_name=PIPELINES[pipeline], overrides=overrides)
    except (HydraException, OmegaConfBaseException) as err:
        raise ValueError(f"the overrides of {pipeline} do not compose: {err}") from err


def client(settings: SubmitSettings) -> Any:
    """Ray's ``JobSubmissionClient`` for the settings' job server (token auth as configured)."""
    if settings.auth_mode:
        os.environ["RAY_AUTH_MODE"] = settings.auth_mode  # read by the SDK for its headers
    from ray.job_submission import JobSubmissionClient

    # Ray's INFO lines about packaging the working directory (one per ignored file) would bury
    # the job's own output.
    logging.getLogger("ray").setLevel(logging.WARNING)
    return JobSubmissionClient(settings.job_server())


def submit(jobs: Any, settings: SubmitSettings, pipeline: str, overrides: list[str]) -> str:
    """Send the job through ``jobs`` (the client); returns its submission id."""
    exposed = exposed_credentials(settings)
    if exposed:
        _say(f"warning: {', '.join(exposed)} will travel in the job's runtime environment, "
             "which `ray job list` and the Ray dashboard show to everyone who can reach the "
             "job server; prefer the cluster's own secrets (docs/cluster.md)")
    job_id = jobs.submit_job(
        entrypoint=entrypoint(pipeline, overrides),
        submission_id=submission_id(settings, pipeline),
        runtime_env=runtime_env(settings),
        metadata={"samdetr.pipeline": pipeline, "samdetr.overrides": " ".join(overrides)[:500]},
        entrypoint_num_cpus=settings.entrypoint_num_cpus,
        entrypoint_num_gpus=settings.entrypoint_num_gpus or None,
    )
    _say(f"submitted {job_id} to {settings.job_server()}: {entrypoint(pipeline, overrides)}")
    return job_id


def job_status(job: Any) -> str:
    """A job's status as its name (``SUCCEEDED``, ...), from the SDK's enum or string."""
    return str(getattr(job.status, "value", job.status))


def describe(job_id: str, info: Any) -> str:
    """``ID STATUS[: message]`` of a job."""
    return f"{job_id} {job_status(info)}" + (f": {info.message}" if info.message else "")


def follow(jobs: Any, job_id: str) -> int:
    """Stream the job's logs until it ends; returns the exit code of its final status."""

    async def tail() -> None:
        async for lines in jobs.tail_job_logs(job_id):
            sys.stdout.write(lines)
            sys.stdout.flush()

    try:
        asyncio.run(tail())
    except KeyboardInterrupt:
        _say(f"stopped following; {job_id} goes on. Follow it again with `python -m "
             f"pipelines.submit logs {job_id}`, stop it with `... stop {job_id}`")
        return 130
    info = jobs.get_job_info(job_id)
    _say(describe(job_id, info))
    return EXIT_CODES.get(job_status(info), 1)


def list_jobs(jobs: Any) -> list[dict[str, Any]]:
    """This cluster's jobs, newest first, as rows (id, status, pipeline, entrypoint)."""
    rows = []
    for job in jobs.list_jobs():
        rows.append({"id": job.submission_id or job.job_id, "status": job_status(job),
                     "start": job.start_time or 0,
                     "pipeline": (job.metadata or {}).get("samdetr.pipeline", ""),
                     "entrypoint": job.entrypoint})
    return sorted(rows, key=lambda r: r["start"], reverse=True)


def usage() -> str:
    """What ``--help`` prints: what the tool does, how to call it, and its settings."""
    import dataclasses

    lines = [__doc__.strip(), "", "Settings (conf/submit.yaml; defaults: "
             "pipelines.submit_settings.SubmitSettings):"]
    for item in dataclasses.fields(SubmitSettings):
        default = (item.default_factory() if item.default_factory is not dataclasses.MISSING
                   else item.default)
        lines.append(f"  {item.name}={default!r}")
    lines += ["", f"Pipelines: {', '.join(PIPELINES)}; their own settings: "
              "python -m pipelines.PIPELINE --help", "Docs: docs/cluster.md"]
    return "\n".join(lines)


def run(argv: list[str]) -> int:
    """The command line; returns the exit status."""
    if not argv or {"-h", "--help"} & set(argv):
        print(usage())
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
            _say(f"follow it with `python -m pipelines.submit logs {job_id}`")
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
    _say(f"{job_id}: " + ("stop requested" if stopped else "not running"))
    return 0


def main() -> None:
    try:
        code = run(sys.argv[1:])
    except ValueError as err:
        print(f"[submit] {err}", file=sys.stderr, flush=True)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
