"""Deliver to an sFTP drop, e.g. Salesforce Marketing Cloud (SFMC) Enhanced FTP ``/Import``.

One try (:func:`_deliver_once`), retried by :func:`clv_jobs.delivery.with_retries`:

1. connect with paramiko; the server's host key is always verified (:class:`paramiko.RejectPolicy`
   against the key pinned in the connection, or a ``known_hosts`` file), and only the
   connection's own key or password is offered (no agent, no ``~/.ssh`` keys);
2. upload the file under a hidden temporary name in the destination folder,
   ``.upload-<uuid>.partial``. SFMC File Drop automations fire on uploads matched by a file
   name pattern ("begins with", "ends with", "contains"), so the temporary name starts with
   a dot and contains no part of the final name: no pattern written for the Datamodel or its
   manifest can match it;
3. check its size (``stat``) and its sha256 by reading it back: when the server does not let
   us read (a write-only drop answers "permission denied" or a bare "failure"), the size alone
   is checked and the result says ``"verified": "size"``;
4. rename it to its final name, replacing an earlier delivery of the same file
   (``posix-rename@openssh.com`` where the server has it, else remove then rename), and
   ``stat`` the final name;
5. upload ``<file>.manifest.json`` last, directly under its final name: SFMC File Drop
   fires on uploads, not on renames, so the manifest (small, written in one request) is the
   trigger, and the file it describes is already complete under its final name.

A manifest left by an earlier delivery of the same file name is removed before the file is
replaced, so a visible manifest always describes the file next to it. A failed try removes
its temporary file; when the connection is gone that is impossible, so the next try removes
the temporary files of the earlier ones, and every delivery removes hidden temporary files
of ours that nobody has written to for :data:`STALE_TEMPORARY_SECONDS` (a killed worker's).
Nothing partial ever has the final name.

Credentials come only from the Airflow connection (``conn_id``; Airflow's SFTP/SSH
conventions): ``login``, ``password``, and the extras ``private_key`` (OpenSSH or PEM text)
or ``key_file`` (a path), ``private_key_passphrase``, ``host_key`` (``ssh-ed25519 AAAA…``,
``ssh-rsa AAAA…``, or only the base64 part), ``known_hosts`` (a file), ``conn_timeout`` and
``disabled_algorithms``. ``no_host_key_check`` and ``allow_host_key_change`` are refused.
Without ``host_key`` or ``known_hosts``, ``~/.ssh/known_hosts`` is used. Messages name the
account, connection id, login, host and remote path, never a password, key or email.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import io
import logging
import posixpath
import re
import socket
import stat
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import paramiko

from clv_jobs import delivery as _delivery
from clv_jobs.connections import Connection, Resolver, lookup_connection
from clv_jobs.datamodel import file_digest
from clv_jobs.delivery import DeliveryError, TransientDeliveryError, manifest_bytes, manifest_name
from clv_jobs.errors import ConfigError
from clv_jobs.settings import SftpDestination

log = logging.getLogger("clv_jobs")

DEFAULT_PORT = 22
#: TCP connect, SSH banner and authentication timeouts, and opening the SFTP channel.
CONNECT_TIMEOUT_SECONDS = 15.0
#: Longest wait for any one SFTP reply (a stalled server fails instead of hanging the task).
IO_TIMEOUT_SECONDS = 60.0
#: Hidden temporary files of ours that nobody wrote to for this long are removed.
STALE_TEMPORARY_SECONDS = 6 * 3600
#: Chunk size for reading a delivered file back, and read requests in flight (of 32 KiB each:
#: bounded, so reading back a multi-GB Datamodel does not buffer it in memory).
READ_CHUNK = 1 << 20
PREFETCH_REQUESTS = 64

_TEMPORARY = re.compile(r"^\.upload-[0-9a-f]{32}\.partial$")
_REFUSED_EXTRAS = ("no_host_key_check", "allow_host_key_change")
_CONNECTION_ERRNOS = frozenset(
    getattr(errno, name) for name in ("ECONNRESET", "ECONNREFUSED", "ECONNABORTED", "EPIPE", "ETIMEDOUT",
                                      "EHOSTUNREACH", "ENETUNREACH", "ENETDOWN", "ENOTCONN", "ESHUTDOWN")
    if hasattr(errno, name)
)


def _truthy(value: object) -> bool:
    return value is True or str(value).strip().lower() in ("true", "1", "yes", "on")


def _temporary_name(folder: str) -> str:
    return posixpath.join(folder, f".upload-{uuid.uuid4().hex}.partial")


class _Target:
    """Everything one try needs: where to connect, as whom, and which host keys to trust."""

    def __init__(self, conn: Connection, destination: SftpDestination) -> None:
        extra = conn.extra or {}
        where = f"connection {conn.conn_id!r} ({conn.origin or 'unknown origin'})"
        for name in _REFUSED_EXTRAS:
            if _truthy(extra.get(name)):
                raise ConfigError(
                    f"{where}: extra {name!r} is set, but sFTP host keys are always verified: remove it and pin "
                    "the server's key in the 'host_key' extra (e.g. from `ssh-keyscan -t ed25519 HOST`) or "
                    "name a 'known_hosts' file"
                )
        if conn.conn_type and conn.conn_type not in ("sftp", "ssh"):
            raise ConfigError(f"{where}: conn_type is {conn.conn_type!r}, expected 'sftp' (or 'ssh')")
        self.conn_id = conn.conn_id
        self.host = destination.host or conn.host
        if not self.host:
            raise ConfigError(f"{where}: no host (set it in the connection or the destination's 'host')")
        self.port = int(destination.port or conn.port or DEFAULT_PORT)
        self.login = conn.login
        if not self.login:
            raise ConfigError(f"{where}: no login (the sFTP user name)")
        self.password = conn.password
        self.pkey = _private_key(extra, where)
        if self.pkey is None and self.password is None:
            raise ConfigError(f"{where}: neither a password nor a 'private_key' / 'key_file' extra")
        self.pinned = _pinned_host_key(str(extra["host_key"]), where) if extra.get("host_key") else None
        known_hosts = extra.get("known_hosts")
        self.known_hosts = Path(str(known_hosts)).expanduser() if known_hosts else None
        if self.known_hosts is not None and not self.known_hosts.is_file():
            raise ConfigError(f"{where}: extra 'known_hosts' names {str(self.known_hosts)!r}, which is not a file")
        try:
            self.timeout = float(extra.get("conn_timeout") or CONNECT_TIMEOUT_SECONDS)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: extra 'conn_timeout' is not a number of seconds") from None
        self.disabled_algorithms = extra.get("disabled_algorithms") or None
        if self.disabled_algorithms is not None and not isinstance(self.disabled_algorithms, dict):
            raise ConfigError(f"{where}: extra 'disabled_algorithms' must be a JSON object")

    @property
    def host_key_name(self) -> str:
        """The name paramiko looks up in its host keys (``[host]:port`` off port 22)."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def connect(self) -> paramiko.SSHClient:
        """An authenticated client, the host key verified; the caller closes it."""
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        if self.pinned is not None:
            # Only the pinned key: a known_hosts entry cannot override it.
            client.get_host_keys().add(self.host_key_name, self.pinned.get_name(), self.pinned)
        elif self.known_hosts is not None:
            # Read-only ("system") host keys: never written back.
            client.load_system_host_keys(str(self.known_hosts))
        else:
            client.load_system_host_keys()  # ~/.ssh/known_hosts, if there is one
        try:
            client.connect(
                self.host, port=self.port, username=self.login, password=self.password, pkey=self.pkey,
                timeout=self.timeout, banner_timeout=self.timeout, auth_timeout=self.timeout,
                channel_timeout=self.timeout, look_for_keys=False, allow_agent=False,
                disabled_algorithms=self.disabled_algorithms,
            )
        except BaseException:
            client.close()
            raise
        return client

    def auth_methods(self) -> str:
        """Which credentials are offered, for messages (never the credentials themselves)."""
        methods = [name for name, value in (("private key", self.pkey), ("password", self.password)) if value]
        return " and ".join(methods)


