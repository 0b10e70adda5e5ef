"""Fetching dataset files from ``s3://bucket/prefix`` (AWS or any S3-compatible server) into a local cache.

Guarantees:

* **Verified**: a downloaded file is MD5-checked before it is installed; a mismatch deletes the partial file
  and raises :class:`~ahps_core.errors.ChecksumError` naming the object and the expected md5.
* **Atomic**: bytes go to ``<name>.part`` and are moved into place with ``os.replace`` only once complete and
  verified, so a cache file either is absent or is complete.
* **Resumable**: a file already present whose MD5 matches is not downloaded again (no request at all), and a
  ``.part`` left by an interrupted download is continued with a ranged ``GetObject`` (``Range: bytes=N-``,
  ``If-Match: <ETag>``) when the object's ETag and size still match those recorded in ``<name>.part.json``.
  A streaming failure is retried (resuming) up to :data:`ATTEMPTS` times per call.
* **Concurrent-safe**: one ``fcntl`` lock per file, so parallel jobs sharing a cache volume do not interleave.

The endpoint is ``endpoint_url`` when given, otherwise botocore's standard resolution: the
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` environment variables, then AWS. Credentials follow boto3's
usual chain. boto3 is imported lazily, so importing :mod:`ahps_core.data` stays cheap.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ahps_core.data.checksums import expected_md5, md5_file
from ahps_core.data.formats import FileLayout
from ahps_core.errors import ChecksumError, ConfigError, DataError

ATTEMPTS = 3
_CHUNK = 1 << 20


_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]$")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/prefix`` into ``(bucket, prefix)``; the prefix has no leading/trailing ``/``.

    The parts become local paths under the cache (``<cache>/s3/<bucket>/<prefix>``), so they are confined to it:
    a bucket name is S3's (letters, digits, ``.``, ``-``, ``_``; no ``..``), and a prefix with a ``.`` or ``..``
    segment, a backslash or a NUL is refused (``s3://bucket/../../x`` would write outside the cache)."""
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise ConfigError(f"not an S3 URI: {uri!r}; expected s3://bucket/prefix")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if len(bucket) < 3:
        raise ConfigError(f"bad S3 URI {uri!r}: expected s3://bucket/prefix with a bucket name of 3+ characters")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ConfigError(f"bad S3 URI {uri!r}: bucket {bucket!r} is not an S3 bucket name (letters, digits, '.', "
                          "'-', '_')")
    prefix = prefix.strip("/")
    bad = [part for part in prefix.split("/") if part in (".", "..")]
    if bad:
        raise ConfigError(f"bad S3 URI {uri!r}: the key has a {bad[0]!r} segment, which would leave the local "
                          "cache; give the key without '.' and '..'")
    if "\\" in prefix or "\x00" in prefix:
        raise ConfigError(f"bad S3 URI {uri!r}: the key holds a backslash or NUL character")
    return bucket, prefix


def make_client(endpoint_url: str | None = None) -> Any:
    """A boto3 S3 client; ``endpoint_url=None`` lets botocore read ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint_url)


def _key(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def as_data_error(exc: Exception, uri: str, what: str = "request for") -> DataError:
    """A :class:`DataError` naming ``uri`` (and ``what`` was done: "request for", "upload to", ...) for a botocore
    ``ClientError``/``BotoCoreError``: the one conversion of S3 errors in ahps."""
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code", "?")
        if code in ("404", "NoSuchKey", "NoSuchBucket"):
            return DataError(f"S3 object not found: {uri} ({code})")
        return DataError(f"S3 {what} {uri} failed: {code} {error.get('Message', '')}".rstrip())
    return DataError(f"S3 {what} {uri} failed: {exc}")


def _call(fn: Callable[..., Any], uri: str, **kwargs: Any) -> Any:
    """Run one S3 API call, turning botocore errors into :class:`DataError` naming ``uri``."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn(**kwargs)
    except (BotoCoreError, ClientError) as exc:
        raise as_data_error(exc, uri) from exc


def list_names(client: Any, bucket: str, prefix: str) -> set[str]:
    """Names (relative to ``prefix``) of all objects under ``s3://bucket/prefix/``."""
    from botocore.exceptions import BotoCoreError, ClientError

    start = f"{prefix}/" if prefix else ""
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=start)
        return {obj["Key"][len(start) :] for page in pages for obj in page.get("Contents", [])}
    except (BotoCoreError, ClientError) as exc:
        raise as_data_error(exc, f"s3://{bucket}/{start}") from exc


