"""LocalStack's S3 as a subprocess, without Docker: a second S3 implementation beside moto.

LocalStack (the `localstack-core` package) needs Python 3.13 (2026.3.0 imports `warnings.deprecated`)
and conflicts with batchrun's own pins (botocore), so it lives in its own venv; .ci/run creates it:

    python3.13 -m venv .localstack-venv
    .localstack-venv/bin/pip install 'localstack-core[base-runtime]' 'cbor2<6' 'pyopenssl<25'
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest
from helpers import aws_env, free_port

DEFAULT_PYTHON = Path(__file__).parent.parent / ".localstack-venv" / "bin" / "python"
START_TIMEOUT_S = 120  # about 1.5 s measured; the first start also builds plux's entry-point cache


def localstack_python() -> Path:
    """The LocalStack venv's interpreter. Where it is missing the test is skipped, except in CI
    (CI=true) when .ci/run installed it (it sets BATCHRUN_LOCALSTACK_PYTHON then): a failure.
    """
    configured = os.environ.get("BATCHRUN_LOCALSTACK_PYTHON")
    python = Path(configured or DEFAULT_PYTHON)
    if not python.exists():
        why = f"LocalStack is not installed at {python} (see tests/localstack_server.py)"
        if os.environ.get("CI") and configured:
            pytest.fail(f"{why}, although .ci/run installed it")
        pytest.skip(why)
    return python


def aws_client_args(url: str) -> dict[str, Any]:
    """boto3.client keyword arguments for the server at *url*."""
    env = aws_env(url)
    return {
        "endpoint_url": url,
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        "region_name": env["AWS_DEFAULT_REGION"],
    }


class LocalStack:
    """`with LocalStack(python) as url:` runs LocalStack's S3 on a free loopback port, writing only below
    a temporary folder (its FILESYSTEM_ROOT and HOME), and stops it on exit.
    """

    def __init__(self, python: Path) -> None:
        self.python = python
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._root = tempfile.TemporaryDirectory(prefix="batchrun-localstack-")
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> str:
        root = self._root.name
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": root,  # plux caches entry points under ~/.cache
            "GATEWAY_SERVER": "hypercorn",
            "GATEWAY_LISTEN": f"127.0.0.1:{self.port}",
            "SERVICES": "s3",
            "OVERRIDE_IN_DOCKER": "0",
            "FILESYSTEM_ROOT": root,
            "DNS_ADDRESS": "0",  # no DNS server on port 53
            "SKIP_SSL_CERT_DOWNLOAD": "1",
            "DISABLE_EVENTS": "1",  # no analytics
        }
        log = Path(root, "localstack.log").open("wb")
        self._proc = subprocess.Popen(
            [str(self.python), "-m", "localstack.runtime.main"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, stopped whole
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._healthy():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                tail = Path(root, "localstack.log").read_text(errors="replace")[-2000:]
                self.__exit__(None, None, None)
                pytest.fail(f"LocalStack did not start (exit {self._proc.returncode}):\n{tail}")
            time.sleep(0.1)
        return self.url

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/_localstack/health", timeout=2) as reply:  # noqa: S310
                body = reply.read()
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False
        return b'"s3": "available"' in body or b'"s3": "running"' in body

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
        self._root.cleanup()