def _private_key(extra: dict, where: str) -> paramiko.PKey | None:
    """The connection's private key (``private_key`` text or ``key_file``), or None."""
    passphrase = extra.get("private_key_passphrase") or None
    text, key_file = extra.get("private_key"), extra.get("key_file")
    if not text and not key_file:
        return None
    if key_file:
        path = Path(str(key_file)).expanduser()
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError):
            raise ConfigError(f"{where}: extra 'key_file' names {str(path)!r}, which is not a readable key file") \
                from None
        what = f"extra 'key_file' ({str(path)!r})"
    else:
        what = "extra 'private_key'"
    text = str(text).strip()
    if "\n" not in text and "\\n" in text:  # pasted with escaped newlines
        text = text.replace("\\n", "\n")
    for key_class in _key_classes(text):
        try:
            return key_class.from_private_key(io.StringIO(text + "\n"), password=passphrase)
        except paramiko.PasswordRequiredException:
            raise ConfigError(f"{where}: the private key is encrypted: set the 'private_key_passphrase' extra") \
                from None
        except Exception:  # SSHException, ValueError…: try the next type
            continue
    raise ConfigError(f"{where}: {what} is not an Ed25519, ECDSA or RSA private key (OpenSSH or PEM), or its "
                      "passphrase is wrong")


