"""Tests for clv_jobs.delivery.sftp against a real SFTP server on loopback.

The server (asyncssh, :mod:`tests.clv_jobs.sftp_server`) listens on 127.0.0.1:<free port>
from its own thread and event loop, rooted in a temporary folder with an ``Import`` folder,
and is stopped at the end of every test, even a failing one. The delivery only sees it
through the Airflow connection ``$AIRFLOW_CONN_CLV_SFTP`` (JSON form), with a generated
Ed25519 client key and the server's pinned host key, as a worker would see SFMC.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import socket
import time
from pathlib import Path

import pytest

paramiko = pytest.importorskip("paramiko", reason="paramiko is needed for sFTP delivery")
asyncssh = pytest.importorskip("asyncssh", reason="asyncssh is needed for the test SFTP server")

from clv_jobs import delivery  # noqa: E402
from clv_jobs.datamodel import file_digest  # noqa: E402
from clv_jobs.delivery import DeliveryError, manifest_bytes  # noqa: E402
from clv_jobs.delivery import sftp as sftp_delivery  # noqa: E402
from clv_jobs.errors import ConfigError  # noqa: E402
from clv_jobs.settings import SftpDestination  # noqa: E402
from tests.clv_jobs.sftp_server import LOGIN, SftpTestServer  # noqa: E402

CONN_ID = "clv_sftp"
ACCOUNT = "acme"
FILE = "clv_datamodel_acme_20250601.csv"
MANIFEST = f"{FILE}.manifest.json"
PASSWORD = "pw-never-logged-7f3a"


@pytest.fixture(scope="module")
def keys():
    """Server host key, the authorized client key, and keys nobody trusts."""
    return {
        "host": asyncssh.generate_private_key("ssh-ed25519"),
        "client": asyncssh.generate_private_key("ssh-ed25519"),
        "other_host": asyncssh.generate_private_key("ssh-ed25519"),
        "other_client": asyncssh.generate_private_key("ssh-ed25519"),
    }


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch):
    monkeypatch.setattr(delivery, "FIRST_DELAY_SECONDS", 0.05)
    monkeypatch.setattr(delivery, "ATTEMPTS", 5)


def _public(key) -> str:
    return key.export_public_key("openssh").decode().strip()


def _private(key) -> str:
    return key.export_private_key("openssh").decode()


@pytest.fixture
def make_server(tmp_path, keys):
    """Build servers rooted in ``tmp_path/root`` (with ``Import``); every one is stopped at the end."""
    servers = []

    def make(**options) -> SftpTestServer:
        root = tmp_path / "root"
        (root / "Import").mkdir(parents=True, exist_ok=True)
        options.setdefault("authorized_keys", [keys["client"]])
        server = SftpTestServer(root, keys["host"], **options)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def server(make_server):
    server = make_server(password=PASSWORD)
    server.start()
    return server


@pytest.fixture
def connect(monkeypatch, keys):
    """Set ``$AIRFLOW_CONN_CLV_SFTP`` for a server: key auth and its pinned host key unless overridden."""

    def set_connection(server: SftpTestServer, extra: dict | None = None, **fields) -> None:
        value = {"conn_type": "sftp", "host": "127.0.0.1", "port": server.port, "login": LOGIN,
                 "extra": {"private_key": _private(keys["client"]), "host_key": _public(keys["host"])}}
        if extra is not None:
            value["extra"] = extra
        value.update(fields)
        monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(value))
        monkeypatch.delenv(f"CLV_CONN_{CONN_ID.upper()}", raising=False)

    return set_connection


@pytest.fixture
def datamodel(tmp_path):
    """A Datamodel-like CSV of about 1.3 MB and its manifest."""
    path = tmp_path / "out" / FILE
    path.parent.mkdir()
    rows = 20_000
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["CONTACT_KEY", "LTV_VALUE", "SEGMENT_ID", "SEGMENT", "NOTE"])
        for i in range(rows):
            ltv = f"{(i * 7919) % 100_000 / 100:.2f}"
            writer.writerow([f"C{i:08d}", ltv, i % 11 + 1, "Leal Notable", "ñ" * (i % 7)])
    digest = file_digest(path)
    manifest = {"account": ACCOUNT, "as_of": "2025-06-01", "file": FILE, "rows": rows, "bytes": digest["bytes"],
                "sha256": digest["sha256"], "model_version": "pareto_nbd-test"}
    return path, manifest


def _destination(**fields) -> SftpDestination:
    return SftpDestination(type="sftp", conn_id=CONN_ID, **fields)


def _assert_delivered(server: SftpTestServer, local: Path, manifest: dict) -> None:
    """The folder holds exactly the file and its manifest, both complete."""
    assert server.files() == [FILE, MANIFEST]
    remote = server.root / "Import" / FILE
    assert remote.read_bytes() == local.read_bytes()
    delivered = json.loads((server.root / "Import" / MANIFEST).read_text())
    assert delivered == manifest
    assert delivered["sha256"] == hashlib.sha256(remote.read_bytes()).hexdigest()
    assert delivered["bytes"] == remote.stat().st_size
    assert delivered["rows"] == sum(1 for _ in open(remote, encoding="utf-8")) - 1


def test_round_trip(server, connect, datamodel, caplog):
    local, manifest = datamodel
    connect(server)
    with caplog.at_level(logging.DEBUG, logger="clv_jobs"):
        result = sftp_delivery.deliver(local, _destination(), manifest, None)
    assert result == {"destination": "sftp", "host": "127.0.0.1", "port": server.port, "path": f"/Import/{FILE}",
                      "manifest": f"/Import/{MANIFEST}", "verified": "sha256"}
    _assert_delivered(server, local, manifest)
    assert (server.root / "Import" / MANIFEST).read_bytes() == manifest_bytes(manifest)
    assert server.state.connections == 1
    assert "BEGIN OPENSSH PRIVATE KEY" not in caplog.text


def test_through_the_package_entry_point_with_a_resolver(server, keys, datamodel, monkeypatch):
    """clv_jobs.delivery.deliver picks this module for type "sftp"; an Airflow-style resolver wins."""
    local, manifest = datamodel
    monkeypatch.delenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", raising=False)
    value = json.dumps({"conn_type": "sftp", "host": "127.0.0.1", "port": server.port, "login": LOGIN,
                        "extra": {"private_key": _private(keys["client"]), "host_key": _public(keys["host"])}})
    results = delivery.deliver(local, [_destination()], manifest, {CONN_ID: value}.get)
    assert results[0]["path"] == f"/Import/{FILE}"
    _assert_delivered(server, local, manifest)


def test_connection_dropped_mid_upload_is_retried_and_leaves_no_partial_file(server, connect, datamodel, caplog):
    local, manifest = datamodel
    server.state.drop_after_bytes = 300_000  # of ~1.3 MB, on the first upload only
    connect(server)
    with caplog.at_level(logging.WARNING, logger="clv_jobs"):
        result = sftp_delivery.deliver(local, _destination(), manifest, None)
    assert server.state.dropped
    assert server.state.connections == 2
    assert "try 1 of 5 failed" in caplog.text
    dropped = [event[1] for event in server.state.events if event[0] == "dropped"]
    assert len(dropped) == 1 and Path(dropped[0]).name.startswith(".") and dropped[0].endswith(".partial")
    # The second try removed the first one's temporary file before uploading again.
    assert ("remove", dropped[0]) in server.state.events
    assert result["verified"] == "sha256"
    _assert_delivered(server, local, manifest)


def test_server_down_for_the_first_tries(make_server, connect, datamodel, monkeypatch, caplog):
    local, manifest = datamodel
    monkeypatch.setattr(delivery, "ATTEMPTS", 8)  # waits 0.05, 0.1, 0.2, 0.4, 0.8, … s
    server = make_server()
    connect(server)
    server.start_later(1.0)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="clv_jobs"):
        sftp_delivery.deliver(local, _destination(), manifest, None)
    assert time.monotonic() - started >= 0.9
    assert server.start_error is None
    assert "ConnectionRefused" in caplog.text or "Unable to connect" in caplog.text
    assert caplog.text.count("retrying in") >= 3
    _assert_delivered(server, local, manifest)


def test_server_never_up_fails_after_the_tries(make_server, connect, datamodel):
    local, manifest = datamodel
    server = make_server()  # never started: connection refused every time
    connect(server)
    with pytest.raises(DeliveryError, match="still failing after 5 tries") as failure:
        sftp_delivery.deliver(local, _destination(), manifest, None)
    assert f"account {ACCOUNT}" in str(failure.value) and f"127.0.0.1:{server.port}" in str(failure.value)


def test_wrong_pinned_host_key_is_refused_at_once(server, connect, keys, datamodel):
    local, manifest = datamodel
    connect(server, extra={"private_key": _private(keys["client"]), "host_key": _public(keys["other_host"])})
    started = time.monotonic()
    with pytest.raises(DeliveryError) as failure:
        sftp_delivery.deliver(local, _destination(), manifest, None)
    message = str(failure.value)
    assert "host key verification failed" in message and "pins ssh-ed25519 SHA256:" in message
    assert "not retried" in message and f"account {ACCOUNT}" in message and f"127.0.0.1:{server.port}" in message
    assert CONN_ID in message
    assert server.state.connections == 1 and server.state.auth_attempts == 0  # no credentials were offered
    assert time.monotonic() - started < 2
    assert server.files() == []


def test_host_key_as_bare_base64_and_through_known_hosts(server, connect, keys, datamodel, tmp_path):
    local, manifest = datamodel
    connect(server, extra={"private_key": _private(keys["client"]), "host_key": _public(keys["host"]).split()[1]})
    sftp_delivery.deliver(local, _destination(), manifest, None)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(server.known_hosts_line())
    connect(server, extra={"private_key": _private(keys["client"]), "known_hosts": str(known_hosts)})
    sftp_delivery.deliver(local, _destination(), manifest, None)
    _assert_delivered(server, local, manifest)


def test_host_not_in_known_hosts_is_refused_at_once(server, connect, keys, datamodel, tmp_path):
    local, manifest = datamodel
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"sftp.example.com {_public(keys['host'])}\n")
    connect(server, extra={"private_key": _private(keys["client"]), "known_hosts": str(known_hosts)})
    with pytest.raises(DeliveryError, match="not in known_hosts file .*host_key.*not retried"):
        sftp_delivery.deliver(local, _destination(), manifest, None)
    assert server.state.connections == 1 and server.state.auth_attempts == 0


def test_wrong_client_key_is_an_authentication_error_without_retry_storm(server, connect, keys, datamodel):
    local, manifest = datamodel
    connect(server, extra={"private_key": _private(keys["other_client"]), "host_key": _public(keys["host"])})
    with pytest.raises(DeliveryError) as failure:
        sftp_delivery.deliver(local, _destination(), manifest, None)
    message = str(failure.value)
    assert f"authentication failed for login '{LOGIN}' with the connection's private key" in message
    assert "not retried" in message and f"account {ACCOUNT}" in message and CONN_ID in message
    assert server.state.connections == 1 and 1 <= server.state.auth_attempts <= 2
    assert server.files() == []


def test_password_login_and_wrong_password(server, connect, keys, datamodel, caplog):
    local, manifest = datamodel
    connect(server, extra={"host_key": _public(keys["host"])}, password=PASSWORD)
    sftp_delivery.deliver(local, _destination(), manifest, None)
    _assert_delivered(server, local, manifest)

    server.state.connections = server.state.auth_attempts = 0
    connect(server, extra={"host_key": _public(keys["host"])}, password="wrong-" + PASSWORD)
    with caplog.at_level(logging.DEBUG), pytest.raises(DeliveryError) as failure:
        sftp_delivery.deliver(local, _destination(), manifest, None)
    assert "authentication failed" in str(failure.value) and "with the connection's password" in str(failure.value)
    assert server.state.connections == 1 and server.state.auth_attempts == 1
    assert PASSWORD not in str(failure.value) and PASSWORD not in caplog.text
    assert "retrying" not in caplog.text


def test_key_file_with_passphrase(make_server, connect, keys, datamodel, tmp_path):
    local, manifest = datamodel
    rsa = asyncssh.generate_private_key("ssh-rsa", key_size=2048)
    server = make_server(authorized_keys=[rsa])
    server.start()
    key_file = tmp_path / "id_rsa"
    key_file.write_bytes(rsa.export_private_key("openssh", passphrase="open sesame", rounds=50))
    connect(server, extra={"key_file": str(key_file), "host_key": _public(keys["host"])})
    with pytest.raises(ConfigError, match="encrypted: set the 'private_key_passphrase'"):
        sftp_delivery.deliver(local, _destination(), manifest, None)
    connect(server, extra={"key_file": str(key_file), "private_key_passphrase": "open sesame",
                           "host_key": _public(keys["host"])})
    sftp_delivery.deliver(local, _destination(), manifest, None)
    _assert_delivered(server, local, manifest)


@pytest.mark.parametrize("extra_name", ["no_host_key_check", "allow_host_key_change"])
def test_switching_host_key_checks_off_is_refused(server, connect, keys, datamodel, extra_name):
    local, manifest = datamodel
    connect(server, extra={"private_key": _private(keys["client"]), extra_name: "true"})
    with pytest.raises(ConfigError, match=f"{extra_name}.*host keys are always verified"):
        sftp_delivery.deliver(local, _destination(), manifest, None)
    assert server.state.connections == 0


def test_bad_connections_are_config_errors(server, connect, keys, datamodel):
    local, manifest = datamodel
    connect(server, extra={"host_key": _public(keys["host"])})
    with pytest.raises(ConfigError, match="neither a password nor"):
        sftp_delivery.deliver(local, _destination(), manifest, None)
    connect(server, extra={"private_key": "not a key", "host_key": _public(keys["host"])})
    with pytest.raises(ConfigError, match="'private_key' is not an Ed25519") as failure:
        sftp_delivery.deliver(local, _destination(), manifest, None)
    assert "not a key" not in str(failure.value)
    connect(server, extra={"private_key": _private(keys["client"]), "host_key": "ssh-ed25519 !!!"})
    with pytest.raises(ConfigError, match="'host_key' is not a public key"):
        sftp_delivery.deliver(local, _destination(), manifest, None)
    connect(server, extra={"private_key": _private(keys["client"]),
                           "host_key": "ssh-rsa " + _public(keys["host"]).split()[1]})
    with pytest.raises(ConfigError, match="says 'ssh-rsa' but holds a 'ssh-ed25519' key"):
        sftp_delivery.deliver(local, _destination(), manifest, None)
    assert server.state.connections == 0


def test_destination_host_and_port_override_the_connection(server, connect, datamodel):
    local, manifest = datamodel
    connect(server, host="sftp.example.invalid", port=1)
    result = sftp_delivery.deliver(local, _destination(host="127.0.0.1", port=server.port), manifest, None)
    assert result["host"] == "127.0.0.1" and result["port"] == server.port
    _assert_delivered(server, local, manifest)


def test_same_run_twice_leaves_one_file_and_one_manifest(server, connect, datamodel):
    local, manifest = datamodel
    connect(server)
    first = sftp_delivery.deliver(local, _destination(), manifest, None)
    second = sftp_delivery.deliver(local, _destination(path="/Import/"), manifest, None)
    assert first == second
    _assert_delivered(server, local, manifest)
    # The second delivery replaced the file atomically (posix-rename) after removing the old manifest.
    events = server.state.events
    removed = events.index(("remove", f"/Import/{MANIFEST}"))
    renames = [i for i, event in enumerate(events) if event[0] == "posix_rename" and event[2] == f"/Import/{FILE}"]
    assert len(renames) == 2 and renames[0] < removed < renames[1]


def test_server_without_posix_rename_removes_then_renames(server, connect, datamodel):
    local, manifest = datamodel
    server.state.posix_rename = False
    connect(server)
    sftp_delivery.deliver(local, _destination(), manifest, None)
    sftp_delivery.deliver(local, _destination(), manifest, None)  # the final names exist now
    _assert_delivered(server, local, manifest)
    events = server.state.events
    final = f"/Import/{FILE}"
    last_rename = max(i for i, event in enumerate(events) if event[0] == "rename" and event[2] == final)
    assert events[last_rename - 1] == ("remove", final)


def test_manifest_is_uploaded_last_and_directly_after_the_complete_file(server, connect, datamodel):
    local, manifest = datamodel
    connect(server)
    sftp_delivery.deliver(local, _destination(), manifest, None)
    events = server.state.events
    written = [event[1] for event in events if event[:1] == ("open",) and event[2] == "w"]
    data_temp, manifest_path = written
    # The file goes through a hidden temporary name no File Drop pattern for it can match ...
    assert Path(data_temp).name.startswith(".upload-") and data_temp.endswith(".partial")
    assert FILE not in data_temp
    file_renamed = events.index(("posix_rename", data_temp, f"/Import/{FILE}"))
    assert events.index(("close", data_temp)) < events.index(("open", data_temp, "r")) < file_renamed
    # ... and the manifest is uploaded under its final name (File Drop fires on uploads, not
    # renames), only once the file is complete under its final name.
    assert manifest_path == f"/Import/{MANIFEST}"
    assert file_renamed < events.index(("open", manifest_path, "w")) < events.index(("close", manifest_path))
    assert not any(event[0] in ("rename", "posix_rename") and event[2].endswith(MANIFEST) for event in events)


@pytest.mark.parametrize("refusal", ["permission", "failure"])
def test_reading_back_refused_falls_back_to_size(server, connect, datamodel, refusal):
    local, manifest = datamodel
    server.state.deny_read = refusal
    connect(server)
    result = sftp_delivery.deliver(local, _destination(), manifest, None)
    assert result["verified"] == "size"
    _assert_delivered(server, local, manifest)


def test_permission_denied_fails_at_once_and_leaves_nothing(server, connect, datamodel, caplog):
    local, manifest = datamodel
    server.state.deny_write = True
    connect(server)
    with caplog.at_level(logging.WARNING, logger="clv_jobs"), pytest.raises(DeliveryError) as failure:
        sftp_delivery.deliver(local, _destination(), manifest, None)
    message = str(failure.value)
    assert "permission denied by the server while uploading" in message and "not retried" in message
    assert f"account {ACCOUNT}" in message and "/Import" in message
    assert server.state.connections == 1 and "retrying" not in caplog.text
    assert server.files() == []


def test_missing_remote_folder_fails_at_once(server, connect, datamodel):
    local, manifest = datamodel
    connect(server)
    with pytest.raises(DeliveryError, match="the remote folder /Missing does not exist"):
        sftp_delivery.deliver(local, _destination(path="/Missing"), manifest, None)
    assert server.state.connections == 1


def test_unknown_host_name_fails_at_once(server, connect, datamodel):
    local, manifest = datamodel
    host = "clv-sftp-test.invalid"
    try:
        socket.getaddrinfo(host, 22)
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_AGAIN:
            pytest.skip("this machine's resolver answers 'try again' (no DNS): that is retried, on purpose")
    connect(server, host=host)
    started = time.monotonic()
    with pytest.raises(DeliveryError, match=f"host '{host}' cannot be resolved.*not retried"):
        sftp_delivery.deliver(local, _destination(), manifest, None)
    assert time.monotonic() - started < 2


def test_local_file_not_matching_its_manifest_is_not_delivered(server, connect, datamodel):
    local, manifest = datamodel
    connect(server)
    with pytest.raises(DeliveryError, match="differs from its manifest"):
        sftp_delivery.deliver(local, _destination(), {**manifest, "sha256": "0" * 64}, None)
    assert server.state.connections == 0


def test_stale_temporary_files_of_killed_deliveries_are_swept(server, connect, datamodel):
    local, manifest = datamodel
    folder = server.root / "Import"
    stale, fresh = folder / f".upload-{'a' * 32}.partial", folder / f".upload-{'b' * 32}.partial"
    other = folder / ".someone-elses-file"
    for path in (stale, fresh, other):
        path.write_bytes(b"partial")
    old = time.time() - sftp_delivery.STALE_TEMPORARY_SECONDS - 60
    os.utime(stale, (old, old))
    connect(server)
    sftp_delivery.deliver(local, _destination(), manifest, None)
    assert server.files() == sorted([fresh.name, other.name, FILE, MANIFEST])
