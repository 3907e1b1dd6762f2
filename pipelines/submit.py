"""Run the project's pipelines as jobs on a Ray cluster, through Ray's job server.

    python -m pipelines.submit address=http://head:8265 train trainer=gpu trainer.num_workers=8
    python -m pipelines.submit tune sweep.num_samples=2           # address from $RAY_ADDRESS
    python -m pipelines.submit wait=false preprocess data=coco2017 split=train
    python -m pipelines.submit list | logs JOB_ID | status JOB_ID | stop JOB_ID

The ``key=value`` words before the command are this tool's settings (``conf/submit.yaml``,
:class:`pipelines.jobs.settings.SubmitSettings`); the words after a pipeline's name are that
pipeline's Hydra overrides, checked here first (composed as ``--cfg job`` would) and passed on
quoted. The project folder is uploaded as the job's working directory. Credentials come from
the cluster's own secrets; variables named in ``pass_env=[...]`` go with the request, where
Ray's job listing shows them to every dashboard user (a warning names them).
With ``wait=true`` (the default) the job's logs stream here and the exit status is the job's:
0 succeeded, 1 failed, 3 stopped, 2 bad settings or overrides (nothing sent). Ctrl-C stops
following, not the job.
"""

from __future__ import annotations

import sys

from pipelines.cli.submit import run


def main() -> None:
    try:
        code = run(sys.argv[1:], __doc__)
    except ValueError as err:
        print(f"[submit] {err}", file=sys.stderr, flush=True)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