def _is_current(path: Path, md5: str | None) -> bool:
    """Whether the cached ``path`` exists and (when an md5 is expected) matches it."""
    return path.is_file() and (md5 is None or md5_file(path) == md5)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``fcntl`` lock on ``<path>.lock`` (released when the block exits)."""
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def fetch_object(client: Any, bucket: str, key: str, dest: Path, md5: str | None) -> bool:
    """Make ``dest`` a verified copy of ``s3://bucket/key``; return whether anything was downloaded.

    See the module docstring for the verification, atomicity and resume rules. ``md5=None`` (only with
    ``verify=False``) accepts any existing ``dest`` and installs the download unchecked.
    """
    from botocore.exceptions import BotoCoreError

    uri = f"s3://{bucket}/{key}"
    if _is_current(dest, md5):
        return False
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create cache directory {dest.parent} for {uri}: {exc}") from exc
    with _locked(dest):
        if _is_current(dest, md5):  # another process completed it while we waited for the lock
            return False
        head = _call(client.head_object, uri, Bucket=bucket, Key=key)
        size, etag = int(head["ContentLength"]), head["ETag"]
        part = dest.with_name(dest.name + ".part")
        record = dest.with_name(dest.name + ".part.json")
        if not (
            part.is_file() and _read_record(record) == {"etag": etag, "size": size} and part.stat().st_size <= size
        ):
            part.unlink(missing_ok=True)
            record.write_text(json.dumps({"etag": etag, "size": size}))
        failure: Exception | None = None
        for _ in range(ATTEMPTS):
            done = part.stat().st_size if part.exists() else 0
            if done == size:
                break
            try:
                _append_range(client, bucket, key, etag, part, start=done, uri=uri, record=record)
            except BotoCoreError as exc:  # the stream broke: keep the bytes we have and resume
                failure = exc
        done = part.stat().st_size if part.exists() else 0
        if done != size:
            raise DataError(
                f"download of {uri} stopped at {done} of {size} bytes after {ATTEMPTS} attempts ({failure}); "
                f"the partial file {part} is kept: run again to resume"
            )
        actual = md5_file(part)
        if md5 is not None and actual != md5:
            part.unlink()
            record.unlink(missing_ok=True)
            raise ChecksumError(
                f"checksum mismatch for {uri} (downloaded to {part}): expected md5 {md5}, got {actual} "
                f"({size} bytes); the object is corrupted or was replaced"
            )
        os.replace(part, dest)
        record.unlink(missing_ok=True)
    return True


def _read_record(record: Path) -> dict[str, Any] | None:
    """The ``{"etag", "size"}`` a ``.part`` file was downloaded from, or ``None`` if unreadable."""
    try:
        return json.loads(record.read_text())
    except (OSError, ValueError):
        return None


def _append_range(
    client: Any, bucket: str, key: str, etag: str, part: Path, *, start: int, uri: str, record: Path
) -> None:
    """Append bytes ``start..`` of the object (which must still have ``etag``) to ``part``."""
    from botocore.exceptions import ClientError

    request: dict[str, Any] = {"Bucket": bucket, "Key": key, "IfMatch": etag}
    if start:
        request["Range"] = f"bytes={start}-"
    try:
        response = client.get_object(**request)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "PreconditionFailed":
            part.unlink(missing_ok=True)
            record.unlink(missing_ok=True)
            raise DataError(f"{uri} changed during the download (ETag is no longer {etag}); run again") from exc
        raise as_data_error(exc, uri) from exc
    with open(part, "ab") as handle:
        handle.writelines(response["Body"].iter_chunks(_CHUNK))


def mirror(
    uri: str,
    layout: FileLayout,
    cache_dir: Path,
    *,
    checksums: Mapping[str, str] | None,
    verify: bool,
    endpoint_url: str | None = None,
) -> Path:
    """Make ``cache_dir/s3/<bucket>/<prefix>`` hold ``layout``'s batch files (or its archive) from ``uri``.

    Returns that local directory, to be read with :func:`ahps_core.data.formats.locate`. When every batch file
    is already cached and verified, no request is sent. Otherwise the prefix is listed once and either the
    batch files or, if only it is there, the ``.tar.gz`` archive are fetched with :func:`fetch_object`.
    """
    bucket, prefix = parse_s3_uri(uri)
    local = cache_dir / "s3" / bucket / prefix
    members = {name: expected_md5(name, checksums, verify) for name in layout.members}
    if all(_is_current(local / name, md5) for name, md5 in members.items()):
        return local
    client = make_client(endpoint_url)
    available = list_names(client, bucket, prefix)
    if set(members) <= available:
        wanted = members
    elif layout.archive is not None and layout.archive in available:
        wanted = {layout.archive: expected_md5(layout.archive, checksums, verify)}
    else:
        raise DataError(f"no {layout.title} files under {uri}: expected {layout.describe()}")
    for name, md5 in wanted.items():
        fetch_object(client, bucket, _key(prefix, name), local / name, md5)
    return local