def _key_classes(text: str) -> list[type[paramiko.PKey]]:
    """Key classes to try on private key text, the likely one first.

    Decrypting an OpenSSH key runs its bcrypt KDF (about a second): the key type is read from
    the unencrypted header so that a passphrase-protected key is decrypted once, not three times.
    """
    classes: list[type[paramiko.PKey]] = [paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey]
    key_type = ""
    if "BEGIN RSA PRIVATE KEY" in text:
        key_type = "ssh-rsa"
    elif "BEGIN EC PRIVATE KEY" in text:
        key_type = "ecdsa-sha2-nistp256"
    elif "BEGIN OPENSSH PRIVATE KEY" in text:
        try:
            blob = base64.b64decode("".join(text.split("-----")[2].split()))
            header = paramiko.Message(blob[len(b"openssh-key-v1\0"):])
            header.get_string(), header.get_string(), header.get_string(), header.get_int()  # cipher, kdf, #keys
            key_type = paramiko.Message(header.get_binary()).get_text()
        except Exception:  # not parseable here: try every class
            pass
    return sorted(classes, key=lambda key_class: key_type not in key_class.identifiers())


def _pinned_host_key(text: str, where: str) -> paramiko.PKey:
    """Parse ``host_key``: ``TYPE BASE64 [comment]``, a ``known_hosts`` line, or only ``BASE64``."""
    tokens = text.split()
    named, encoded = None, None
    for index, token in enumerate(tokens[:-1]):
        if re.match(r"^(ssh-|ecdsa-sha2-)", token):
            named, encoded = token, tokens[index + 1]
            break
    else:
        if len(tokens) == 1:
            encoded = tokens[0]
    bad = (f"{where}: extra 'host_key' is not a public key ('ssh-ed25519 AAAA…', 'ssh-rsa AAAA…', or only "
           "the base64 part, as printed by `ssh-keyscan HOST`)")
    if encoded is None:
        raise ConfigError(bad)
    try:
        blob = base64.b64decode(encoded, validate=True)
        key_type = paramiko.Message(blob).get_text()
        key = paramiko.PKey.from_type_string(key_type, blob)
    except Exception:  # binascii.Error, UnknownKeyType, struct errors from a garbled blob
        raise ConfigError(bad) from None
    if named is not None and named != key_type:
        raise ConfigError(f"{where}: extra 'host_key' says {named!r} but holds a {key_type!r} key")
    return key


def _unknown_host(exc: BaseException) -> bool:
    return isinstance(exc, paramiko.SSHException) and "not found in known_hosts" in str(exc)


