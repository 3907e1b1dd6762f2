"""Ray's job server, through its SDK (``JobSubmissionClient``): send a pipeline as a job, follow
its logs to the end, list, describe and stop jobs."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any

from pipelines.jobs.settings import (
    SubmitSettings,
    entrypoint,
    exposed_credentials,
    runtime_env,
    submission_id,
)

#: The exit status of ``python -m pipelines.submit`` for each final job status.
EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 3}


def say(message: str) -> None:
    """One line of the submit tool on the console."""
    print(f"[submit] {message}", flush=True)


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
        say(f"warning: {', '.join(exposed)} will travel in the job's runtime environment, "
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
    say(f"submitted {job_id} to {settings.job_server()}: {entrypoint(pipeline, overrides)}")
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
        say(f"stopped following; {job_id} goes on. Follow it again with `python -m "
             f"pipelines.submit logs {job_id}`, stop it with `... stop {job_id}`")
        return 130
    info = jobs.get_job_info(job_id)
    say(describe(job_id, info))
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
