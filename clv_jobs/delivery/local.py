"""Deliver to a folder on this machine (or a mounted share)."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from clv_jobs.connections import Resolver
from clv_jobs.datamodel import file_digest
from clv_jobs.delivery import DeliveryError, manifest_bytes, manifest_name
from clv_jobs.settings import LocalDestination


def _replace_atomically(write, final: Path) -> None:
    """Write through ``write(staging_path)`` beside ``final``, then rename onto it."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.with_name(f".{final.name}.{uuid.uuid4().hex}.partial")
    try:
        write(staging)
        os.replace(staging, final)
    finally:
        staging.unlink(missing_ok=True)


def deliver(local_file: Path, destination: LocalDestination, manifest: dict, resolver: Resolver | None = None) -> dict:
    """Copy the file into the folder, verify it, then write its manifest.

    The staged copy is read back and must hash to the manifest's SHA-256 before it takes
    the final name; otherwise it is removed and nothing is delivered.

    Returns
    -------
    dict
        ``destination``, ``path`` and ``manifest`` of what was delivered.
    """
    folder = Path(destination.path)
    final = folder / local_file.name

    def copy_verified(staging: Path) -> None:
        shutil.copyfile(local_file, staging)
        if file_digest(staging)["sha256"] != manifest["sha256"]:
            raise DeliveryError(f"account {manifest['account']}, local {folder}: delivered file differs "
                                "from the published one (sha256 mismatch); nothing delivered")

    _replace_atomically(copy_verified, final)
    manifest_path = folder / manifest_name(local_file.name)
    _replace_atomically(lambda staging: staging.write_bytes(manifest_bytes(manifest)), manifest_path)
    return {"destination": "local", "path": str(final), "manifest": str(manifest_path)}
