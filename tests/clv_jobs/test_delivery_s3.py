"""Tests for clv_jobs.delivery.s3 against a real S3 endpoint: moto in server mode.

As in test_store_s3.py, moto is a separate ``python -m moto.server`` process on a free
loopback port, started once for the module and terminated at the end. In front of it runs
a small fault-injecting HTTP proxy (standard library only: ``ThreadingHTTPServer``
forwarding with ``http.client``) on 127.0.0.1: it logs every request, can answer the next N
requests with an S3 error (500 ``InternalError``, 503 ``SlowDown``, 403 …), hide checksum
headers (an endpoint without checksum support), or corrupt the next upload's body.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from clv_jobs.datamodel import file_digest
from clv_jobs.delivery import DeliveryError, manifest_bytes
from clv_jobs.delivery import s3 as s3_delivery
from clv_jobs.errors import ConfigError
from clv_jobs.settings import S3Destination
from tests.moto_server import free_port, moto_s3_server

boto3 = pytest.importorskip("boto3", reason="boto3 is needed for the S3 delivery")
pytest.importorskip("moto.server", reason="moto[server] is needed for an S3 endpoint on loopback")

BUCKET = "clv-delivery-test"
ENV_KEY_ID, SECRET = "AKIAENVIRONMENT", "env-secret-never-logged"
CONN_KEY_ID, CONN_SECRET = "AKIACONNECTION", "conn-secret/never+logged"
CONN_ID = "clv_test_s3_drop"


@pytest.fixture(scope="module")
def moto_endpoint(tmp_path_factory):
    """A moto S3 server on 127.0.0.1:<free port> holding the test bucket."""
    with moto_s3_server(tmp_path_factory.mktemp("moto")) as endpoint:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="setup",
                     aws_secret_access_key="setup").create_bucket(Bucket=BUCKET)
        yield endpoint


# --- the fault-injecting proxy ------------------------------------------------------------------

ERROR_XML = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
             '<RequestId>fault-proxy</RequestId></Error>')
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection",
              "expect", "content-length"}


class FaultProxy(ThreadingHTTPServer):
    """Forwards to moto; the next ``fail`` requests get ``error`` instead."""

    daemon_threads = True

    def __init__(self, upstream_port: int) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream_port = upstream_port
        self.lock = threading.Lock()
        self.reset()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def reset(self) -> None:
        with self.lock:
            #: (method, path, access key id of the signature) of every request, in order.
            self.requests: list[tuple[str, str, str]] = []
            self.fail = 0
            self.error = (500, "InternalError", "We encountered an internal error. Please try again.")
            self.strip_checksums = False
            self.corrupt_next_put = False

    def puts(self) -> list[str]:
        return [path for method, path, _ in self.requests if method == "PUT"]


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FaultProxy

    def log_message(self, *args) -> None:  # quiet
        return None

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                data += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            return data
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes, length: int | None = None) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self) -> None:
        body = self._body()
        proxy = self.server
        credential = re.search(r"Credential=([^/]+)/", self.headers.get("Authorization", ""))
        with proxy.lock:
            proxy.requests.append((self.command, self.path, credential.group(1) if credential else ""))
            fail = proxy.fail > 0
            proxy.fail -= fail
            status, code, message = proxy.error
            corrupt = self.command == "PUT" and proxy.corrupt_next_put and bool(body)
            if corrupt:
                proxy.corrupt_next_put = False
            strip = proxy.strip_checksums
        if fail:
            self._reply(status, [("Content-Type", "application/xml")],
                        ERROR_XML.format(code=code, message=message).encode())
            return
        if corrupt:  # one flipped byte on the way, checksum header left as the client sent it
            body = body[:-1] + bytes([body[-1] ^ 0xFF])
        headers = {name: value for name, value in self.headers.items() if name.lower() not in HOP_BY_HOP}
        upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=30)
        try:
            upstream.request(self.command, self.path, body=body if body else None, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            out = [(name, value) for name, value in response.getheaders()
                   if name.lower() not in HOP_BY_HOP and not (strip and name.lower().startswith("x-amz-checksum"))]
            length = int(response.getheader("Content-Length") or 0) if self.command == "HEAD" else None
            self._reply(response.status, out, data, length)
        finally:
            upstream.close()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle


@pytest.fixture(scope="module")
def fault_proxy(moto_endpoint):
    server = FaultProxy(int(moto_endpoint.rsplit(":", 1)[1]))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# --- per-test setup -------------------------------------------------------------------------------


@pytest.fixture
def proxy(fault_proxy):
    fault_proxy.reset()
    yield fault_proxy
    fault_proxy.reset()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch):
    """The standard environment's credentials; nothing from ~/.aws; fast retries."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 f"AIRFLOW_CONN_{CONN_ID.upper()}", f"CLV_CONN_{CONN_ID.upper()}"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ENV_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr(s3_delivery, "ATTEMPTS", 3)
    monkeypatch.setattr(s3_delivery, "FIRST_DELAY_SECONDS", 0.01)


