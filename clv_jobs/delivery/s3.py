"""Deliver to an S3 bucket, or any S3-compatible store (MinIO, Ceph, …).

The file goes to ``<prefix>/<file>`` in ONE ``PutObject``: S3 makes an object visible only
once its upload is complete, so no reader ever sees a partial object under the final key
(no temporary key and no rename are needed; objects above 5 GiB, which would need a
multipart upload, are refused). What arrived is then verified: ``head_object`` must report
the file's size, and the object's SHA-256 — computed by the SDK on upload
(``ChecksumAlgorithm="SHA256"``) and checked by S3 against the bytes it received — must
equal the manifest's ``sha256``; an endpoint that returns no checksums has the object read
back and hashed. Only then is ``<file>.manifest.json`` put, last: it is the trigger.

Credentials come from the destination's ``conn_id`` when it is set (an Airflow ``aws``
connection: login = access key id, password = secret access key, extras ``region_name``,
``endpoint_url``, ``aws_session_token``), else from the standard AWS chain
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``…,
then the SDK's usual profile or instance role). The endpoint is the destination's
``endpoint_url``, else the connection's extra ``endpoint_url``, else
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``; a custom endpoint is addressed path-style,
which every S3-compatible store understands.

The SDK's own retries are turned off: :func:`clv_jobs.delivery.with_retries` owns the
policy. Transient: 5xx, throttling (``SlowDown``, 503, 429), ``RequestTimeout``,
connection and read timeouts, connection refused or reset. Permanent, at once: a missing
bucket, ``AccessDenied``, ``InvalidAccessKeyId``, ``SignatureDoesNotMatch`` and other
4xx, missing credentials. Messages name the account, bucket and key, never credentials.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
from pathlib import Path

import boto3
import botocore.exceptions
from botocore.config import Config

from clv_jobs import delivery
from clv_jobs.connections import Resolver, lookup_connection
from clv_jobs.datamodel import file_digest
from clv_jobs.delivery import DeliveryError, TransientDeliveryError, manifest_bytes, manifest_name, with_retries
from clv_jobs.errors import ConfigError
from clv_jobs.settings import S3Destination

#: Tries and first backoff delay (module attributes, read at each delivery: tests lower them).
ATTEMPTS = delivery.ATTEMPTS
FIRST_DELAY_SECONDS = delivery.FIRST_DELAY_SECONDS

#: Socket timeouts of one request (a timeout is transient: the try is repeated).
CONNECT_TIMEOUT_SECONDS = 10
READ_TIMEOUT_SECONDS = 120

#: The largest object one PutObject accepts (S3's limit).
MAX_SINGLE_PUT_BYTES = 5 * 1024**3

#: Error codes worth another try whatever their HTTP status (besides every 5xx and 429).
TRANSIENT_CODES = frozenset({
    "InternalError", "ServiceUnavailable", "SlowDown", "Throttling", "ThrottlingException",
    "RequestThrottled", "RequestLimitExceeded", "TooManyRequestsException", "RequestTimeout",
    "RequestTimeoutException", "OperationAborted",
    # The body arrived damaged or short (AWS checks x-amz-checksum-* and Content-Length): send it again.
    "BadDigest", "XAmzContentSHA256Mismatch", "IncompleteBody",
})

#: Connection types accepted for ``conn_id`` (Airflow's ``aws``; older ones said ``s3``).
CONNECTION_TYPES = ("aws", "s3", "")


def object_key(prefix: str, file_name: str) -> str:
    """``<prefix>/<file>`` without doubled or leading slashes (empty prefix: the file name)."""
    prefix = prefix.strip("/")
    return f"{prefix}/{file_name}" if prefix else file_name


def _b64(hex_digest: str) -> str:
    """S3's form of a SHA-256: base64 of the digest bytes."""
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def is_transient(exc: BaseException) -> bool:
    """Whether an S3 fault is worth another try (see the module docstring)."""
    if isinstance(exc, botocore.exceptions.ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        code = exc.response.get("Error", {}).get("Code", "")
        # 501 NotImplemented: a feature the endpoint lacks, no retry will change that.
        return (status >= 500 and status != 501) or status == 429 or code in TRANSIENT_CODES
    return isinstance(exc, (
        botocore.exceptions.ConnectionError,  # EndpointConnectionError (refused), ConnectTimeoutError
        botocore.exceptions.HTTPClientError,  # connection reset/closed, ReadTimeoutError, body cut short
        ConnectionError,
        TimeoutError,
    ))


def _client_settings(destination: S3Destination, account: str, resolver: Resolver | None) -> tuple[dict, str | None]:
    """Session keywords (credentials, region) and the endpoint: connection, settings, environment."""
    session: dict = {}
    endpoint = destination.endpoint_url
    if destination.conn_id:
        where = f"account {account}, destination s3://{destination.bucket}"
        try:
            conn = lookup_connection(destination.conn_id, resolver)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if conn.conn_type not in CONNECTION_TYPES:
            raise ConfigError(f"{where}: connection {conn.conn_id!r} ({conn.origin}) is of type "
                              f"{conn.conn_type!r}, not an aws connection")
        extra = conn.extra
        key_id = conn.login or extra.get("aws_access_key_id")
        secret = conn.password or extra.get("aws_secret_access_key")
        if bool(key_id) != bool(secret):
            raise ConfigError(f"{where}: connection {conn.conn_id!r} ({conn.origin}) needs both the access key "
                              "id (login) and the secret access key (password)")
        if key_id:
            session |= {"aws_access_key_id": key_id, "aws_secret_access_key": secret,
                        "aws_session_token": extra.get("aws_session_token") or None}
        if extra.get("region_name"):
            session["region_name"] = extra["region_name"]
        endpoint = endpoint or extra.get("endpoint_url") or None
    endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    return session, endpoint


def make_client(destination: S3Destination, account: str, resolver: Resolver | None = None):
    """A boto3 S3 client for the destination, with the SDK's retries turned off."""
    session_kwargs, endpoint = _client_settings(destination, account, resolver)
    session = boto3.session.Session(**session_kwargs)
    region = session.region_name or ("us-east-1" if endpoint else None)
    config = Config(
        # One request per call: botocore's "max_attempts" counts RETRIES (1 would mean two
        # requests); "total_max_attempts" counts the first one too.
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=READ_TIMEOUT_SECONDS,
        s3={"addressing_style": "path"} if endpoint else None,
    )
    return session.client("s3", region_name=region, endpoint_url=endpoint, config=config)


def _read_back_sha256(client, bucket: str, key: str) -> str:
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    digest = hashlib.sha256()
    try:
        for chunk in body.iter_chunks(1 << 20):
            digest.update(chunk)
    finally:
        body.close()
    return _b64(digest.hexdigest())


def _put_verified(client, bucket: str, key: str, body_of, size: int, sha256_hex: str, content_type: str,
                  where: str) -> str:
    """Put one object, then check its size and SHA-256; ``checksum`` or ``read-back``.

    A stored object that differs is removed (its manifest is never put) and the try fails
    as transient: the next one uploads it again.
    """
    expected = _b64(sha256_hex)
    with body_of() as body:
        put = client.put_object(Bucket=bucket, Key=key, Body=body, ContentLength=size,
                                ContentType=content_type, ChecksumAlgorithm="SHA256")
    head = client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    problem = None
    if head["ContentLength"] != size:
        problem = f"{head['ContentLength']} bytes stored, {size} sent"
    checksums = [value for value in (put.get("ChecksumSHA256"), head.get("ChecksumSHA256")) if value]
    if checksums:
        how = "checksum"
    else:  # an endpoint without checksum support: hash what it serves
        how = "read-back"
        checksums = [_read_back_sha256(client, bucket, key)]
    if problem is None and any(value != expected for value in checksums):
        problem = "sha256 differs from the manifest's"
    if problem:
        with contextlib.suppress(Exception):  # best effort; the failure below is what matters
            client.delete_object(Bucket=bucket, Key=key)
        raise TransientDeliveryError(f"{where}: the stored object does not match ({problem}); removed")
    return how


def deliver(local_file: Path, destination: S3Destination, manifest: dict, resolver: Resolver | None = None) -> dict:
    """Put the file as ``<prefix>/<file>``, verify it, then put ``<file>.manifest.json``.

    Returns
    -------
    dict
        ``destination``, ``bucket``, ``key``, ``path`` (``s3://bucket/key``), ``manifest``
        (its ``s3://`` address), ``bytes``, ``sha256`` and ``verified`` (``checksum``, or
        ``read-back`` where the endpoint returns no checksums).

    Raises
    ------
    DeliveryError
        The file differs from the manifest, a permanent S3 fault (missing bucket,
        permission, credentials), or transient faults on every try.
    ConfigError
        The connection ``conn_id`` is missing or not an aws connection.
    """
    local_file = Path(local_file)
    account = manifest["account"]
    bucket = destination.bucket
    key = object_key(destination.prefix, local_file.name)
    manifest_key = object_key(destination.prefix, manifest_name(local_file.name))
    where = f"account {account}, s3://{bucket}/{key}"

    local = file_digest(local_file)
    if local["sha256"] != manifest["sha256"] or local["bytes"] != manifest["bytes"]:
        raise DeliveryError(f"{where}: the local file {local_file} differs from the published one "
                            "(size or sha256 not the manifest's); nothing uploaded")
    if local["bytes"] > MAX_SINGLE_PUT_BYTES:
        raise DeliveryError(f"{where}: {local['bytes']} bytes is more than one PutObject takes (5 GiB); "
                            "enable datamodel.gzip")
    document = manifest_bytes(manifest)
    document_sha256 = hashlib.sha256(document).hexdigest()
    content_type = "application/gzip" if local_file.name.endswith(".gz") else "text/csv"
    client = make_client(destination, account, resolver)

    def attempt() -> str:
        try:
            how = _put_verified(client, bucket, key, lambda: open(local_file, "rb"), local["bytes"],
                                manifest["sha256"], content_type, where)
            _put_verified(client, bucket, manifest_key, lambda: contextlib.nullcontext(document), len(document),
                          document_sha256, "application/json", f"account {account}, s3://{bucket}/{manifest_key}")
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "NoSuchBucket":
                raise DeliveryError(f"{where}: bucket {bucket} does not exist (create it, or fix the "
                                    "destination's bucket)") from None
            raise
        except botocore.exceptions.NoCredentialsError:
            raise DeliveryError(f"{where}: no AWS credentials: set the destination's conn_id, or "
                                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment") from None
        return how

    how = with_retries(attempt, where, is_transient, attempts=ATTEMPTS, first_delay=FIRST_DELAY_SECONDS)
    return {
        "destination": "s3",
        "bucket": bucket,
        "key": key,
        "path": f"s3://{bucket}/{key}",
        "manifest": f"s3://{bucket}/{manifest_key}",
        "bytes": local["bytes"],
        "sha256": local["sha256"],
        "verified": how,
    }

