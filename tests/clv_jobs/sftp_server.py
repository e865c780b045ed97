"""A real SFTP server on loopback for the sFTP delivery tests.

asyncssh serves 127.0.0.1:<port> from its own event loop in its own thread; the SFTP root is
a temporary folder (``chroot``). The server records what clients do (opens, writes, renames,
removes, connections and authentication attempts) and can misbehave on request: drop the
connection in the middle of the first upload, refuse reading files back, refuse writing,
or lack the ``posix-rename@openssh.com`` extension.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path

import asyncssh

LOGIN = "clv"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerState:
    """What the server saw, and how it should misbehave (read by the server thread)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        #: ("open", path, "r"|"w"), ("close", path), ("rename"|"posix_rename", old, new), ("remove", path),
        #: ("dropped", path); renames are recorded when asked, removals once done.
        self.events: list[tuple[str, ...]] = []
        self.connections = 0
        self.auth_attempts = 0
        #: Abort the connection once this many bytes were written, on the first upload only.
        self.drop_after_bytes: int | None = None
        self.dropped = False
        #: Refuse opening files for reading: None, "permission" (denied) or "failure" (a bare failure).
        self.deny_read: str | None = None
        self.deny_write = False
        self.posix_rename = True

    def record(self, *event: str) -> None:
        with self.lock:
            self.events.append(event)


class _SSHServer(asyncssh.SSHServer):
    def __init__(self, server: SftpTestServer) -> None:
        self.server = server
        self.state = server.state

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        with self.state.lock:
            self.state.connections += 1
        self.server.live_connections.append(conn)

    def begin_auth(self, username: str) -> bool:
        return True  # authentication is required

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        with self.state.lock:
            self.state.auth_attempts += 1
        return username == LOGIN and key.public_data in self.server.authorized_keys

    def password_auth_supported(self) -> bool:
        return self.server.password is not None

    def validate_password(self, username: str, password: str) -> bool:
        with self.state.lock:
            self.state.auth_attempts += 1
        return username == LOGIN and password == self.server.password


class RecordingSFTPServer(asyncssh.SFTPServer):
    """The stock SFTP server, rooted in a folder, recording and misbehaving as the state says."""

    def __init__(self, chan: asyncssh.SSHServerChannel, server: SftpTestServer) -> None:
        super().__init__(chan, chroot=str(server.root))
        self.state = server.state
        self.paths: dict[int, str] = {}
        self.written = 0

    def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs):
        writing = bool(pflags & (asyncssh.FXF_WRITE | asyncssh.FXF_APPEND | asyncssh.FXF_CREAT))
        if writing and self.state.deny_write:
            raise asyncssh.SFTPPermissionDenied("this drop is read-only (test)")
        if not writing and self.state.deny_read == "permission":
            raise asyncssh.SFTPPermissionDenied("reading back is not allowed on this drop (test)")
        if not writing and self.state.deny_read == "failure":
            raise asyncssh.SFTPFailure("cannot read here (test)")
        handle = super().open(path, pflags, attrs)
        self.paths[id(handle)] = path.decode()
        self.state.record("open", path.decode(), "w" if writing else "r")
        return handle

    def close(self, file_obj):
        self.state.record("close", self.paths.pop(id(file_obj), "?"))
        return super().close(file_obj)

    def write(self, file_obj, offset: int, data: bytes):
        if self.state.drop_after_bytes is not None and not self.state.dropped:
            self.written += len(data)
            if self.written >= self.state.drop_after_bytes:
                self.state.dropped = True
                super().write(file_obj, offset, data)  # a partial file stays on disk
                self.state.record("dropped", self.paths.get(id(file_obj), "?"))
                self.channel.get_connection().abort()
                raise asyncssh.SFTPConnectionLost("connection dropped by the test server")
        return super().write(file_obj, offset, data)

    def rename(self, oldpath: bytes, newpath: bytes):
        self.state.record("rename", oldpath.decode(), newpath.decode())
        return super().rename(oldpath, newpath)

    def posix_rename(self, oldpath: bytes, newpath: bytes):
        if not self.state.posix_rename:
            raise asyncssh.SFTPOpUnsupported("posix-rename is not supported here (test)")
        self.state.record("posix_rename", oldpath.decode(), newpath.decode())
        return super().posix_rename(oldpath, newpath)

    def remove(self, path: bytes):
        super().remove(path)
        self.state.record("remove", path.decode())  # only removals that happened


class SftpTestServer:
    """An SFTP server on 127.0.0.1; ``start()`` (or ``start_later(s)``), always ``stop()``."""

    def __init__(self, root: Path, host_key: asyncssh.SSHKey, authorized_keys: list[asyncssh.SSHKey],
                 password: str | None = None, port: int | None = None) -> None:
        self.root = Path(root)
        self.host_key = host_key
        self.authorized_keys = {key.public_data for key in authorized_keys}
        self.password = password
        self.port = port or free_port()
        self.state = ServerState()
        self.live_connections: list[asyncssh.SSHServerConnection] = []
        self._acceptor = None
        self._timer: threading.Timer | None = None
        self.start_error: BaseException | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sftp-test-server", daemon=True)
        self._thread.start()

    async def _listen(self) -> None:
        self._acceptor = await asyncssh.listen(
            "127.0.0.1", self.port, server_host_keys=[self.host_key],
            server_factory=lambda: _SSHServer(self),
            sftp_factory=lambda chan: RecordingSFTPServer(chan, self),
            allow_scp=False, reuse_address=True,
        )

    def start(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        except BaseException as exc:
            self.start_error = exc
            raise

    def start_later(self, delay: float) -> None:
        """Start listening ``delay`` seconds from now (clients meanwhile get "connection refused")."""
        self._timer = threading.Timer(delay, self.start)
        self._timer.daemon = True
        self._timer.start()

    async def _close(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
        for conn in self.live_connections:
            conn.close()
        for conn in self.live_connections:
            await conn.wait_closed()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer.join(10)
        if self._loop.is_closed():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def known_hosts_line(self) -> str:
        return f"[127.0.0.1]:{self.port} {self.host_key.export_public_key('openssh').decode().split()[0]} " \
               f"{self.host_key.export_public_key('openssh').decode().split()[1]}\n"

    def files(self, folder: str = "Import") -> list[str]:
        """Every name in ``folder`` under the root, hidden ones included, sorted."""
        return sorted(path.name for path in (self.root / folder).iterdir())
