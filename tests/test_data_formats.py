"""Dataset readers, checksums, the restricted unpickler, archives, NB201 splits (ahps_core.data)."""

from __future__ import annotations

import io
import json
import pickle
import pickletools
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ahps_core.data import DATASETS, KNOWN_MD5, load_dataset, write_cifar_like, write_imagenet16_like
from ahps_core.data.checksums import expected_md5, md5_bytes, md5_file, read_verified
from ahps_core.data.datasets import read_split_file, stratified_halves
from ahps_core.data.safe_pickle import safe_loads
from ahps_core.data.synthetic import py2_pickle
from ahps_core.errors import ChecksumError, ConfigError, DataError


def _opcodes(blob: bytes) -> list[tuple[str, object]]:
    return [(op.name, arg) for op, arg, _ in pickletools.genops(blob)]


@pytest.fixture(scope="module")
def cifar10(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("cifar10")
    return root, write_cifar_like(root, n_train=200, n_test=60, num_classes=10, seed=1)


# --- formats -------------------------------------------------------------------------------------------


def test_cifar10_files_are_python2_pickles_like_the_originals(cifar10: tuple[Path, dict[str, str]]) -> None:
    root, md5s = cifar10
    assert sorted(md5s) == sorted(
        f"cifar-10-batches-py/{n}" for n in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    )
    blob = (root / "cifar-10-batches-py/data_batch_1").read_bytes()
    ops = _opcodes(blob)
    assert ops[0] == ("PROTO", 2)
    assert ("GLOBAL", "numpy.core.multiarray _reconstruct") in ops  # pre-numpy-2 path, as in the real files
    assert not any(name in ("BINUNICODE", "SHORT_BINUNICODE") for name, _ in ops)  # py2 str only
    entry = pickle.loads(blob, encoding="bytes")  # how the CIFAR site says to load them
    assert set(entry) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert entry[b"data"].dtype == np.uint8 and entry[b"data"].shape == (40, 3072)
    assert entry[b"batch_label"] == b"training batch 1 of 5"
    assert (root / "cifar-10-batches-py/batches.meta").is_file()


def test_cifar10_round_trip_matches_the_pickled_arrays(cifar10: tuple[Path, dict[str, str]]) -> None:
    root, md5s = cifar10
    data = load_dataset("cifar10", root, checksums=md5s)
    assert data.metadata["sizes"] == {"train": 200, "test": 60}
    assert data.eval_part == "test" and data.eval is data.parts["test"]
    entries = [pickle.loads((root / n).read_bytes(), encoding="bytes") for n in DATASETS["cifar10"].layout.train]
    expected = np.concatenate([e[b"data"] for e in entries]).reshape(-1, 3, 32, 32)
    assert data.train.images.dtype == torch.uint8 and data.train.labels.dtype == torch.int64
    assert torch.equal(data.train.images, torch.from_numpy(expected))  # CHW rows -> NCHW, no transposition
    assert data.train.labels.tolist() == [label for e in entries for label in e[b"labels"]]
    assert (data.num_classes, data.image_size, data.channels, data.pad, data.flip) == (10, 32, 3, 4, True)
    assert data.mean == pytest.approx((0.49137, 0.48235, 0.44667), abs=1e-5)  # NB201: (125.3, 123.0, 113.9)/255


def test_cifar100_uses_fine_labels_and_splits_the_test_set(tmp_path: Path) -> None:
    md5s = write_cifar_like(tmp_path, n_train=300, n_test=400, num_classes=100, seed=2)
    entry = pickle.loads((tmp_path / "cifar-100-python/test").read_bytes(), encoding="bytes")
    assert {b"fine_labels", b"coarse_labels", b"data", b"filenames", b"batch_label"} == set(entry)
    data = load_dataset("cifar100", tmp_path, checksums=md5s)
    assert data.metadata["sizes"] == {"train": 300, "valid": 200, "test": 200, "ori-test": 400}
    assert data.eval_part == "valid"
    assert data.parts["ori-test"].labels.tolist() == entry[b"fine_labels"]
    valid_and_test = torch.cat([data.parts["valid"].labels, data.parts["test"].labels]).sort().values
    assert torch.equal(valid_and_test, data.parts["ori-test"].labels.sort().values)
    assert data.mean == pytest.approx(tuple(v / 255 for v in (129.3, 124.1, 112.4)))


def test_imagenet16_keeps_labels_1_to_120_shifted_to_0_based(tmp_path: Path) -> None:
    md5s = write_imagenet16_like(tmp_path, n_train=3000, n_val=400, num_labels=200, seed=3)
    assert sorted(md5s) == sorted([*(f"train_data_batch_{i}" for i in range(1, 11)), "val_data"])
    blob = (tmp_path / "train_data_batch_1").read_bytes()
    assert _opcodes(blob)[0] == ("PROTO", 3)
    entry = pickle.loads(blob)
    assert set(entry) == {"data", "labels", "mean"} and entry["data"].shape[1] == 768
    raw = [pickle.loads((tmp_path / f"train_data_batch_{i}").read_bytes()) for i in range(1, 11)]
    raw_labels = np.concatenate([e["labels"] for e in raw])
    raw_images = np.concatenate([e["data"] for e in raw])
    keep = (raw_labels >= 1) & (raw_labels <= 120)
    assert 0 < keep.sum() < len(raw_labels)  # some labels (121..200) really are dropped

    data = load_dataset("ImageNet16-120", tmp_path, checksums=md5s, split_seed=5)
    assert data.train.labels.tolist() == (raw_labels[keep] - 1).tolist()
    assert torch.equal(data.train.images, torch.from_numpy(raw_images[keep].reshape(-1, 3, 16, 16)))
    assert int(data.train.labels.min()) == 0 and int(data.train.labels.max()) == 119
    val = pickle.loads((tmp_path / "val_data").read_bytes())
    kept_val = sum(1 <= label <= 120 for label in val["labels"])
    assert len(data.parts["ori-test"]) == kept_val == len(data.parts["valid"]) + len(data.parts["test"])
    assert (data.num_classes, data.image_size, data.pad) == (120, 16, 2)


def test_digits_fixed_split_uint8_single_channel() -> None:
    data = load_dataset("digits")
    assert data.train.images.shape == (1437, 1, 8, 8) and data.eval.images.shape == (360, 1, 8, 8)
    assert data.train.images.dtype == torch.uint8 and int(data.train.images.max()) == 255
    assert (data.pad, data.flip, data.augment, data.num_classes) == (0, False, False, 10)
    again = load_dataset("digits")
    assert torch.equal(again.eval.labels, data.eval.labels)  # deterministic split
    assert torch.bincount(data.eval.labels).min() >= 35  # stratified: ~36 per class


# --- argument errors -----------------------------------------------------------------------------------


def test_unknown_dataset_lists_accepted_names() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown dataset 'cifar-10'.*digits, cifar10, cifar10-valid, cifar100, ImageNet16-120"
    ):
        load_dataset("cifar-10", "/nowhere")


