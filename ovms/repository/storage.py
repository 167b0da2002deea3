"""The few object-store calls the mirror needs, on each cloud's own SDK."""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from http import HTTPStatus

from ovms.repository import split_url


class RemoteError(Exception):
    """A remote repository could not be read; the message says which URL and why."""


@dataclasses.dataclass(frozen=True, slots=True)
class RemoteFile:
    key: str  # relative to the listed prefix, "/"-separated
    size: int
    tag: str  # ETag or generation: changes when the object does


class Storage:
    """One bucket or container of an object store."""

    def list(self, prefix: str) -> list[RemoteFile]:
        """Every object under ``prefix`` (recursively), keys relative to it."""
        raise NotImplementedError

    def download(self, key: str, target: str) -> None:
        raise NotImplementedError

    def read(self, key: str) -> bytes:
        raise NotImplementedError


def _phrase(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "error"


def _missing(extra: str, module: str) -> RemoteError:
    return RemoteError(f"the {module} package is not installed; install it with pip install 'ovms[{extra}]'")


class S3Storage(Storage):
    """S3 or an S3-compatible store (MinIO, ...): AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
    AWS_REGION and, for other stores, S3_ENDPOINT (``http://host:port``; a bare ``host:port`` means https)."""

    def __init__(self, bucket: str) -> None:
        try:
            import boto3
            import botocore.config
        except ImportError:
            raise _missing("s3", "boto3") from None
        endpoint = os.environ.get("S3_ENDPOINT") or None
        if endpoint and "://" not in endpoint:
            endpoint = "https://" + endpoint
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        self.bucket = bucket
        self.client = boto3.client("s3", endpoint_url=endpoint, region_name=region,
                                   config=botocore.config.Config(retries={"max_attempts": 3, "mode": "standard"},
                                                                 connect_timeout=10, read_timeout=60))

    def _error(self, exc: Exception) -> RemoteError:
        from botocore.exceptions import ClientError, NoCredentialsError

        if isinstance(exc, NoCredentialsError):
            return RemoteError("no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = error.get("Code", "")
            hint = {"NoSuchBucket": "the bucket does not exist",
                    "InvalidAccessKeyId": "AWS_ACCESS_KEY_ID is not a key this store knows",
                    "SignatureDoesNotMatch": "AWS_SECRET_ACCESS_KEY does not match the access key",
                    "AccessDenied": "the credentials may not read this bucket or path"}.get(code, "")
            return RemoteError(f"{code or 'error'}: {error.get('Message', exc)}" + (f" ({hint})" if hint else ""))
        return RemoteError(str(exc))

    def list(self, prefix: str) -> list[RemoteFile]:
        start = prefix + "/" if prefix else ""
        found = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start):
                for item in page.get("Contents", []):
                    if not item["Key"].endswith("/"):  # "directory" markers some tools write
                        found.append(RemoteFile(item["Key"][len(start):], item["Size"], item["ETag"]))
        except Exception as exc:
            raise self._error(exc) from None
        return found

    def download(self, key: str, target: str) -> None:
        try:
            self.client.download_file(self.bucket, key, target)
        except Exception as exc:
            raise self._error(exc) from None

    def read(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except Exception as exc:
            raise self._error(exc) from None


class GCSStorage(Storage):
    """Google Cloud Storage: GOOGLE_APPLICATION_CREDENTIALS (STORAGE_EMULATOR_HOST for an emulator)."""

    # google-cloud-storage retries a refused or dropped connection for 120 s by default (measured: 102 s for one
    # listing with nothing listening), and the first configuration waits for every model in turn. A bucket that
    # cannot be read is tried again at the next poll anyway.
    RETRY_SECONDS = 20
    TIMEOUT = (10, 60)  # connect, read (seconds)

    def __init__(self, bucket: str) -> None:
        try:
            from google.cloud import storage
            from google.cloud.storage.retry import DEFAULT_RETRY
        except ImportError:
            raise _missing("gcs", "google-cloud-storage") from None
        try:
            if os.environ.get("STORAGE_EMULATOR_HOST"):
                from google.auth.credentials import AnonymousCredentials

                client = storage.Client(credentials=AnonymousCredentials(), project="emulator")
            else:
                client = storage.Client()
        except Exception as exc:
            raise RemoteError(f"cannot create a Google Cloud Storage client: {exc}; set "
                              "GOOGLE_APPLICATION_CREDENTIALS to a service account key file") from None
        self.bucket = client.bucket(bucket)
        self.client = client
        self._call = {"retry": DEFAULT_RETRY.with_timeout(self.RETRY_SECONDS), "timeout": self.TIMEOUT}

    def _error(self, exc: Exception, *, listing: bool) -> RemoteError:
        from google.api_core import exceptions as api
        from google.auth import exceptions as auth

        if isinstance(exc, api.RetryError):
            cause = exc.cause if exc.cause is not None else exc
            reason = re.search(r"\[Errno -?\d+\][^'\")]*", str(cause))
            return RemoteError(f"cannot reach {self.client.api_endpoint} (tried for {self.RETRY_SECONDS} s): "
                               f"{reason.group(0) if reason else cause}")
        if isinstance(exc, api.GoogleAPICallError) and exc.code is not None:
            hint = {404: "the bucket does not exist" if listing else "the object does not exist",
                    401: "the credentials were refused; check GOOGLE_APPLICATION_CREDENTIALS",
                    403: "the credentials may not read this bucket or path: they need storage.objects.list and "
                         "storage.objects.get"}.get(exc.code)
            # exc.message is "GET <request URL>: <the server's message>"; the URL adds nothing to ours.
            message = exc.message.split(": ", 1)[-1] if exc.message.startswith(("GET ", "POST ")) else exc.message
            return RemoteError(f"{exc.code} {_phrase(exc.code)}: {message}" + (f" ({hint})" if hint else ""))
        if isinstance(exc, auth.GoogleAuthError):
            return RemoteError(f"the credentials could not be used: {exc}; check GOOGLE_APPLICATION_CREDENTIALS")
        return RemoteError(str(exc))

    def list(self, prefix: str) -> list[RemoteFile]:
        start = prefix + "/" if prefix else ""
        try:
            return [RemoteFile(b.name[len(start):], b.size or 0, str(b.generation or b.etag))
                    for b in self.client.list_blobs(self.bucket, prefix=start, **self._call)
                    if not b.name.endswith("/")]
        except Exception as exc:
            raise self._error(exc, listing=True) from None

    def download(self, key: str, target: str) -> None:
        try:
            self.bucket.blob(key).download_to_filename(target, **self._call)
        except Exception as exc:
            raise self._error(exc, listing=False) from None

    def read(self, key: str) -> bytes:
        try:
            return self.bucket.blob(key).download_as_bytes(**self._call)
        except Exception as exc:
            raise self._error(exc, listing=False) from None


class AzureBlobStorage(Storage):
    """Azure Blob Storage: AZURE_STORAGE_CONNECTION_STRING."""

    # The SDK's default retry waits 15 s, then 18, then 24 before giving up (87 s measured for one listing with
    # nothing listening), and the first configuration waits for every model in turn; 19 s measured with this
    # one. A container that cannot be read is tried again at the next poll anyway.
    RETRIES = 3

    def __init__(self, container: str) -> None:
        try:
            from azure.storage.blob import BlobServiceClient, ExponentialRetry
        except ImportError:
            raise _missing("azure", "azure-storage-blob") from None
        connection = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
        if not connection:
            raise RemoteError("AZURE_STORAGE_CONNECTION_STRING is not set; set it to the storage account's "
                              "connection string")
        # The SDK logs every request and response (URL, headers) at INFO: thousands of lines an hour at one poll a
        # second. Left alone if the operator chose a level for it.
        http_log = logging.getLogger("azure.core.pipeline.policies.http_logging_policy")
        if http_log.level == logging.NOTSET:
            http_log.setLevel(logging.WARNING)
        retry = ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=self.RETRIES, random_jitter_range=1)
        try:
            service = BlobServiceClient.from_connection_string(connection, retry_policy=retry, connection_timeout=10,
                                                               read_timeout=60)
            self.container = service.get_container_client(container)
        except Exception as exc:
            raise RemoteError(f"AZURE_STORAGE_CONNECTION_STRING is not usable: {exc}") from None

    def _error(self, exc: Exception) -> RemoteError:
        from azure.core.exceptions import HttpResponseError, ServiceRequestError

        if isinstance(exc, ServiceRequestError):
            reason = re.search(r"\[Errno -?\d+\][^'\")]*", str(exc))
            return RemoteError(f"cannot reach {self.container.scheme}://{self.container.primary_hostname} "
                               f"({self.RETRIES} retries): {reason.group(0) if reason else exc}")
        if type(exc).__name__ == "AzureSigningError":  # a ClientAuthenticationError raised before any request
            return RemoteError(f"cannot sign requests: {exc}; check the AccountKey in AZURE_STORAGE_CONNECTION_STRING")
        if isinstance(exc, HttpResponseError):
            # The SDK's message goes on with RequestId, Time, ErrorCode and, for a refused signature, details with
            # the signature, the time and the string signed, over several lines: new at every poll, so the error
            # would be logged at every poll. The first line and the code say what is wrong and stay the same.
            code = getattr(exc.error_code, "value", exc.error_code)  # a StorageErrorCode enum, or the header's text
            code = code or (f"{exc.status_code} {_phrase(exc.status_code)}" if exc.status_code else "error")
            first = (exc.message or str(exc)).strip().splitlines()[0].rstrip(".")
            hint = {"AuthenticationFailed": "the AccountKey or SharedAccessSignature in "
                                            "AZURE_STORAGE_CONNECTION_STRING is not valid for this storage account",
                    "AuthorizationFailure": "the credentials may not read this container",
                    "AuthorizationPermissionMismatch": "the credentials may not read this container"}.get(code, "")
            return RemoteError(f"{code}: {first}" + (f" ({hint})" if hint else ""))
        return RemoteError(str(exc))

    def list(self, prefix: str) -> list[RemoteFile]:
        start = prefix + "/" if prefix else ""
        try:
            return [RemoteFile(b.name[len(start):], b.size, str(b.etag))
                    for b in self.container.list_blobs(name_starts_with=start) if not b.name.endswith("/")]
        except Exception as exc:
            raise self._error(exc) from None

    def download(self, key: str, target: str) -> None:
        try:
            with open(target, "wb") as out:
                self.container.download_blob(key).readinto(out)
        except Exception as exc:
            raise self._error(exc) from None

    def read(self, key: str) -> bytes:
        try:
            return self.container.download_blob(key).readall()
        except Exception as exc:
            raise self._error(exc) from None


_KINDS = {"s3": S3Storage, "gs": GCSStorage, "az": AzureBlobStorage, "azure": AzureBlobStorage}


def open_storage(url: str) -> tuple[Storage, str]:
    """(the storage holding ``url``, the key prefix ``url`` names)."""
    try:
        scheme, bucket, prefix = split_url(url)
    except ValueError as exc:
        raise RemoteError(str(exc)) from None
    return _KINDS[scheme](bucket), prefix


def read_text(url: str) -> str:
    """A small remote file (config.json) as text."""
    storage, key = open_storage(url)
    try:
        return storage.read(key).decode()
    except UnicodeDecodeError:
        raise RemoteError(f"{url} is not UTF-8 text") from None
