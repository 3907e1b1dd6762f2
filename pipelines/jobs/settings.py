"""What ``python -m pipelines.submit`` sends to a Ray cluster's job server, and how.

The settings come from ``conf/submit.yaml`` (defaults: :class:`SubmitSettings`) with the
``key=value`` words before the command; :func:`split_command` tells them from the command and
the pipeline's own overrides. The job's runtime environment (:func:`runtime_env`) uploads the
project folder as the working directory and passes the environment variables named in
``pass_env`` through from the submitting shell (none by default: the cluster's own secrets
hold the credentials; :func:`exposed_credentials` names those a job would show).
"""

from __future__ import annotations

import os
import shlex
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.common.checks import flag, non_negative

#: The project's Hydra entry points a job may run -> their config name under conf/.
PIPELINES = {
    "make_synthetic": "make_synthetic", "preprocess": "preprocess", "train": "train",
    "tune": "tune", "study": "study", "evaluate": "evaluate", "promote": "promote",
    "predict": "predict", "export": "export",
}
#: Commands about jobs already submitted; each but ``list`` takes a job (submission) id.
JOB_COMMANDS = ("list", "logs", "status", "stop")
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class SubmitSettings:
    """``address``: the job server (``http://HEAD:8265``); None: ``$RAY_ADDRESS``.
    ``wait``: follow the job's logs and exit with its status. ``working_dir``: the folder
    uploaded as the job's working directory (None: this project), minus ``excludes``.
    ``pass_env``: variables copied from this shell into the job when set here (none by
    default; the job's runtime environment is visible to every dashboard user). ``env``:
    literal variables for the job. ``pip``: extra packages installed for the job.
    ``auth_mode``: ``token`` or ``disabled`` (Ray's ``RAY_AUTH_MODE``; None: the shell's);
    with ``token`` the token comes from ``$RAY_AUTH_TOKEN``, ``$RAY_AUTH_TOKEN_PATH`` or
    ``~/.ray/auth_token``. ``check``: compose the pipeline's config with its overrides here
    first, so a typo fails in seconds, not on the cluster."""
    address: str | None = None
    wait: bool = True
    working_dir: str | None = None
    # gitignore-style patterns: a leading "/" anchors a name at the project root (conf/data
    # must travel, ./data need not).
    excludes: list[str] = field(default_factory=lambda: [
        "/.git", "/.venv", "/outputs", "/mlruns", "/mlflow.db", "/data", "/multirun", "*.pt",
        "*.pth", "*.ckpt", "__pycache__", ".pytest_cache", ".hypothesis", ".ruff_cache",
        "*.egg-info",
    ])
    # Nothing by default: a job's runtime environment is shown by `ray job list` and the
    # dashboard to everyone who can reach the job server, so credentials come from the
    # cluster's own secrets (the Secrets the KubeRay pods mount, a VM's instance profile).
    pass_env: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    pip: list[str] = field(default_factory=list)
    # The driver of a pipeline only coordinates (Ray Train, Tune and Data run in workers): it
    # reserves nothing by default, so a small cluster is not short of a CPU for the whole job.
    entrypoint_num_cpus: float = 0.0
    entrypoint_num_gpus: float = 0.0
    submission_id: str | None = None  # None: samdetr-<pipeline>-<UTC time>-<random>
    auth_mode: str | None = None
    check: bool = True

    def __post_init__(self) -> None:
        for name in ("wait", "check"):
            flag(getattr(self, name), name)
        if self.auth_mode not in (None, "token", "disabled"):
            raise ValueError(f"auth_mode must be token, disabled or null, got {self.auth_mode!r}")
        for name in ("excludes", "pass_env", "pip"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{name} must be a list of strings, got {value!r}")
        if not isinstance(self.env, dict) or not all(
                isinstance(k, str) and isinstance(v, (str, int, float)) for k, v in
                self.env.items()):
            raise ValueError(f"env must map names to values, got {self.env!r}")
        for name in ("entrypoint_num_cpus", "entrypoint_num_gpus"):
            non_negative(getattr(self, name), name)

    def job_server(self) -> str:
        """The job server's HTTP address; ValueError when none is given or it is not HTTP."""
        address = self.address or os.environ.get("RAY_ADDRESS")
        if not address:
            raise ValueError("no Ray job server: give address=http://HEAD:8265 or set "
                             "RAY_ADDRESS (the dashboard's address, port 8265 by default)")
        if not address.startswith(("http://", "https://")):
            raise ValueError(
                f"the job server is the Ray dashboard's HTTP address (http://HEAD:8265), got "
                f"{address!r}; a GCS address (HEAD:6379) or ray:// client address cannot "
                "take jobs")
        return address.rstrip("/")


# Names that say a variable holds a credential.
_SECRET_WORDS = ("SECRET", "TOKEN", "PASSWORD", "PASSWD", "CREDENTIAL", "ACCESS_KEY", "API_KEY")


def exposed_credentials(settings: SubmitSettings, environ: dict[str, str] | None = None
                        ) -> list[str]:
    """The variables that look like credentials and would travel in the job's runtime
    environment (set here and named in ``pass_env``, or given in ``env``)."""
    environ = dict(os.environ if environ is None else environ)
    sent = [n for n in settings.pass_env if environ.get(n)] + list(settings.env)
    return sorted({n for n in sent if any(w in n.upper() for w in _SECRET_WORDS)})


def split_command(argv: list[str]) -> tuple[list[str], str, list[str]]:
    """``(settings overrides, command, the command's arguments)`` from the command line:
    ``key=value`` words first, then a pipeline name or a job command. ValueError otherwise."""
    settings: list[str] = []
    for i, word in enumerate(argv):
        if word in PIPELINES or word in JOB_COMMANDS:
            return settings, word, argv[i + 1:]
        if "=" not in word:
            break
        settings.append(word)
    raise ValueError(
        "usage: python -m pipelines.submit [setting=value ...] PIPELINE [override ...]\n"
        "       python -m pipelines.submit [setting=value ...] list | logs ID | status ID | "
        f"stop ID\nPIPELINE is one of {', '.join(PIPELINES)}")


def entrypoint(pipeline: str, overrides: list[str]) -> str:
    """The job's shell command: the pipeline's module with its overrides, each quoted."""
    if pipeline not in PIPELINES:
        raise ValueError(f"unknown pipeline {pipeline!r}; one of {', '.join(PIPELINES)}")
    return " ".join(["python", "-m", f"pipelines.{pipeline}", *map(shlex.quote, overrides)])


def submission_id(settings: SubmitSettings, pipeline: str) -> str:
    """The job's id: the setting, else unique per submission (sweeps submit many at once)."""
    if settings.submission_id:
        return settings.submission_id
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"samdetr-{pipeline.replace('_', '-')}-{stamp}-{uuid.uuid4().hex[:6]}"


def runtime_env(settings: SubmitSettings, environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Ray's runtime environment of the job: the working directory (uploaded by the SDK), the
    passed-through and literal environment variables, and extra pip packages."""
    environ = dict(os.environ if environ is None else environ)
    folder = Path(settings.working_dir or PROJECT_ROOT).resolve()
    if not (folder / "pipelines").is_dir() or not (folder / "samdetr").is_dir():
        raise ValueError(f"working_dir {folder} does not hold this project (pipelines/ and "
                         "samdetr/); run from the project or set working_dir=")
    env_vars = {name: environ[name] for name in settings.pass_env if environ.get(name)}
    env_vars.update({k: str(v) for k, v in settings.env.items()})
    out: dict[str, Any] = {"working_dir": str(folder), "excludes": list(settings.excludes),
                           "env_vars": env_vars}
    if settings.pip:
        out["pip"] = list(settings.pip)
    return out