def is_transient(exc: BaseException) -> bool:
    """Whether a fault is worth another try: the connection broke, not the credentials or paths.

    Parameters
    ----------
    exc : BaseException
        What one try raised.

    Returns
    -------
    bool
        True for connection refused/reset/closed, EOF, timeouts and SSH faults other than
        authentication and host keys; False for authentication, host keys, permission
        denied, missing paths, unresolvable host names and anything unknown.
    """
    if isinstance(exc, TransientDeliveryError):
        return True
    if isinstance(exc, (paramiko.AuthenticationException, paramiko.BadHostKeyException, paramiko.IncompatiblePeer)):
        return False
    if isinstance(exc, socket.gaierror):
        return exc.errno == socket.EAI_AGAIN  # "temporary failure in name resolution"
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        return True  # connection refused / host unreachable on every address
    if isinstance(exc, (EOFError, TimeoutError, ConnectionError)):
        return True
    if isinstance(exc, paramiko.SSHException):
        return not _unknown_host(exc)
    if isinstance(exc, OSError):
        return exc.errno in _CONNECTION_ERRNOS or str(exc) == "Socket is closed"
    return False


def _explain(exc: BaseException, target: _Target, step: str) -> str:
    """The reason a try failed for good, in words an operator can act on."""
    if isinstance(exc, paramiko.BadHostKeyException):
        return (f"host key verification failed: the server presented {exc.key.get_name()} {exc.key.fingerprint}, "
                f"but connection {target.conn_id!r} pins {exc.expected_key.get_name()} "
                f"{exc.expected_key.fingerprint} in its host_key; refused. If the server's key changed on purpose, "
                "update the connection's host_key")
    if _unknown_host(exc):
        source = f"known_hosts file {str(target.known_hosts)!r}" if target.known_hosts else "~/.ssh/known_hosts"
        return (f"host key verification failed: the server's host key is not in {source}; refused. Pin it in "
                f"connection {target.conn_id!r}'s host_key extra (e.g. from `ssh-keyscan -p {target.port} "
                f"{target.host}`, checked with the provider)")
    if isinstance(exc, paramiko.AuthenticationException):
        return (f"authentication failed for login {target.login!r} with the connection's "
                f"{target.auth_methods()} ({type(exc).__name__}): check connection {target.conn_id!r}")
    if isinstance(exc, socket.gaierror):
        return f"host {target.host!r} cannot be resolved ({exc.strerror or exc})"
    if isinstance(exc, OSError) and exc.errno == errno.EACCES:
        return f"permission denied by the server while {step}"
    if isinstance(exc, OSError) and exc.errno == errno.ENOENT:
        return f"no such file or folder on the server while {step}"
    return f"{type(exc).__name__}: {exc} while {step}"


def _remove_quietly(sftp: paramiko.SFTPClient, path: str) -> bool:
    """Remove ``path`` if possible; True when it is gone (removed now or already absent)."""
    try:
        sftp.remove(path)
    except FileNotFoundError:
        return True
    except Exception:  # best effort: the connection may be gone too
        return False
    return True


def _rename_over(sftp: paramiko.SFTPClient, source: str, final: str) -> None:
    """Rename ``source`` to ``final``, replacing ``final`` if it exists."""
    try:
        sftp.posix_rename(source, final)  # atomic replace: readers see the old file or the new one
        return
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.ENOENT) or is_transient(exc):
            raise
        # Anything else: the server lacks the posix-rename extension ("operation unsupported" or
        # a bare "failure"). Plain SFTP rename refuses to replace an existing file, so remove it
        # first. Cost: between the two calls there is no file under the final name (a reader sees
        # it missing, never partial), and if the rename then fails the earlier delivery is gone
        # until the next try puts it back.
    _remove_quietly(sftp, final)
    sftp.rename(source, final)