@pytest.fixture
def s3(moto_endpoint):
    """A client straight to moto (not through the proxy): what readers of the bucket see."""
    return boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")


@pytest.fixture
def prefix(request) -> str:
    return f"drop/{request.node.name}"


def keys(s3, prefix: str) -> list[str]:
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/")
    return sorted(item["Key"].removeprefix(f"{prefix}/") for item in listed.get("Contents", []))


def get(s3, key: str) -> bytes:
    return s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def dest(proxy: FaultProxy | None, prefix: str, bucket: str = BUCKET, **more) -> S3Destination:
    return S3Destination(type="s3", bucket=bucket, prefix=prefix, endpoint_url=proxy.url if proxy else None, **more)


# --- delivery ---------------------------------------------------------------------------------------


def test_round_trip_object_then_manifest(proxy, s3, prefix, make_datamodel):
    path, manifest = make_datamodel("acme", 50)
    result = s3_delivery.deliver(path, dest(proxy, prefix + "/"), manifest)
    key, manifest_key = f"{prefix}/{path.name}", f"{prefix}/{path.name}.manifest.json"
    assert result == {"destination": "s3", "bucket": BUCKET, "key": key, "path": f"s3://{BUCKET}/{key}",
                      "manifest": f"s3://{BUCKET}/{manifest_key}", "bytes": manifest["bytes"],
                      "sha256": manifest["sha256"], "verified": "checksum"}
    delivered = get(s3, key)
    assert delivered == path.read_bytes()
    stored_manifest = get(s3, manifest_key)
    assert stored_manifest == manifest_bytes(manifest)
    assert json.loads(stored_manifest)["sha256"] == hashlib.sha256(delivered).hexdigest()
    assert keys(s3, prefix) == [path.name, f"{path.name}.manifest.json"]
    # One PUT of the object, verified, then the manifest last.
    assert proxy.puts() == [f"/{BUCKET}/{key}", f"/{BUCKET}/{manifest_key}"]
    assert [method for method, _, _ in proxy.requests] == ["PUT", "HEAD", "PUT", "HEAD"]
    assert {credential for _, _, credential in proxy.requests} == {ENV_KEY_ID}
    head = s3.head_object(Bucket=BUCKET, Key=key)
    assert head["ContentType"] == "text/csv"


def test_gzip_file_at_the_bucket_root(proxy, s3, make_datamodel):
    path, manifest = make_datamodel("gz", 20, compress=True)
    result = s3_delivery.deliver(path, dest(proxy, ""), manifest)
    assert result["key"] == path.name and path.name.endswith(".csv.gz")
    assert get(s3, path.name) == path.read_bytes()
    assert s3.head_object(Bucket=BUCKET, Key=path.name)["ContentType"] == "application/gzip"


def test_server_errors_on_the_first_tries_are_retried(proxy, s3, prefix, make_datamodel, caplog):
    path, manifest = make_datamodel("acme", 10)
    proxy.fail = 2
    caplog.set_level(logging.WARNING)
    result = s3_delivery.deliver(path, dest(proxy, prefix), manifest)
    assert get(s3, result["key"]) == path.read_bytes()
    assert caplog.text.count("retrying") == 2 and "InternalError" in caplog.text
    assert proxy.puts() == [f"/{BUCKET}/{result['key']}"] * 3 + [f"/{BUCKET}/{result['key']}.manifest.json"]
    assert keys(s3, prefix) == [path.name, f"{path.name}.manifest.json"]


@pytest.mark.parametrize(("status", "code"), [(503, "SlowDown"), (500, "InternalError"), (429, "TooManyRequests"),
                                              (400, "RequestTimeout")])
def test_throttling_and_timeouts_are_transient(proxy, s3, prefix, make_datamodel, status, code):
    path, manifest = make_datamodel("acme", 5)
    proxy.fail, proxy.error = 1, (status, code, "try again")
    s3_delivery.deliver(path, dest(proxy, prefix), manifest)
    assert len(proxy.puts()) == 3  # the failed one, the object, the manifest


