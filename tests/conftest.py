"""Fixtures: a moto S3 server on loopback, a progress URI on every backend, a subprocess env."""

from __future__ import annotations

import logging
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import AWS_ENV, BUCKET, aws_env, free_port
from localstack_server import LocalStack, aws_client_args, localstack_python


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """A moto S3 server over HTTP on 127.0.0.1; the URL is exported as AWS_ENDPOINT_URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request drowns test output
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(aws_env(url))
    yield url
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def s3(moto_server: str) -> str:
    """An empty moto server with one bucket; returns the server URL."""
    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST"))  # noqa: S310
    import boto3

    boto3.client("s3", endpoint_url=moto_server).create_bucket(Bucket=BUCKET)
    return moto_server


@pytest.fixture(scope="session")
def localstack() -> Iterator[str]:
    """LocalStack's S3 (a second S3 implementation) over HTTP on 127.0.0.1, with one bucket; its URL.

    It runs from its own Python 3.13 venv, BATCHRUN_LOCALSTACK_PYTHON or .localstack-venv/bin/python,
    which .ci/run creates; where that is missing the test is skipped with a note.
    """
    python = localstack_python()
    with LocalStack(python) as url:
        import boto3

        boto3.client("s3", **aws_client_args(url)).create_bucket(Bucket=BUCKET)
        yield url


@pytest.fixture(params=["memory", "local", "s3", "localstack"])
def progress_uri(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh progress URI on each backend the contract must hold for."""
    if request.param == "localstack":
        url = request.getfixturevalue("localstack")
        for key, value in aws_env(url).items():
            monkeypatch.setenv(key, value)
        return f"s3://{BUCKET}/runs/{tmp_path.name}/m.s.progress.txt"
    if request.param == "memory":
        import fsspec

        fsspec.filesystem("memory").store.clear()
        return f"memory://runs/{tmp_path.name}/m.s.progress.txt"
    if request.param == "local":
        return str(tmp_path / "progress" / "m.s.progress.txt")
    request.getfixturevalue("s3")
    return f"s3://{BUCKET}/runs/m.s.progress.txt"


@pytest.fixture
def s3_env(s3: str) -> dict[str, str]:
    """The environment a batchrun subprocess needs to reach the moto server."""
    return {**os.environ, **aws_env(s3), "PYTHONUNBUFFERED": "1"}
