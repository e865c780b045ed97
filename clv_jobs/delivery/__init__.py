"""Deliver a published Datamodel to the account's destinations (SPEC "Delivery").

Every destination follows the same contract, in its own module:

1. upload the file under a temporary name, then rename it to its final name (S3: put the
   object, whose PUT is atomic), so no reader ever sees a partial file;
2. verify what arrived (size, and sha256 where the server lets us read it back);
3. upload ``<file>.manifest.json`` last: automations such as SFMC File Drop fire on it.

Re-delivering the same run rewrites the same bytes under the same names (idempotent).
Transient faults (connection reset, timeout, 5xx) are retried with exponential backoff by
:func:`with_retries`; permanent ones (authentication, permission, unknown host key, missing
bucket) fail at once with a :class:`DeliveryError` naming the account and destination.
Credentials come only from connections (:mod:`clv_jobs.connections`), never from settings.

Modules: :mod:`.local`, :mod:`.sftp`, :mod:`.s3`, :mod:`.postgres`.
"""

from __future__ import annotations

import importlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from clv_jobs.connections import Resolver
from clv_jobs.errors import ClvError

log = logging.getLogger("clv_jobs")


#: Attempts per destination and the first backoff delay (doubling, capped).
ATTEMPTS = 5
FIRST_DELAY_SECONDS = 1.0
MAX_DELAY_SECONDS = 30.0


class DeliveryError(ClvError):
    """A delivery that failed for good; nothing partial is left under the final name."""

    exit_code = 6


class TransientDeliveryError(DeliveryError):
    """A fault worth retrying (connection reset, timeout, server error)."""


def manifest_name(file_name: str) -> str:
    """Name of the manifest delivered after ``file_name``."""
    return f"{file_name}.manifest.json"


def manifest_bytes(manifest: dict) -> bytes:
    """The manifest as delivered: stable JSON (same run, same bytes)."""
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def with_retries[T](
    attempt: Callable[[], T],
    describe: str,
    is_transient: Callable[[BaseException], bool],
    attempts: int | None = None,
    first_delay: float | None = None,
) -> T:
    """Call ``attempt`` until it succeeds, retrying transient faults with exponential backoff.

    Parameters
    ----------
    attempt : callable
        One whole try (connect, upload, rename, verify); it must clean up after itself.
    describe : str
        ``account X, destination Y``: named in logs and errors.
    is_transient : callable
        Whether an exception is worth another try; anything else fails at once.
    attempts, first_delay : int, float, optional
        Tries in all, and the first wait (doubling up to :data:`MAX_DELAY_SECONDS`);
        default :data:`ATTEMPTS` and :data:`FIRST_DELAY_SECONDS`, read at call time.

    Raises
    ------
    DeliveryError
        A permanent fault, or transient faults on every try; chained to the cause.
    """
    attempts = ATTEMPTS if attempts is None else attempts
    delay = FIRST_DELAY_SECONDS if first_delay is None else first_delay
    for number in range(1, attempts + 1):
        try:
            return attempt()
        except DeliveryError as exc:
            if not isinstance(exc, TransientDeliveryError) or number == attempts:
                raise
            reason = str(exc)
        except Exception as exc:  # the client libraries raise many types
            if not is_transient(exc):
                raise DeliveryError(f"{describe}: {type(exc).__name__}: {exc} (not retried)") from exc
            if number == attempts:
                raise DeliveryError(
                    f"{describe}: still failing after {attempts} tries: {type(exc).__name__}: {exc}"
                ) from exc
            reason = f"{type(exc).__name__}: {exc}"
        log.warning("%s: try %d of %d failed (%s); retrying in %.0f s", describe, number, attempts, reason, delay)
        time.sleep(delay)
        delay = min(delay * 2, MAX_DELAY_SECONDS)
    raise AssertionError("unreachable")


def deliver(
    local_file: str | Path,
    destinations: list,
    manifest: dict,
    resolver: Resolver | None = None,
) -> list[dict]:
    """Deliver the file, then its manifest, to every destination in turn.

    Each destination type has a module with ``deliver(local_file, destination, manifest,
    resolver) -> dict``; the dict says what was delivered where (no secrets).
    """
    results = []
    for destination in destinations:
        module = importlib.import_module(f"clv_jobs.delivery.{destination.type}")
        results.append(module.deliver(Path(local_file), destination, manifest, resolver))
    return results
