"""Checkpoint storage for pipeline steps: a local directory or ``s3://bucket/prefix``, kept in sync.

A training step of the pipeline keeps its checkpoint under ``<checkpoint_root>/<run_group>/<arch>/<arm>/<seed>/``
(:func:`checkpoint_location`). ``checkpoint_root`` is either a plain directory (the local runner, a PVC) or an S3
prefix (a cluster whose pods are preempted: the checkpoint must outlive the pod). :class:`CheckpointSync` hides
the difference::

    sync = CheckpointSync(location, scratch_dir)
    sync.pull()                          # S3: download what the previous attempt left; local: nothing to do
    train(config.replace(checkpoint_dir=str(sync.local_dir)), callback=lambda rec: sync.push())
    sync.push()                          # S3: upload new/changed files; local: nothing to do

Uploads go file by file (boto3's ``upload_file``, multipart for large files) and only for files whose size or
modification time changed since the last push, so pushing after every epoch costs one PUT per changed file;
``.tmp``/``.part`` files (atomic writes in progress) are never uploaded. The S3 endpoint and credentials follow
boto3's usual resolution
(``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ...): in the
cluster they come from Kubernetes secrets as environment variables, never from pipeline parameters.

Errors are :class:`~ahps_core.errors.DataError` naming the URI (:func:`ahps_core.data.s3.as_data_error`). boto3
and :mod:`ahps_core.data` (which imports torch) are imported lazily: :func:`slug` and the locations are cheap.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from ahps_core.errors import ConfigError

_SAFE = re.compile(r"[^A-Za-z0-9_.=-]+")


def is_s3(uri: str | os.PathLike[str] | None) -> bool:
    return isinstance(uri, str) and uri.startswith("s3://")


def slug(text: str, *, max_len: int = 80) -> str:
    """A path/metric-key safe form of ``text`` (architecture specs like NB201 arch strings contain ``|~+``).

    Safe specs (``2_02_002``) are kept as they are; others get their unsafe runs replaced by ``_`` plus a short
    hash of the original, so two different specs never share a slug.
    """
    text = str(text)
    cleaned = _SAFE.sub("_", text).strip("_.") or "x"
    if cleaned == text and len(text) <= max_len:
        return text
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    return f"{cleaned[: max_len - 9]}-{digest}"


def join(root: str, *parts: str) -> str:
    """``root`` joined with ``parts`` by ``/`` (S3 URIs) or the OS separator (directories)."""
    if is_s3(root):
        return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(root, *parts))


def checkpoint_location(root: str, run_group: str, arch: str, arm: str, seed: int) -> str:
    """``<root>/<run_group>/<arch>/<arm>/<seed>`` with every part made path safe (:func:`slug`)."""
    if not root:
        raise ConfigError("checkpoint root is empty: give a directory or s3://bucket/prefix")
    return join(root, slug(run_group), slug(arch), slug(arm), str(int(seed)))


def download_prefix(uri: str, dest: str | os.PathLike[str], *, endpoint_url: str | None = None) -> list[str]:
    """Download every object under ``uri`` (``s3://bucket/prefix``) into ``dest``; returns the relative names.

    Objects already present in ``dest`` with the same size are skipped. Missing prefix: nothing happens.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    from ahps_core.data.s3 import as_data_error, make_client, parse_s3_uri

    bucket, prefix = parse_s3_uri(uri)
    start = f"{prefix}/" if prefix else ""
    client = make_client(endpoint_url)
    dest = Path(dest)
    got: list[str] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=start):
            for obj in page.get("Contents", []):
                name = obj["Key"][len(start):]
                if not name or name.endswith("/") or ".." in Path(name).parts or Path(name).is_absolute():
                    continue  # a key that would land outside dest ("a/../../x", "prefix//etc/x") is never fetched
                target = dest / name
                if target.is_file() and target.stat().st_size == obj["Size"]:
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(target.name + ".part")
                client.download_file(bucket, obj["Key"], str(tmp))
                os.replace(tmp, target)
                got.append(name)
    except (BotoCoreError, ClientError) as exc:
        raise as_data_error(exc, uri, "download of") from exc
    return got


class CheckpointSync:
    """Keeps a local checkpoint directory and its (local or S3) location in sync; see the module docstring."""

    def __init__(self, location: str, scratch: str | os.PathLike[str] | None = None, *,
                 endpoint_url: str | None = None) -> None:
        self.location = location
        self.remote = is_s3(location)
        self.endpoint_url = endpoint_url or None
        if self.remote:
            if scratch is None:
                raise ConfigError("an S3 checkpoint location needs a local scratch directory")
            self.local_dir = Path(scratch)
        else:
            self.local_dir = Path(location)
        self.local_dir.mkdir(parents=True, exist_ok=True)
        self._pushed: dict[str, tuple[int, int]] = {}

    def pull(self) -> list[str]:
        """Fetch what the location holds (S3 only); returns the names downloaded."""
        if not self.remote:
            return []
        names = download_prefix(self.location, self.local_dir, endpoint_url=self.endpoint_url)
        for path in self._files():
            self._pushed[self._rel(path)] = self._stamp(path)  # already there: no need to push back
        return names

    def push(self) -> list[str]:
        """Upload new or changed files (S3 only); returns the names uploaded."""
        if not self.remote:
            return []
        from botocore.exceptions import BotoCoreError, ClientError

        from ahps_core.data.s3 import as_data_error, make_client, parse_s3_uri

        bucket, prefix = parse_s3_uri(self.location)
        client = make_client(self.endpoint_url)
        sent = []
        for path in self._files():
            rel, stamp = self._rel(path), self._stamp(path)
            if self._pushed.get(rel) == stamp:
                continue
            key = f"{prefix}/{rel}" if prefix else rel
            try:
                client.upload_file(str(path), bucket, key)
            except (BotoCoreError, ClientError) as exc:
                raise as_data_error(exc, f"s3://{bucket}/{key}", "upload to") from exc
            self._pushed[rel] = stamp
            sent.append(rel)
        return sent

    def _files(self) -> list[Path]:
        return sorted(p for p in self.local_dir.rglob("*")
                      if p.is_file() and not p.name.endswith((".tmp", ".part", ".lock")))

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.local_dir).as_posix()

    @staticmethod
    def _stamp(path: Path) -> tuple[int, int]:
        st = path.stat()
        return st.st_size, st.st_mtime_ns