def test_failing_on_every_try_leaves_nothing_under_the_final_names(proxy, s3, prefix, make_datamodel):
    path, manifest = make_datamodel("acme", 5)
    proxy.fail = 100
    with pytest.raises(DeliveryError, match=rf"account acme, s3://{BUCKET}/{prefix}/{path.name}: still failing "
                                            r"after 3 tries: ClientError: .*InternalError") as error:
        s3_delivery.deliver(path, dest(proxy, prefix), manifest)
    assert len(proxy.requests) == 3
    assert keys(s3, prefix) == []
    assert SECRET not in str(error.value)


def test_missing_bucket_is_a_clear_error_at_once(proxy, prefix, make_datamodel):
    path, manifest = make_datamodel("acme", 5)
    with pytest.raises(DeliveryError, match=r"account acme, s3://no-such-bucket-x/.*: bucket no-such-bucket-x "
                                            r"does not exist") as error:
        s3_delivery.deliver(path, dest(proxy, prefix, bucket="no-such-bucket-x"), manifest)
    assert len(proxy.requests) == 1  # no retries
    assert SECRET not in str(error.value) and ENV_KEY_ID not in str(error.value)


@pytest.mark.parametrize(("status", "code"), [(403, "AccessDenied"), (403, "InvalidAccessKeyId"),
                                              (403, "SignatureDoesNotMatch"), (400, "InvalidArgument")])
def test_permanent_errors_fail_at_once(proxy, s3, prefix, make_datamodel, status, code):
    path, manifest = make_datamodel("acme", 5)
    proxy.fail, proxy.error = 100, (status, code, "no")
    where = re.escape(f"s3://{BUCKET}/{prefix}/{path.name}: ") + r"\w+: An error occurred " + re.escape(f"({code})")
    with pytest.raises(DeliveryError, match=where + r".*\(not retried\)") as error:
        s3_delivery.deliver(path, dest(proxy, prefix), manifest)
    assert len(proxy.requests) == 1
    assert keys(s3, prefix) == []
    assert SECRET not in str(error.value)


def test_unreachable_endpoint_is_retried_then_fails(prefix, make_datamodel, caplog):
    path, manifest = make_datamodel("acme", 5)
    closed = S3Destination(type="s3", bucket=BUCKET, prefix=prefix, endpoint_url=f"http://127.0.0.1:{free_port()}")
    caplog.set_level(logging.WARNING)
    with pytest.raises(DeliveryError, match=r"still failing after 3 tries: EndpointConnectionError"):
        s3_delivery.deliver(path, closed, manifest)
    assert caplog.text.count("retrying") == 2


def test_idempotent_redelivery(proxy, s3, prefix, make_datamodel):
    path, manifest = make_datamodel("acme", 30)
    first = s3_delivery.deliver(path, dest(proxy, prefix), manifest)
    before = {key: get(s3, f"{prefix}/{key}") for key in keys(s3, prefix)}
    etags = {key: s3.head_object(Bucket=BUCKET, Key=f"{prefix}/{key}")["ETag"] for key in before}
    second = s3_delivery.deliver(path, dest(proxy, prefix), manifest)
    assert first == second
    assert keys(s3, prefix) == [path.name, f"{path.name}.manifest.json"]
    assert {key: get(s3, f"{prefix}/{key}") for key in keys(s3, prefix)} == before
    assert {key: s3.head_object(Bucket=BUCKET, Key=f"{prefix}/{key}")["ETag"] for key in before} == etags


def test_endpoint_without_checksums_is_verified_by_reading_back(proxy, s3, prefix, make_datamodel):
    path, manifest = make_datamodel("acme", 10)
    proxy.strip_checksums = True
    result = s3_delivery.deliver(path, dest(proxy, prefix), manifest)
    assert result["verified"] == "read-back"
    assert [method for method, _, _ in proxy.requests] == ["PUT", "HEAD", "GET", "PUT", "HEAD", "GET"]
    assert get(s3, result["key"]) == path.read_bytes()


def test_bytes_corrupted_on_the_way_are_detected_removed_and_sent_again(proxy, s3, prefix, make_datamodel, caplog):
    # moto keeps whatever checksum the client claims, so only reading back sees the damage
    # (AWS itself would refuse the PUT with BadDigest, also retried).
    path, manifest = make_datamodel("acme", 10)
    proxy.strip_checksums, proxy.corrupt_next_put = True, True
    caplog.set_level(logging.WARNING)
    result = s3_delivery.deliver(path, dest(proxy, prefix), manifest)
    assert "the stored object does not match (sha256 differs from the manifest's); removed" in caplog.text
    assert [method for method, _, _ in proxy.requests][:4] == ["PUT", "HEAD", "GET", "DELETE"]
    assert get(s3, result["key"]) == path.read_bytes()


