"""Airflow-style connections without Airflow: look one up by id and parse it.

Sources and destinations name a connection id (``conn_id``); credentials never live in the
account YAML. A connection is looked up, in order, through a resolver the caller provides
(in an Airflow task, Airflow's own lookup: environment, secrets backend, metadata
database), then ``$AIRFLOW_CONN_<CONN_ID>`` (Airflow's convention), then
``$CLV_CONN_<CONN_ID>`` (``<CONN_ID>`` upper-cased). Values are Airflow's URI form
(``sftp://user:password@host:22?key_file=…``, percent-encoded, extras as query parameters
or JSON in ``__extra__``) or its JSON form (``{"conn_type": …, "host": …, "login": …,
"password": …, "port": …, "schema": …, "extra": {…}}``).

Nothing here logs a connection, and a :class:`Connection`'s ``repr`` hides its password.
"""

from __future__ import annotations

import dataclasses
import json
import os
import urllib.parse
from collections.abc import Callable

from clv_jobs.errors import ConfigError

#: Where a connection id is looked up after the resolver, in this order.
CONNECTION_ENV_PREFIXES = ("AIRFLOW_CONN_", "CLV_CONN_")

Resolver = Callable[[str], str | None]


@dataclasses.dataclass(frozen=True)
class Connection:
    """The fields of an Airflow connection that the jobs use."""

    conn_id: str
    conn_type: str
    host: str | None = None
    port: int | None = None
    login: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    schema: str | None = None
    extra: dict = dataclasses.field(default_factory=dict, repr=False)
    #: Where it was found (for messages): "the resolver" or "$AIRFLOW_CONN_X".
    origin: str = ""


def _extra(value: object, conn_id: str, where: str) -> dict:
    if value in (None, ""):
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise ConfigError(f"connection {conn_id!r} ({where}): 'extra' is not a JSON object") from None
    if not isinstance(value, dict):
        raise ConfigError(f"connection {conn_id!r} ({where}): 'extra' is not a JSON object")
    return value


def parse_connection(conn_id: str, value: str, where: str = "") -> Connection:
    """Parse Airflow's URI or JSON form of a connection.

    Raises
    ------
    ConfigError
        Neither form; the message never quotes the value (it may hold a password).
    """
    text = value.strip()
    unquote = urllib.parse.unquote
    if text.startswith("{"):
        try:
            fields = json.loads(text)
        except ValueError:
            raise ConfigError(f"connection {conn_id!r} ({where}) is not valid JSON") from None
        if not isinstance(fields, dict):
            raise ConfigError(f"connection {conn_id!r} ({where}) is not a JSON object")
        port = fields.get("port")
        try:
            port = int(port) if port not in (None, "") else None
        except (TypeError, ValueError):
            raise ConfigError(f"connection {conn_id!r} ({where}): 'port' is not a number") from None
        return Connection(
            conn_id=conn_id,
            conn_type=str(fields.get("conn_type") or "").lower().replace("-", "_"),
            host=fields.get("host") or None,
            port=port,
            login=fields.get("login") or None,
            password=fields.get("password") if fields.get("password") not in (None, "") else None,
            schema=fields.get("schema") or None,
            extra=_extra(fields.get("extra"), conn_id, where),
            origin=where,
        )
    if "://" not in text:
        raise ConfigError(
            f"connection {conn_id!r} ({where}) is neither an Airflow connection URI "
            "(type://login:password@host:port/schema?extra=…) nor its JSON form"
        )
    parts = urllib.parse.urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"connection {conn_id!r} ({where}): the URI has an invalid port") from None
    query = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    extra = _extra(query["__extra__"], conn_id, where) if "__extra__" in query else query
    # Not parts.hostname: it lower-cases, and a socket folder (%2Fvar%2Frun…) is a path.
    host = parts.netloc.rpartition("@")[2]
    host = host[1:host.find("]")] if host.startswith("[") else host.partition(":")[0]
    return Connection(
        conn_id=conn_id,
        conn_type=parts.scheme.lower().replace("-", "_"),
        host=unquote(host) or None,
        port=port,
        login=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        schema=unquote(parts.path[1:]) if parts.path[1:] else None,
        extra=extra,
        origin=where,
    )


def lookup_raw(conn_id: str, resolver: Resolver | None = None) -> tuple[str, str]:
    """The connection's raw value and where it was found; ConfigError if nowhere."""
    looked = []
    if resolver is not None:
        looked.append("the resolver")
        try:
            value = resolver(conn_id)
        except Exception as exc:  # the resolver is the caller's (e.g. Airflow's lookup)
            raise ConfigError(f"connection {conn_id!r}: the resolver failed ({type(exc).__name__})") from None
        if value:
            return str(value), "the resolver"
    for prefix in CONNECTION_ENV_PREFIXES:
        name = prefix + conn_id.upper()
        looked.append(f"${name}")
        value = os.environ.get(name, "")
        if value.strip():
            return value, f"${name}"
    raise ConfigError(
        f"connection {conn_id!r} not found (looked in {', '.join(looked)}): define it in Airflow or set "
        f"${CONNECTION_ENV_PREFIXES[0]}{conn_id.upper()} to its URI"
    )


def lookup_connection(conn_id: str, resolver: Resolver | None = None) -> Connection:
    """Find and parse a connection (see the module docstring for the order)."""
    value, where = lookup_raw(conn_id, resolver)
    return parse_connection(conn_id, value, where)