def test_missing_root_names_path_and_expected_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="needs root"):
        load_dataset("cifar10")
    with pytest.raises(DataError, match=f"{tmp_path / 'absent'}.*cifar-10-batches-py/data_batch_1"):
        load_dataset("cifar10", tmp_path / "absent")
    with pytest.raises(DataError, match=rf"no CIFAR-10 files under {tmp_path}.*cifar-10-python\.tar\.gz"):
        load_dataset("cifar10", tmp_path)


def test_incomplete_folder_names_the_missing_file(tmp_path: Path) -> None:
    md5s = write_cifar_like(tmp_path, 50, 10)
    (tmp_path / "cifar-10-batches-py/data_batch_3").unlink()
    with pytest.raises(DataError, match="missing cifar-10-batches-py/data_batch_3"):
        load_dataset("cifar10", tmp_path, checksums=md5s)


def test_digits_refuses_root_and_split_file() -> None:
    with pytest.raises(ConfigError, match="root must not be given"):
        load_dataset("digits", "/data")
    with pytest.raises(ConfigError, match="split_file"):
        load_dataset("digits", split_file="split.txt")


# --- checksums -----------------------------------------------------------------------------------------


def test_known_md5_table_applies_when_no_checksums_given(cifar10: tuple[Path, dict[str, str]]) -> None:
    root, _ = cifar10
    known = KNOWN_MD5["cifar-10-batches-py/data_batch_1"]
    assert known == "c99cafc152244af753f735de768cd75f"  # torchvision's table
    with pytest.raises(ChecksumError, match=f"data_batch_1: expected md5 {known}"):
        load_dataset("cifar10", root)  # synthetic bytes are not the real release


def test_file_without_any_checksum_is_refused_unless_verify_false(cifar10: tuple[Path, dict[str, str]]) -> None:
    with pytest.raises(DataError, match=r"no known md5 for dataset file 'custom/batch'.*verify=False"):
        expected_md5("custom/batch", None, verify=True)
    assert expected_md5("custom/batch", None, verify=False) is None
    assert expected_md5("custom/batch", {"custom/batch": "ABC"}, verify=True) == "abc"
    root, _ = cifar10
    data = load_dataset("cifar10", root, verify=False)  # explicit opt-out loads the unknown content
    assert len(data.train) == 200 and data.metadata["verified"] is False


