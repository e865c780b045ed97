"""Deliver a published Datamodel to the account's destinations (SPEC "Delivery").

Each delivery writes the file under a temporary name, renames it to its final name (so no
reader ever sees a partial file), then writes ``<file>.manifest.json`` last: automations
such as SFMC File Drop fire on the manifest. Re-delivering the same run rewrites the same
bytes under the same names, so it is idempotent.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from clv_jobs.datamodel import file_digest
from clv_jobs.settings import LocalDestination


def manifest_name(file_name: str) -> str:
    """Name of the manifest delivered after ``file_name``."""
    return f"{file_name}.manifest.json"


def _replace_atomically(write, final: Path) -> None:
    """Write through ``write(staging_path)`` beside ``final``, then rename onto it."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.with_name(f".{final.name}.{uuid.uuid4().hex}.partial")
    try:
        write(staging)
        os.replace(staging, final)
    finally:
        staging.unlink(missing_ok=True)


def deliver_local(local_file: str | Path, destination: LocalDestination, manifest: dict) -> dict:
    """Copy the file into the destination folder, then its manifest; verify the copy.

    Returns
    -------
    dict
        ``destination`` (type), ``path`` and ``manifest`` of what was delivered.
    """
    source = Path(local_file)
    folder = Path(destination.path)
    final = folder / source.name
    _replace_atomically(lambda staging: shutil.copyfile(source, staging), final)
    delivered = file_digest(final)
    if delivered["sha256"] != manifest["sha256"]:
        raise OSError(f"{final}: delivered file differs from the published one (sha256 mismatch)")
    payload = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    manifest_path = folder / manifest_name(source.name)
    _replace_atomically(lambda staging: staging.write_bytes(payload), manifest_path)
    return {"destination": "local", "path": str(final), "manifest": str(manifest_path)}


def deliver(local_file: str | Path, destinations: list, manifest: dict) -> list[dict]:
    """Deliver to every destination in turn."""
    handlers = {LocalDestination: deliver_local}
    return [handlers[type(destination)](local_file, destination, manifest) for destination in destinations]
