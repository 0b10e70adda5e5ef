"""Known MD5 checksums of the real dataset files, and verification of files against them.

Every file is verified **before** it is unpickled or extracted. The expected digest comes from an explicit
``checksums={relative_name: md5}`` mapping (tests, custom files) or, failing that, from :data:`KNOWN_MD5`.
A file with neither is refused unless the caller passes ``verify=False`` explicitly.

Sources of :data:`KNOWN_MD5` (copied, not computed here: no real dataset can be downloaded in this project):

* CIFAR-10 / CIFAR-100 archives and python batches: torchvision ``torchvision/datasets/cifar.py``
  (``tgz_md5``, ``train_list``, ``test_list``).
* ImageNet16 (NAS-Bench-201's 16x16 downsampled ImageNet): ``lib/datasets/DownsampledImageNet.py`` in
  D-X-Y/AutoDL-Projects (``train_list``, ``valid_list``).

Keys are paths relative to the dataset root, with ``/`` separators, exactly as the loaders name them.
Custom or generated data brings its own checksums file (:func:`read_checksums_manifest`, :func:`load_checksums`).
The CIFAR ``batches.meta`` / ``meta`` files are not listed because the loaders never read them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ahps_core.errors import ChecksumError, ConfigError, DataError

KNOWN_MD5: dict[str, str] = {
    # CIFAR-10 (torchvision CIFAR10)
    "cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a",
    "cifar-10-batches-py/data_batch_1": "c99cafc152244af753f735de768cd75f",
    "cifar-10-batches-py/data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "cifar-10-batches-py/data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "cifar-10-batches-py/data_batch_4": "634d18415352ddfa80567beed471001a",
    "cifar-10-batches-py/data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "cifar-10-batches-py/test_batch": "40351d587109b95175f43aff81a1287e",
    # CIFAR-100 (torchvision CIFAR100)
    "cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85",
    "cifar-100-python/train": "16019d7e3df5f24257cddd939b257f8d",
    "cifar-100-python/test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    # ImageNet16 (NAS-Bench-201 / AutoDL-Projects ImageNet16)
    "train_data_batch_1": "27846dcaa50de8e21a7d1a35f30f0e91",
    "train_data_batch_2": "c7254a054e0e795c69120a5727050e3f",
    "train_data_batch_3": "4333d3df2e5ffb114b05d2ffc19b1e87",
    "train_data_batch_4": "1620cdf193304f4a92677b695d70d10f",
    "train_data_batch_5": "348b3c2fdbb3940c4e9e834affd3b18d",
    "train_data_batch_6": "6e765307c242a1b3d7d5ef9139b48945",
    "train_data_batch_7": "564926d8cbf8fc4818ba23d2faac7564",
    "train_data_batch_8": "f4755871f718ccb653440b9dd0ebac66",
    "train_data_batch_9": "bb6dd660c38c58552125b1a92f86b5d4",
    "train_data_batch_10": "8f03f34ac4b42271a294f91bf480f29b",
    "val_data": "3410e3017fdaefba8d5073aaa65e4bd6",
}

_CHUNK = 1 << 20


def md5_bytes(data: bytes) -> str:
    """Hex MD5 of ``data`` (used only as an integrity check, not for security)."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def md5_file(path: str | Path) -> str:
    """Hex MD5 of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def lookup_md5(name: str, checksums: Mapping[str, str] | None) -> str | None:
    """The md5 of ``name`` from ``checksums`` (preferred) or :data:`KNOWN_MD5`; ``None`` if neither has it."""
    if checksums is not None and name in checksums:
        return checksums[name].lower()
    return KNOWN_MD5.get(name)


def expected_md5(name: str, checksums: Mapping[str, str] | None, verify: bool) -> str | None:
    """The MD5 that file ``name`` (relative to its dataset root) must have, or ``None`` when not verifying.

    An explicit ``checksums`` entry wins over :data:`KNOWN_MD5`. Raises :class:`DataError` when
    ``verify`` is true and no digest is known for ``name``.
    """
    if not verify:
        return None
    md5 = lookup_md5(name, checksums)
    if md5 is not None:
        return md5
    raise DataError(
        f"no known md5 for dataset file {name!r}: pass checksums={{{name!r}: '<md5>'}} "
        "or verify=False to load it unverified"
    )


def check_md5(path: Path, actual: str, expected: str | None) -> None:
    """Raise :class:`ChecksumError` naming ``path`` when ``actual`` differs from ``expected`` (if any)."""
    if expected is not None and actual != expected:
        size = path.stat().st_size if path.exists() else 0
        raise ChecksumError(
            f"checksum mismatch for {path}: expected md5 {expected}, got {actual} ({size} bytes); "
            "the file is truncated, corrupted or not the expected release"
        )


def read_verified(path: Path, expected: str | None) -> bytes:
    """Read ``path`` fully and verify its MD5 against ``expected`` before returning the bytes.

    The bytes that were hashed are the bytes returned, so the file cannot change between the check and
    its use. Raises :class:`DataError` for a missing file (naming the expected md5) and
    :class:`ChecksumError` for a mismatch.
    """
    if not path.is_file():
        want = f" (expected md5 {expected})" if expected else ""
        raise DataError(f"dataset file not found: {path}{want}")
    data = path.read_bytes()
    check_md5(path, md5_bytes(data), expected)
    return data


# --- checksums files (manifests) ----------------------------------------------------------------------------

#: The example a malformed checksums file's message shows.
_MANIFEST_EXAMPLE = '{"cifar-10-batches-py/data_batch_1": "c99cafc152244af753f735de768cd75f"}'


def read_checksums_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A checksums file as a manifest ``{"data_source": str, "synthetic": bool, "md5": {relative name: md5}}``.

    The file is JSON: a plain ``{relative file name: md5}`` map, or a manifest ``{"data_source": DIR,
    "synthetic": bool, "md5": {...}}`` as ``ahps run reevaluate`` writes next to its generated data. A missing or
    malformed file is a :class:`ConfigError` naming it.
    """
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"checksums_file {str(path)!r} cannot be read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"checksums_file {str(path)!r} is not JSON: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("md5"), dict):
        md5, manifest = data["md5"], data
    else:
        md5, manifest = data, {}
    if not isinstance(md5, dict) or not md5 or not all(
        isinstance(k, str) and isinstance(v, str) and len(v) == 32 for k, v in md5.items()
    ):
        raise ConfigError(f"checksums_file {str(path)!r} must map relative file names to md5 hex digests, e.g. "
                          + _MANIFEST_EXAMPLE)
    return {"data_source": str(manifest.get("data_source") or ""), "synthetic": bool(manifest.get("synthetic")),
            "md5": md5}


def same_source(a: str, b: str) -> bool:
    """Whether two data sources (directories or ``s3://`` prefixes) name the same place."""
    if a.startswith("s3://") or b.startswith("s3://"):
        return a.rstrip("/") == b.rstrip("/")
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def load_checksums(path: str | os.PathLike[str], *, data_source: str | None = None) -> dict[str, str] | None:
    """The ``{relative file name: md5}`` map of a checksums file, for dataset files without a known checksum
    (generated or custom data; ``load_dataset(checksums=...)`` verifies against it). A manifest describes one data
    source: given ``data_source`` and a manifest for another one, the result is None (they do not apply there)."""
    manifest = read_checksums_manifest(path)
    if data_source is not None and manifest["data_source"] and not same_source(manifest["data_source"], data_source):
        return None
    return dict(manifest["md5"])


def is_synthetic(checksums_file: str, data_source: str) -> bool:
    """Whether ``checksums_file`` is the manifest of generated data (``"synthetic": true``) for ``data_source``."""
    if not checksums_file:
        return False
    manifest = read_checksums_manifest(checksums_file)
    return manifest["synthetic"] and (not manifest["data_source"] or same_source(manifest["data_source"],
                                                                                  data_source))