def test_local_file_not_the_published_one_uploads_nothing(proxy, s3, prefix, make_datamodel):
    path, manifest = make_datamodel("acme", 5)
    with pytest.raises(DeliveryError, match="differs from the published one"):
        s3_delivery.deliver(path, dest(proxy, prefix), manifest | {"sha256": "0" * 64})
    assert proxy.requests == [] and keys(s3, prefix) == []


# --- credentials and endpoint -----------------------------------------------------------------------


def test_credentials_and_endpoint_from_an_airflow_connection(proxy, s3, prefix, make_datamodel, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name)
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps({
        "conn_type": "aws", "login": CONN_KEY_ID, "password": CONN_SECRET,
        "extra": {"region_name": "eu-west-1", "endpoint_url": proxy.url, "aws_session_token": "token-x"},
    }))
    path, manifest = make_datamodel("acme", 5)
    result = s3_delivery.deliver(path, S3Destination(type="s3", bucket=BUCKET, prefix=prefix, conn_id=CONN_ID),
                                 manifest)
    assert get(s3, result["key"]) == path.read_bytes()
    assert {credential for _, _, credential in proxy.requests} == {CONN_KEY_ID}
    assert CONN_SECRET not in json.dumps(result)


def test_connection_uri_form_through_the_resolver(proxy, s3, prefix, make_datamodel, monkeypatch):
    from urllib.parse import quote

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    uri = (f"aws://{CONN_KEY_ID}:{quote(CONN_SECRET, safe='')}@/?region_name=us-east-1"
           f"&endpoint_url={quote(proxy.url, safe='')}")
    path, manifest = make_datamodel("acme", 5)
    result = s3_delivery.deliver(path, S3Destination(type="s3", bucket=BUCKET, prefix=prefix, conn_id=CONN_ID),
                                 manifest, resolver=lambda conn_id: uri if conn_id == CONN_ID else None)
    assert get(s3, result["key"]) == path.read_bytes()
    assert {credential for _, _, credential in proxy.requests} == {CONN_KEY_ID}


def test_credentials_and_endpoint_from_the_standard_environment(proxy, s3, prefix, make_datamodel, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)  # the S3-specific one wins
    path, manifest = make_datamodel("acme", 5)
    result = s3_delivery.deliver(path, S3Destination(type="s3", bucket=BUCKET, prefix=prefix), manifest)
    assert get(s3, result["key"]) == path.read_bytes()
    assert {credential for _, _, credential in proxy.requests} == {ENV_KEY_ID}


def test_missing_credentials_are_a_clear_error(proxy, prefix, make_datamodel, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    path, manifest = make_datamodel("acme", 5)
    with pytest.raises(DeliveryError, match="no AWS credentials: set the destination's conn_id, or "
                                            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        s3_delivery.deliver(path, dest(proxy, prefix), manifest)
    assert proxy.requests == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, f"connection '{CONN_ID}' not found"),
     (json.dumps({"conn_type": "postgres", "login": "u", "password": CONN_SECRET}), "not an aws connection"),
     (json.dumps({"conn_type": "aws", "login": CONN_KEY_ID}), "needs both the access key id")],
)
def test_bad_connections_are_config_errors_without_secrets(monkeypatch, prefix, make_datamodel, value, expected):
    if value is not None:
        monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", value)
    path, manifest = make_datamodel("acme", 5)
    with pytest.raises(ConfigError, match=expected) as error:
        s3_delivery.deliver(path, S3Destination(type="s3", bucket=BUCKET, prefix=prefix, conn_id=CONN_ID), manifest)
    assert str(error.value).startswith(f"account acme, destination s3://{BUCKET}: ")
    assert CONN_SECRET not in str(error.value)


def test_through_the_delivery_entry_point(proxy, s3, prefix, make_datamodel, tmp_path):
    from clv_jobs import delivery
    from clv_jobs.settings import LocalDestination

    path, manifest = make_datamodel("acme", 5)
    results = delivery.deliver(path, [dest(proxy, prefix), LocalDestination(type="local", path=str(tmp_path / "o"))],
                               manifest)
    assert [result["destination"] for result in results] == ["s3", "local"]
    assert get(s3, results[0]["key"]) == (tmp_path / "o" / path.name).read_bytes()
    assert file_digest(tmp_path / "o" / path.name)["sha256"] == manifest["sha256"]


def test_object_key_joins_prefix_and_name():
    assert s3_delivery.object_key("", "f.csv") == "f.csv"
    assert s3_delivery.object_key("/a/b/", "f.csv") == "a/b/f.csv"
