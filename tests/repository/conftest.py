"""Real object-store servers on 127.0.0.1 for the remote repository tests: moto's S3 server and the GCS emulator.

Both are the stores' own API over HTTP, driven by the real SDKs (boto3, google-cloud-storage) on both sides.
"""
from __future__ import annotations

import os
import pathlib

import pytest

from tests.test_cli import free_port

S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


@pytest.fixture(scope="session")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture()
def s3(s3_endpoint):
    """A boto3 client on the S3 server, and a fresh bucket."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    bucket = f"models-{os.urandom(4).hex()}"
    client.create_bucket(Bucket=bucket)
    return client, bucket


def upload_tree(client, bucket: str, local: pathlib.Path, prefix: str) -> None:
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(local).as_posix()}")


@pytest.fixture(scope="session")
def gcs_endpoint():
    """The GCS emulator of the gcp-storage-emulator package (the JSON API and media downloads), in memory."""
    from gcp_storage_emulator.server import create_server

    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


class GCSUploader:
    """The few boto3 client calls the tests use (upload_file, put_object, delete_object) on a GCS bucket, so
    `upload_tree` and the S3 tests' steps read the same for GCS."""

    def __init__(self, client) -> None:
        self.client = client

    def upload_file(self, filename: str, bucket: str, key: str) -> None:
        self.client.bucket(bucket).blob(key).upload_from_filename(filename)

    def put_object(self, *, Bucket: str, Key: str, Body: bytes) -> None:  # noqa: N803 (boto3's names)
        self.client.bucket(Bucket).blob(Key).upload_from_string(Body)

    def delete_object(self, *, Bucket: str, Key: str) -> None:  # noqa: N803
        self.client.bucket(Bucket).blob(Key).delete()


@pytest.fixture()
def gcs(gcs_endpoint, monkeypatch):
    """A google-cloud-storage client on the emulator (anonymous, as ovms uses it), and a fresh bucket."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_endpoint)
    client = storage.Client(credentials=AnonymousCredentials(), project="test")
    bucket = f"models-{os.urandom(4).hex()}"
    client.create_bucket(bucket)
    return GCSUploader(client), bucket


@pytest.fixture(scope="session")
def azure_blob():
    """The Azure Blob imitation (tests/repository/azure_imitation.py): listings in pages of 2, Shared Key checked."""
    from tests.repository.azure_imitation import AzureBlobImitation

    imitation = AzureBlobImitation(page_size=2).start()
    yield imitation
    imitation.stop()


@pytest.fixture()
def azure(azure_blob):
    """The imitation and a fresh container."""
    container = f"models-{os.urandom(4).hex()}"
    azure_blob.create_container(container)
    return azure_blob, container
