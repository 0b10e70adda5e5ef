"""S3 sources against moto's ThreadedMotoServer on 127.0.0.1 (the real S3 API over HTTP)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from ahps_core.data import load_dataset, write_cifar_like
from ahps_core.data import s3 as s3mod
from ahps_core.data.checksums import md5_file
from ahps_core.errors import ChecksumError, ConfigError, DataError
from tests.conftest import moto_s3_server

pytest.importorskip("moto.server")
from botocore.exceptions import ResponseStreamingError

_names = (f"bucket-{i}" for i in itertools.count())


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """A moto S3 server on a free loopback port, with dummy credentials in the environment."""
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    with moto_s3_server() as url, pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
            mp.delenv(key, raising=False)
        yield url


@pytest.fixture
def client(endpoint: str) -> Any:
    return s3mod.make_client(endpoint)


@pytest.fixture(scope="module")
def cifar(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("cifar-src")
    return root, write_cifar_like(root, n_train=100, n_test=20, num_classes=10, seed=9)


def _upload(client: Any, root: Path, names: list[str], prefix: str = "nb201/cifar") -> str:
    bucket = next(_names)
    client.create_bucket(Bucket=bucket)
    for name in names:
        client.upload_file(str(root / name), bucket, f"{prefix}/{name}")
    return bucket


def _record_gets(client: Any) -> list[dict[str, str]]:
    """Headers of every GetObject request the client sends (real HTTP requests to the server)."""
    seen: list[dict[str, str]] = []

    def record(request: Any, **_: Any) -> None:
        seen.append({k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()})

    client.meta.events.register("before-send.s3.GetObject", record)
    return seen


def test_fetch_verify_and_load_then_refetch_is_a_noop(
    endpoint: str, client: Any, cifar: tuple[Path, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, md5s = cifar
    bucket = _upload(client, root, list(md5s))
    uri = f"s3://{bucket}/nb201/cifar"
    data = load_dataset("cifar10", uri, checksums=md5s, cache_dir=tmp_path, endpoint_url=endpoint)
    local = load_dataset("cifar10", root, checksums=md5s)
    assert torch.equal(data.train.images, local.train.images) and torch.equal(data.eval.labels, local.eval.labels)
    cached = tmp_path / "s3" / bucket / "nb201/cifar"
    assert data.metadata["source"] == uri and data.metadata["directory"] == str(cached)
    files = sorted(p.name for p in cached.rglob("*") if p.is_file() and not p.name.endswith(".lock"))
    assert files == sorted(name.split("/")[-1] for name in md5s)  # no .part / .part.json left behind
    mtimes = {p: p.stat().st_mtime_ns for p in cached.rglob("data_batch_*")}

    def no_client(*_: Any, **__: Any) -> Any:
        raise AssertionError("a verified cache must not contact S3")

    monkeypatch.setattr(s3mod, "make_client", no_client)
    again = load_dataset("cifar10", uri, checksums=md5s, cache_dir=tmp_path, endpoint_url=endpoint)
    assert torch.equal(again.train.images, data.train.images)
    assert mtimes == {p: p.stat().st_mtime_ns for p in cached.rglob("data_batch_*")}


def test_endpoint_from_standard_environment_variable(
    endpoint: str, client: Any, cifar: tuple[Path, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, md5s = cifar
    bucket = _upload(client, root, list(md5s), prefix="data")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    monkeypatch.setenv("AHPS_DATA_CACHE", str(tmp_path))
    data = load_dataset("cifar10-valid", f"s3://{bucket}/data/", checksums=md5s)
    assert data.metadata["sizes"] == {"train": 50, "valid": 50, "test": 20}
    assert (tmp_path / "s3" / bucket / "data/cifar-10-batches-py/test_batch").is_file()


def test_corrupted_cache_file_is_downloaded_again(
    endpoint: str, client: Any, cifar: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, md5s = cifar
    bucket = _upload(client, root, list(md5s))
    uri = f"s3://{bucket}/nb201/cifar"
    load_dataset("cifar10", uri, checksums=md5s, cache_dir=tmp_path, endpoint_url=endpoint)
    cached = tmp_path / "s3" / bucket / "nb201/cifar/cifar-10-batches-py/data_batch_4"
    cached.write_bytes(b"garbage")
    data = load_dataset("cifar10", uri, checksums=md5s, cache_dir=tmp_path, endpoint_url=endpoint)
    assert md5_file(cached) == md5s["cifar-10-batches-py/data_batch_4"] and len(data.train) == 100


def test_tampered_object_raises_checksum_error_and_installs_nothing(
    endpoint: str, client: Any, cifar: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, md5s = cifar
    bucket = _upload(client, root, list(md5s))
    name = "cifar-10-batches-py/test_batch"
    client.put_object(Bucket=bucket, Key=f"nb201/cifar/{name}", Body=(root / name).read_bytes()[:-1] + b"!")
    with pytest.raises(ChecksumError, match=rf"s3://{bucket}/nb201/cifar/{name} .*expected md5 {md5s[name]}"):
        load_dataset("cifar10", f"s3://{bucket}/nb201/cifar", checksums=md5s, cache_dir=tmp_path, endpoint_url=endpoint)
    local = tmp_path / "s3" / bucket / "nb201/cifar" / name
    assert not local.exists() and not local.with_name("test_batch.part").exists()


def test_archive_only_bucket_is_fetched_and_extracted(endpoint: str, client: Any, tmp_path: Path) -> None:
    src = tmp_path / "src"
    md5s = write_cifar_like(src, 100, 20, num_classes=100, seed=3, archive=True)
    bucket = _upload(client, src, ["cifar-100-python.tar.gz"], prefix="c100")
    data = load_dataset(
        "cifar100", f"s3://{bucket}/c100", checksums=md5s, cache_dir=tmp_path / "cache", endpoint_url=endpoint
    )
    assert data.metadata["sizes"] == {"train": 100, "valid": 10, "test": 10, "ori-test": 20}
    assert (tmp_path / "cache/s3" / bucket / "c100/cifar-100-python/train").is_file()


def test_missing_objects_and_bad_uris(endpoint: str, client: Any, tmp_path: Path) -> None:
    bucket = next(_names)
    client.create_bucket(Bucket=bucket)
    with pytest.raises(
        DataError, match=rf"no CIFAR-10 files under s3://{bucket}/empty: expected cifar-10-batches-py/data_batch_1"
    ):
        load_dataset("cifar10", f"s3://{bucket}/empty", cache_dir=tmp_path, endpoint_url=endpoint)
    with pytest.raises(DataError, match=rf"S3 object not found: s3://{bucket}/nope"):
        s3mod.fetch_object(client, bucket, "nope", tmp_path / "nope", None)
    with pytest.raises(ConfigError, match="bucket name of 3"):
        s3mod.parse_s3_uri("s3://b/prefix")
    assert s3mod.parse_s3_uri("s3://data/a/b/") == ("data", "a/b")


class _BreakingBody:
    """A response body that delivers ``limit`` bytes and then fails like a dropped connection."""

    def __init__(self, body: Any, limit: int) -> None:
        self.body, self.limit = body, limit

    def iter_chunks(self, chunk_size: int) -> Iterator[bytes]:
        data = self.body.read(self.limit)
        yield data
        raise ResponseStreamingError(error="connection reset by peer (injected)")


class _FlakyClient:
    """Wraps a real client; the first ``failures`` GetObject bodies break after ``limit`` bytes."""

    def __init__(self, client: Any, limit: int, failures: int) -> None:
        self.client, self.limit, self.failures = client, limit, failures

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def get_object(self, **kwargs: Any) -> Any:
        response = self.client.get_object(**kwargs)
        if self.failures > 0:
            self.failures -= 1
            response["Body"] = _BreakingBody(response["Body"], self.limit)
        return response


def test_interrupted_download_resumes_with_a_range_get(
    client: Any, cifar: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, md5s = cifar
    name = "cifar-10-batches-py/data_batch_1"
    bucket = _upload(client, root, [name])
    key, dest, size = f"nb201/cifar/{name}", tmp_path / "data_batch_1", (root / name).stat().st_size
    part = tmp_path / "data_batch_1.part"

    flaky = _FlakyClient(client, limit=5000, failures=s3mod.ATTEMPTS)
    with pytest.raises(DataError, match=rf"stopped at 15000 of {size} bytes .*{part} is kept: run again to resume"):
        s3mod.fetch_object(flaky, bucket, key, dest, md5s[name])
    assert part.stat().st_size == 15000 and not dest.exists()

    gets = _record_gets(client)
    assert s3mod.fetch_object(client, bucket, key, dest, md5s[name]) is True
    assert [g.get("Range") for g in gets] == ["bytes=15000-"]
    assert md5_file(dest) == md5s[name] and not part.exists() and not (tmp_path / "data_batch_1.part.json").exists()
    assert s3mod.fetch_object(client, bucket, key, dest, md5s[name]) is False and len(gets) == 1  # no-op


def test_broken_stream_is_resumed_within_the_same_call(
    client: Any, cifar: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, md5s = cifar
    name = "cifar-10-batches-py/data_batch_2"
    bucket = _upload(client, root, [name])
    gets = _record_gets(client)
    flaky = _FlakyClient(client, limit=7000, failures=1)
    assert s3mod.fetch_object(flaky, bucket, f"nb201/cifar/{name}", tmp_path / "b2", md5s[name]) is True
    assert [g.get("Range") for g in gets] == [None, "bytes=7000-"]
    assert md5_file(tmp_path / "b2") == md5s[name]


def test_partial_file_of_a_replaced_object_is_discarded(
    client: Any, cifar: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, md5s = cifar
    name = "cifar-10-batches-py/data_batch_3"
    bucket = _upload(client, root, [name])
    dest = tmp_path / "b3"
    (tmp_path / "b3.part").write_bytes(b"x" * 4000)  # from an older version of the object
    (tmp_path / "b3.part.json").write_text('{"etag": "\\"0123\\"", "size": 4000}')
    gets = _record_gets(client)
    assert s3mod.fetch_object(client, bucket, f"nb201/cifar/{name}", dest, md5s[name]) is True
    assert [g.get("Range") for g in gets] == [None]  # restarted from byte 0
    assert md5_file(dest) == md5s[name]


def test_object_replaced_during_download_is_detected(
    client: Any, cifar: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, md5s = cifar
    name = "cifar-10-batches-py/data_batch_5"
    bucket = _upload(client, root, [name])
    key = f"nb201/cifar/{name}"

    class Replacing(_FlakyClient):
        def get_object(self, **kwargs: Any) -> Any:
            self.client.put_object(Bucket=bucket, Key=key, Body=b"new version")  # between HEAD and GET
            return self.client.get_object(**kwargs)

    with pytest.raises(DataError, match=rf"s3://{bucket}/{key} changed during the download"):
        s3mod.fetch_object(Replacing(client, 0, 0), bucket, key, tmp_path / "b5", md5s[name])
    assert not (tmp_path / "b5.part").exists() and not os.path.exists(tmp_path / "b5")
