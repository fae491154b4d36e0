"""A real S3 endpoint on loopback: moto's standalone server as a subprocess.

Import the fixture into a test module with
``from s3server import s3_endpoint  # noqa: F401``; fill buckets with
``put_objects`` (botocore's synchronous client, no edgefleet code involved).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import botocore.session
import pytest
from conftest import free_port

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
REGION = "us-east-1"


def _answers(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        conn.request("GET", "/moto-api/")
        conn.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        conn.close()


class MotoServer:
    """``python -m moto.server`` on a free loopback port."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> MotoServer:
        for _ in range(3):  # the port may be taken between probing and binding it
            self.port = free_port()
            env = dict(os.environ, **CREDENTIALS, AWS_DEFAULT_REGION=REGION)
            env.pop("MOTO_PORT", None)
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                if _answers(self.port):
                    return self
                time.sleep(0.05)
            self.stop()
        raise RuntimeError("moto server did not start")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """The endpoint URL of a moto S3 server running for the test module."""
    server = MotoServer().start()
    try:
        yield server.endpoint
    finally:
        server.stop()


def s3_client(endpoint: str) -> Any:
    """botocore's synchronous S3 client for ``endpoint``."""
    return botocore.session.get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )


def put_objects(
    endpoint: str, bucket: str, objects: dict[str, bytes], **params: Any
) -> dict[str, str]:
    """Create ``bucket`` if needed and put ``objects`` in it; their ETags by key.

    ``params`` go to every ``PutObject`` (``ContentType``, ``CacheControl``…).
    """
    client = s3_client(endpoint)
    try:
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=bucket)
        etags = {}
        for key, data in objects.items():
            resp = client.put_object(Bucket=bucket, Key=key, Body=data, **params)
            etags[key] = resp["ETag"]
        return etags
    finally:
        client.close()
