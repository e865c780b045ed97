"""Each account's runs, addressed by URI (a local folder by default; ``s3://`` works too).

Layout under the store root::

    <account>/
      activation.json                  # first day the account became eligible
      eligibility/<as_of>.json         # every daily check
      runs/<as_of>/<run_id>/           # one folder per run, never changed once pointed to
          scores.parquet  model.json  validation.json  quarantine.parquet
          summary.json  <datamodel file>
      runs/<as_of>/CURRENT.json        # the published run of that as-of date
      current.json                     # the latest published run (highest as-of date)

A run is written aside in its own folder, then published by replacing the small pointer
files, each in one step (a rename on a local disk, a single PUT on S3). A job killed
halfway leaves the previous pointers, so nothing half-written is ever current.

On ``s3://bucket/prefix`` (AWS or any S3-compatible endpoint) the bucket must already
exist; folders are only key prefixes, so nothing creates or needs folder objects.
Connection settings come from the environment only (see :func:`s3_filesystem`).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import urllib.parse
import uuid
from collections.abc import Callable

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from clv_jobs.errors import ConfigError


def _dumps(payload: dict) -> bytes:
    return (json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n").encode()


def s3_filesystem(bucket: str) -> pafs.S3FileSystem:
    """A pyarrow S3 filesystem configured from the environment only.

    ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY`` (optionally ``AWS_SESSION_TOKEN``)
    are required; the region is ``AWS_REGION``, else ``AWS_DEFAULT_REGION``, else
    ``us-east-1`` on a custom endpoint or the bucket's own region on AWS; an S3-compatible
    endpoint (MinIO, Ceph, moto…) is ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``,
    e.g. ``http://minio:9000``. Credentials and endpoint never come from ``~/.aws`` files
    (passed explicitly, they override the SDK's own lookup), and nothing here is logged.

    Parameters
    ----------
    bucket : str
        The store's bucket (used to find its region on AWS when none is set).

    Raises
    ------
    ConfigError
        When the credentials are missing from the environment, or the region cannot be found.
    """
    env = os.environ
    missing = [name for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if not env.get(name)]
    if missing:
        raise ConfigError(f"store s3://{bucket}: set {' and '.join(missing)} in the environment "
                          "(credentials are never read from config files)")
    options: dict = {}
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        # pyarrow's S3FileSystem() ignores these variables (only FileSystem.from_uri reads
        # them), so pass the endpoint explicitly, split into scheme and host[:port].
        url = urllib.parse.urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        options |= {"scheme": url.scheme, "endpoint_override": url.netloc + url.path.rstrip("/")}
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if not region and endpoint:
        region = "us-east-1"  # what S3-compatible servers expect when they ignore regions
    elif not region:
        try:
            region = pafs.resolve_s3_region(bucket)  # on AWS, a wrong region fails every request
        except OSError as exc:
            raise ConfigError(f"store bucket {bucket!r}: cannot find its region ({exc}); "
                              "set AWS_REGION") from None
    return pafs.S3FileSystem(
        access_key=env["AWS_ACCESS_KEY_ID"],
        secret_key=env["AWS_SECRET_ACCESS_KEY"],
        session_token=env.get("AWS_SESSION_TOKEN") or None,
        region=region,
        # Open lazily: an object smaller than one part (10 MiB) is then one PutObject
        # instead of a three-request multipart upload that a killed job would leave behind.
        allow_delayed_open=True,
        **options,
    )


class Store:
    """Read and write an account's artifacts under one root URI.

    Parameters
    ----------
    uri : str
        A local path, ``file:///…`` or ``s3://bucket/prefix`` (credentials, region and
        endpoint from the environment: :func:`s3_filesystem`).

    Raises
    ------
    ConfigError
        On S3: missing credentials, settings in the URI, or a bucket that does not exist
        (or cannot be reached).
    """

    def __init__(self, uri: str):
        self.uri = uri
        if uri.startswith("s3://"):
            url = urllib.parse.urlsplit(uri)
            if url.query:
                # from_uri would accept access keys here: keep secrets out of config files.
                raise ConfigError(f"store {uri.split('?')[0]}: options in the URI are not supported; "
                                  "set AWS_* environment variables instead")
            self.fs, root = s3_filesystem(url.netloc), f"{url.netloc}{url.path}"
            self._require_bucket(url.netloc)
        elif "://" in uri:
            self.fs, root = pafs.FileSystem.from_uri(uri)
        else:
            self.fs, root = pafs.LocalFileSystem(), os.path.abspath(uri)
        self.root = root.rstrip("/")
        self.is_local = isinstance(self.fs, pafs.LocalFileSystem)

    def _require_bucket(self, bucket: str) -> None:
        """Fail early and clearly: pyarrow would only fail at the first write, naming a key."""
        try:
            found = self.fs.get_file_info(bucket).type != pafs.FileType.NotFound
        except OSError as exc:  # unreachable endpoint, access denied, …
            raise ConfigError(f"store bucket {bucket!r} cannot be reached: {exc}") from None
        if not found:
            raise ConfigError(f"store bucket {bucket!r} does not exist (create it first; "
                              "the store never creates buckets)")

    def __repr__(self) -> str:
        return f"Store({self.uri!r})"

    def path(self, *parts: str) -> str:
        """Path of an object under the root."""
        return "/".join([self.root, *parts])

    # -- bytes, JSON, Parquet ---------------------------------------------------------
    def write_bytes(self, path: str, data: bytes) -> None:
        """Write a whole object so that readers see the old or the new content, never a mix."""
        if not self.is_local:
            # Object stores need no folders (create_dir would PUT empty "dir/" marker keys),
            # and a PUT replaces an object in one step. Check the type before opening:
            # pyarrow's S3 stream uploads whatever it holds when closed, even on an
            # exception, so a failed write must never start one.
            buffer = pa.py_buffer(data)
            with self.fs.open_output_stream(path) as out:  # one PUT (multipart above 10 MiB)
                out.write(buffer)
            return

        def write(staging: str) -> None:
            with self.fs.open_output_stream(staging) as out:
                out.write(data)

        self._replace_local(path, write)

    def _replace_local(self, path: str, write: Callable[[str], None]) -> None:
        """Local store: ``write(staging_path)`` beside ``path``, then rename it onto ``path``."""
        parent = path.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        staging = f"{parent}/.{path.rsplit('/', 1)[1]}.{uuid.uuid4().hex}.partial"
        try:
            write(staging)
            os.replace(staging, path)  # atomic on POSIX
        except BaseException:
            # A failed write keeps the old object and leaves no staging file behind.
            if os.path.exists(staging):
                os.remove(staging)
            raise

    def read_bytes(self, path: str) -> bytes:
        """The whole object."""
        with self.fs.open_input_stream(path) as stream:
            return stream.read()

    def exists(self, path: str) -> bool:
        """Whether an object (or folder) exists."""
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def write_json(self, path: str, payload: dict) -> None:
        """Pretty, key-sorted JSON (stable bytes for identical content)."""
        self.write_bytes(path, _dumps(payload))

    def read_json(self, path: str) -> dict | None:
        """The parsed object, or None when it does not exist."""
        try:
            return json.loads(self.read_bytes(path))
        except FileNotFoundError:  # one GET instead of HEAD + GET on S3
            return None

    def write_parquet(self, path: str, frame: pd.DataFrame | pa.Table) -> None:
        """A DataFrame or Arrow table as Parquet (snappy; dictionaries for text columns only).

        Dictionary-encoding every column and zstd made a five-million-row scores table
        take 5.2 s to write; snappy with dictionaries where they pay, 3.6 s (the file
        is 45 % larger).
        """
        table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
        text = [field.name for field in table.schema
                if pa.types.is_string(field.type) or pa.types.is_large_string(field.type)
                or pa.types.is_dictionary(field.type)]
        options = {"compression": "snappy", "use_dictionary": text}
        if self.is_local:
            # Straight into the staging file: through a buffer, a five-million-row scores
            # table was held twice more in memory (0.5 GB each) before reaching the disk.
            self._replace_local(path, lambda staging: pq.write_table(table, staging, **options))
            return
        buffer = io.BytesIO()
        pq.write_table(table, buffer, **options)
        self.write_bytes(path, buffer.getvalue())

    def read_parquet(self, path: str, columns: list[str] | None = None) -> pd.DataFrame:
        """A Parquet object as a DataFrame."""
        return self.read_arrow(path, columns).to_pandas()

    def read_arrow(self, path: str, columns: list[str] | None = None) -> pa.Table:
        """A Parquet object as an Arrow table (DuckDB scans it in place, no pandas copy)."""
        return pq.read_table(path, filesystem=self.fs, columns=columns)

    def upload(self, local_path: str, path: str) -> None:
        """Copy a local file into the store (streamed: one PUT, or a multipart upload)."""
        if self.is_local:
            self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        pafs.copy_files(local_path, path, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=self.fs)

    def download(self, path: str, local_path: str) -> None:
        """Copy an object to a local file."""
        pafs.copy_files(path, local_path, source_filesystem=self.fs,
                        destination_filesystem=pafs.LocalFileSystem())

    def remove(self, path: str) -> None:
        """Delete a folder (every object under a prefix on S3); nothing if it does not exist.

        On S3, pyarrow then PUTs an empty ``<parent>/`` marker object so that the parent
        "folder" survives (it does so on every delete). Listings ignore such markers.
        """
        if self.exists(path):
            self.fs.delete_dir(path)

    def list_files(self, path: str) -> list[str]:
        """Names of the files directly under ``path`` (empty if it does not exist)."""
        selector = pafs.FileSelector(path, allow_not_found=True)
        return sorted(info.base_name for info in self.fs.get_file_info(selector)
                      if info.type == pafs.FileType.File)

    def list_dirs(self, path: str) -> list[str]:
        """Names of the folders directly under ``path`` (empty if it does not exist).

        On S3 these are the common key prefixes one level down (pyarrow lists them as
        directories), so they exist exactly while an object exists below them.
        """
        selector = pafs.FileSelector(path, allow_not_found=True)
        return sorted(info.base_name for info in self.fs.get_file_info(selector)
                      if info.type == pafs.FileType.Directory)

    # -- runs ----------------------------------------------------------------------
    def run_path(self, account: str, as_of: dt.date, run_id: str, name: str = "") -> str:
        """Folder of one run (or a file in it)."""
        parts = [account, "runs", as_of.isoformat(), run_id]
        return self.path(*parts, name) if name else self.path(*parts)

    def publish_run(self, account: str, as_of: dt.date, pointer: dict) -> None:
        """Make a written run current for its as-of date, and the latest if it is."""
        self.write_json(self.path(account, "runs", as_of.isoformat(), "CURRENT.json"), pointer)
        latest = self.latest_run(account)
        if latest is None or latest["as_of"] <= as_of.isoformat():
            self.write_json(self.path(account, "current.json"), pointer)

    def run_for(self, account: str, as_of: dt.date) -> dict | None:
        """The published run of exactly ``as_of``, if any."""
        return self.read_json(self.path(account, "runs", as_of.isoformat(), "CURRENT.json"))

    def latest_run(self, account: str) -> dict | None:
        """The published run with the highest as-of date."""
        return self.read_json(self.path(account, "current.json"))

    def previous_run(self, account: str, before: dt.date) -> dict | None:
        """The published run with the highest as-of date strictly before ``before``."""
        for day in reversed(self.list_dirs(self.path(account, "runs"))):
            if day < before.isoformat():
                pointer = self.run_for(account, dt.date.fromisoformat(day))
                if pointer:
                    return pointer
        return None

    # -- eligibility -----------------------------------------------------------------
    def record_eligibility(self, account: str, as_of: dt.date, result: dict) -> None:
        """Keep one record per daily check."""
        self.write_json(self.path(account, "eligibility", f"{as_of.isoformat()}.json"), result)

    def last_eligibility(self, account: str, on_or_before: dt.date) -> dict | None:
        """The most recent check at or before a date."""
        folder = self.path(account, "eligibility")
        selector = pafs.FileSelector(folder, allow_not_found=True)
        days = sorted(info.base_name.removesuffix(".json") for info in self.fs.get_file_info(selector)
                      if info.base_name.endswith(".json"))
        days = [day for day in days if day <= on_or_before.isoformat()]
        return self.read_json(f"{folder}/{days[-1]}.json") if days else None

    def activation(self, account: str) -> dict | None:
        """``{"activated_on": …}`` once the account has become eligible, else None."""
        return self.read_json(self.path(account, "activation.json"))

    def activate(self, account: str, as_of: dt.date) -> None:
        """Record the activation date (only the first one counts)."""
        if self.activation(account) is None:
            self.write_json(self.path(account, "activation.json"), {"activated_on": as_of.isoformat()})