@pytest.mark.parametrize("damage", ["missing", "truncated", "tampered"])
def test_damaged_file_error_names_file_and_expected_md5(tmp_path: Path, damage: str) -> None:
    md5s = write_cifar_like(tmp_path, 50, 10)
    name = "cifar-10-batches-py/data_batch_2"
    path = tmp_path / name
    blob = path.read_bytes()
    if damage == "missing":
        path.unlink()
        with pytest.raises(DataError, match=rf"missing {name} \(expected md5 {md5s[name]}\)"):
            load_dataset("cifar10", tmp_path, checksums=md5s)
        return
    path.write_bytes(blob[: len(blob) // 2] if damage == "truncated" else blob[:-10] + b"X" * 10)
    with pytest.raises(ChecksumError, match=rf"{path}: expected md5 {md5s[name]}, got [0-9a-f]{{32}}"):
        load_dataset("cifar10", tmp_path, checksums=md5s)


def test_truncated_file_loaded_unverified_is_a_data_error(tmp_path: Path) -> None:
    write_cifar_like(tmp_path, 50, 10)
    path = tmp_path / "cifar-10-batches-py/test_batch"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match=f"cannot unpickle {path}"):
        load_dataset("cifar10", tmp_path, verify=False)


def test_read_verified_names_missing_file_and_md5(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=rf"not found: {tmp_path / 'val_data'} \(expected md5 {'a' * 32}\)"):
        read_verified(tmp_path / "val_data", "a" * 32)


# --- restricted unpickler ------------------------------------------------------------------------------


def test_restricted_unpickler_refuses_os_system_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    with pytest.raises(DataError, match=r"refused to load global os\.system"):
        safe_loads(evil, encoding="bytes", source="evil.pkl")
    assert not marker.exists()


@pytest.mark.parametrize(
    "module,name", [("builtins", "eval"), ("posix", "system"), ("numpy", "load"), ("_codecs", "decode")]
)
def test_restricted_unpickler_refuses_other_globals(module: str, name: str) -> None:
    blob = f"c{module}\n{name}\n(S'1'\ntR.".encode()
    with pytest.raises(DataError, match=f"refused to load global {module}.{name}"):
        safe_loads(blob, encoding="latin1", source="x")


def test_malicious_batch_is_refused_by_the_dataset_loader(tmp_path: Path) -> None:
    md5s = write_cifar_like(tmp_path, 50, 10)
    marker = tmp_path / "pwned"
    evil = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()
    name = "cifar-10-batches-py/data_batch_1"
    (tmp_path / name).write_bytes(evil)
    with pytest.raises(DataError, match=r"data_batch_1: refused to load global os\.system"):
        load_dataset("cifar10", tmp_path, checksums={**md5s, name: md5_bytes(evil)})  # checksum ok: still refused
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_restricted_unpickler_loads_numpy_pickles_of_each_protocol(protocol: int) -> None:
    array = np.arange(3 * 768, dtype=np.uint8).reshape(3, 768)
    entry = safe_loads(
        pickle.dumps({"data": array, "labels": [1, 2, 3]}, protocol=protocol), encoding="latin1", source="x"
    )
    np.testing.assert_array_equal(entry["data"], array)
    py2 = safe_loads(py2_pickle({b"data": array}), encoding="bytes", source="x")
    np.testing.assert_array_equal(py2[b"data"], array)


def test_codecs_encode_admitted_only_for_latin1() -> None:
    blob = b"c_codecs\nencode\n(X\x03\x00\x00\x00abcX\x06\x00\x00\x00base64tR."
    with pytest.raises(DataError, match="only latin1"):
        safe_loads(blob, encoding="bytes", source="x")


# --- archives ------------------------------------------------------------------------------------------


def test_archive_is_verified_then_extracted(tmp_path: Path) -> None:
    root, cache = tmp_path / "root", tmp_path / "cache"
    md5s = write_cifar_like(root, 100, 20, num_classes=10, seed=4, archive=True)
    assert [p.name for p in root.iterdir()] == ["cifar-10-python.tar.gz"]
    data = load_dataset("cifar10", root, checksums=md5s, cache_dir=cache)
    assert len(data.train) == 100 and (cache / "cifar-10-batches-py/test_batch").is_file()
    assert not [p for p in cache.iterdir() if p.name.startswith(".extract-")]
    again = load_dataset("cifar10", root, checksums=md5s, cache_dir=cache)  # reuses the extracted folder
    assert torch.equal(again.train.images, data.train.images)


def test_tampered_archive_is_not_extracted(tmp_path: Path) -> None:
    md5s = write_cifar_like(tmp_path, 100, 20, archive=True)
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(archive.read_bytes() + b"junk")
    with pytest.raises(ChecksumError, match=f"cifar-10-python.tar.gz: expected md5 {md5s['cifar-10-python.tar.gz']}"):
        load_dataset("cifar10", tmp_path, checksums=md5s)
    assert not (tmp_path / "cifar-10-batches-py").exists()


def test_archive_with_path_traversal_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    checksums = {"cifar-10-python.tar.gz": md5_bytes(archive.read_bytes())}
    with pytest.raises(DataError, match=r"cannot extract.*outside the destination"):
        load_dataset("cifar10", tmp_path, checksums=checksums)
    assert not (tmp_path / "escaped").exists()  # "../" of the temporary extraction directory inside tmp_path


# --- NB201 splits --------------------------------------------------------------------------------------


def test_seeded_split_is_stratified_deterministic_and_documented(cifar10: tuple[Path, dict[str, str]]) -> None:
    root, md5s = cifar10
    a = load_dataset("cifar10-valid", root, checksums=md5s, split_seed=0)
    b = load_dataset("cifar10-valid", root, checksums=md5s, split_seed=0)
    c = load_dataset("cifar10-valid", root, checksums=md5s, split_seed=1)
    assert a.metadata["sizes"] == {"train": 100, "valid": 100, "test": 60}
    assert "seeded" in a.metadata["split"] and "not NB201's exact split" in a.metadata["split"]
    assert torch.equal(a.parts["valid"].images, b.parts["valid"].images)
    assert not torch.equal(a.parts["valid"].images, c.parts["valid"].images)
    counts = torch.bincount(a.train.labels, minlength=10) - torch.bincount(a.parts["valid"].labels, minlength=10)
    assert counts.abs().max() <= 1  # per class the halves differ by at most one image


def test_stratified_halves_partition_every_class() -> None:
    labels = np.repeat(np.arange(10), 5000)
    first, second = stratified_halves(labels, seed=0)
    assert len(first) == len(second) == 25000
    assert np.array_equal(np.sort(np.concatenate([first, second])), np.arange(50000))
    assert (np.bincount(labels[first]) == 2500).all()


def test_nb201_split_file_is_used_when_given(cifar10: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    root, md5s = cifar10
    train_idx, valid_idx = list(range(0, 200, 2)), list(range(1, 200, 2))
    split = tmp_path / "cifar-split.txt"
    split.write_text(
        json.dumps({"train": ["int", [str(i) for i in train_idx]], "valid": ["int", [str(i) for i in valid_idx]]})
    )
    with pytest.raises(DataError, match="has no known md5 and is not NB201's cifar10-valid split"):
        load_dataset("cifar10-valid", root, checksums=md5s, split_file=split)  # neither its md5 nor NB201's
    data = load_dataset("cifar10-valid", root, checksums={**md5s, "cifar-split.txt": md5_file(split)},
                        split_file=split)
    full = load_dataset("cifar10", root, checksums=md5s)
    assert data.metadata["split"] == f"file: {split}"
    assert data.metadata["split_verified"] == "md5" and data.metadata["split_nb201"] is False
    assert torch.equal(data.parts["valid"].images, full.train.images[valid_idx])
    assert torch.equal(data.train.labels, full.train.labels[train_idx])


def test_bad_split_files_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "split.txt"
    path.write_text(json.dumps({"xvalid": ["int", ["0", "1"]], "xtest": ["int", ["1", "2"]]}))
    with pytest.raises(DataError, match="share indices"):
        read_split_file(path, ("xvalid", "xtest"), 10)
    path.write_text(json.dumps({"xvalid": ["int", ["0", "10"]], "xtest": ["int", ["2"]]}))
    with pytest.raises(DataError, match=r"'xvalid' indices must be in 0\.\.9"):
        read_split_file(path, ("xvalid", "xtest"), 10)
    path.write_text(json.dumps({"train": ["int", ["0"]]}))
    with pytest.raises(DataError, match="expected an entry 'xvalid'"):
        read_split_file(path, ("xvalid", "xtest"), 10)
    with pytest.raises(DataError, match="cannot read split file"):
        read_split_file(tmp_path / "absent.txt", ("xvalid", "xtest"), 10)
