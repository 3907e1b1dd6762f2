"""A local S3-compatible server (moto) on 127.0.0.1 with one bucket, and the standard AWS
environment that points pyarrow, boto3 and Ray's storage at it."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from types import SimpleNamespace

import boto3
import pytest
from moto.server import ThreadedMotoServer


@contextlib.contextmanager
def moto_s3(bucket: str) -> Iterator[SimpleNamespace]:
    """``env`` (set in this process while open) and a boto3 ``client`` independent of the code
    under test; the bucket exists."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",  # no slow instance-metadata lookups
    }
    try:
        with pytest.MonkeyPatch.context() as mp:
            for key, value in env.items():
                mp.setenv(key, value)
            client = boto3.client("s3")
            client.create_bucket(Bucket=bucket)
            yield SimpleNamespace(env=env, client=client)
    finally:
        server.stop()