def _remote_sha256(sftp: paramiko.SFTPClient, path: str, size: int, describe: str) -> str | None:
    """sha256 of a remote file read back, or None when the server will not let us read it.

    Drops such as SFMC Enhanced FTP may refuse reading (permission denied, or a bare
    "failure"): the size checked by ``stat`` then stands alone, and SSH's own integrity
    checks guard the bytes in transit. A broken connection is still raised (and retried).
    """
    digest = hashlib.sha256()
    try:
        with sftp.open(path, "rb") as handle:
            handle.prefetch(size, max_concurrent_requests=PREFETCH_REQUESTS)
            while chunk := handle.read(READ_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        if is_transient(exc):
            raise
        log.info("%s: cannot read %s back (%s): verified by size only", describe, path, type(exc).__name__)
        return None
    return digest.hexdigest()


class _Attempt:
    """One delivery, tried as often as :func:`with_retries` says; remembers temporary names."""

    def __init__(self, target: _Target, local_file: Path, manifest: dict, folder: str, describe: str) -> None:
        self.target = target
        self.local_file = local_file
        self.manifest = manifest
        self.folder = folder
        self.describe = describe
        self.final = posixpath.join(folder, local_file.name)
        self.manifest_final = posixpath.join(folder, manifest_name(local_file.name))
        #: Temporary files of earlier tries that could not be removed (connection lost).
        self.leftovers: set[str] = set()
        self.step = "connecting"

    def __call__(self) -> dict:
        self.step = "connecting"
        client = None
        try:
            client = self.target.connect()
            self.step = "opening the SFTP session"
            sftp = client.open_sftp()
            sftp.get_channel().settimeout(IO_TIMEOUT_SECONDS)
            return self._deliver(sftp)
        except Exception as exc:
            self._raise_if_permanent(exc)
            raise  # transient: with_retries tries again
        finally:
            if client is not None:
                client.close()

    def _raise_if_permanent(self, exc: Exception) -> None:
        """Turn a permanent fault into one clear DeliveryError; let a transient one through."""
        if isinstance(exc, DeliveryError) or is_transient(exc):
            return
        raise DeliveryError(f"{self.describe}: {_explain(exc, self.target, self.step)} (not retried)") from exc

    def _deliver(self, sftp: paramiko.SFTPClient) -> dict:
        for path in sorted(self.leftovers):
            if _remove_quietly(sftp, path):
                self.leftovers.discard(path)
        self.step = f"checking the folder {self.folder}"
        try:
            if not stat.S_ISDIR(sftp.stat(self.folder).st_mode or stat.S_IFDIR):
                raise DeliveryError(f"{self.describe}: {self.folder} on the server is not a folder")
        except FileNotFoundError:
            raise DeliveryError(f"{self.describe}: the remote folder {self.folder} does not exist (create it, "
                                "or fix the destination's path)") from None
        except PermissionError:
            pass  # some drops may not let us stat the folder; the upload will tell

        with open(self.local_file, "rb") as source:
            verified = self._put(sftp, source, self.manifest["bytes"], self.manifest["sha256"], self.final,
                                 before_rename=lambda: _remove_quietly(sftp, self.manifest_final))
        body = manifest_bytes(self.manifest)
        self.step = f"uploading {posixpath.basename(self.manifest_final)}"
        sftp.putfo(io.BytesIO(body), self.manifest_final, file_size=len(body), confirm=False)
        arrived = sftp.stat(self.manifest_final).st_size
        if arrived != len(body):
            raise TransientDeliveryError(f"{self.describe}: {self.manifest_final} has {arrived} bytes after the "
                                         f"upload, expected {len(body)}")
        self._sweep_stale(sftp)
        return {"destination": "sftp", "host": self.target.host, "port": self.target.port, "path": self.final,
                "manifest": self.manifest_final, "verified": verified}

    def _put(self, sftp: paramiko.SFTPClient, source, size: int, sha256: str, final: str,
             before_rename: Callable[[], object] | None = None) -> str:
        """Upload ``source`` to a temporary name, verify it, rename it to ``final``; how it was verified."""
        temporary = _temporary_name(self.folder)
        self.leftovers.add(temporary)
        try:
            self.step = f"uploading {posixpath.basename(final)} as {temporary}"
            sftp.putfo(source, temporary, file_size=size, confirm=False)
            self.step = f"verifying {temporary}"
            arrived = sftp.stat(temporary).st_size
            if arrived != size:
                raise TransientDeliveryError(f"{self.describe}: {temporary} has {arrived} bytes after the "
                                             f"upload, expected {size}")
            remote_sha256 = _remote_sha256(sftp, temporary, size, self.describe)
            if remote_sha256 is not None and remote_sha256 != sha256:
                raise TransientDeliveryError(f"{self.describe}: {temporary} differs from the local file "
                                             "after the upload (sha256 mismatch)")
            if before_rename is not None:
                before_rename()
            self.step = f"renaming {temporary} to {final}"
            _rename_over(sftp, temporary, final)
            self.leftovers.discard(temporary)
            self.step = f"checking {final}"
            arrived = sftp.stat(final).st_size
            if arrived != size:
                raise TransientDeliveryError(f"{self.describe}: {final} has {arrived} bytes after the rename, "
                                             f"expected {size}")
        except BaseException:
            if temporary in self.leftovers and _remove_quietly(sftp, temporary):
                self.leftovers.discard(temporary)
            raise
        return "sha256" if remote_sha256 is not None else "size"

    def _sweep_stale(self, sftp: paramiko.SFTPClient) -> None:
        """Remove our hidden temporary files that nobody wrote to for a long time (best effort)."""
        try:
            entries = sftp.listdir_attr(self.folder)
        except Exception:
            return
        cutoff = time.time() - STALE_TEMPORARY_SECONDS
        for entry in entries:
            if _TEMPORARY.match(entry.filename) and entry.st_mtime is not None and entry.st_mtime < cutoff:
                _remove_quietly(sftp, posixpath.join(self.folder, entry.filename))


def deliver(local_file: Path, destination: SftpDestination, manifest: dict, resolver: Resolver | None = None) -> dict:
    """Upload the file, verify it, then upload its manifest, over sFTP (see the module docstring).

    Parameters
    ----------
    local_file : Path
        The Datamodel file; its name is the remote name.
    destination : SftpDestination
        Connection id, remote folder, and optional host/port overriding the connection's.
    manifest : dict
        The run's manifest (``account``, ``bytes``, ``sha256``, …), delivered last.
    resolver : callable, optional
        Connection lookup of the caller (Airflow's), before the environment.

    Returns
    -------
    dict
        ``destination`` ("sftp"), ``host``, ``port``, ``path`` (remote file), ``manifest``
        (remote manifest) and ``verified`` ("sha256", or "size" where the server does not let
        us read files back). No secrets.

    Raises
    ------
    ConfigError
        The connection is missing or unusable (no login, no credentials, a host key check
        switched off, an unreadable key).
    DeliveryError
        The delivery failed for good; no partial or temporary file is left visible.
    """
    local_file = Path(local_file)
    account = manifest.get("account", "?")
    conn = lookup_connection(destination.conn_id, resolver)
    target = _Target(conn, destination)
    folder = destination.path.rstrip("/") or "/"
    describe = (f"account {account}, sftp {target.login}@{target.host}:{target.port} folder {folder} "
                f"(connection {target.conn_id!r})")
    local = file_digest(local_file)
    if (local["bytes"], local["sha256"]) != (manifest.get("bytes"), manifest.get("sha256")):
        raise DeliveryError(f"{describe}: {local_file.name} differs from its manifest (bytes or sha256): "
                            "nothing was delivered")
    attempt = _Attempt(target, local_file, manifest, folder, describe)
    result = _delivery.with_retries(attempt, describe, is_transient, attempts=_delivery.ATTEMPTS,
                                    first_delay=_delivery.FIRST_DELAY_SECONDS)
    log.info("%s: delivered %s and its manifest (verified by %s)", describe, local_file.name, result["verified"])
    return result
