"""Bring your own data: ``npz:PATH`` (local and S3) and ``module:function`` datasets, through the loader and through
``find-lr``, ``validate`` and ``train``; every bad file is one line and exit 2."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch

from ahps.cli import main
from ahps_core.data import load_dataset
from ahps_core.errors import ConfigError, DataError
from tests import user_data
from tests.conftest import ahps_cmd, one_line_error

TINY = ["--epochs", "1", "--max-steps", "6", "--batch-size", "16", "--device", "cpu", "--seeds", "1"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("user-data")
    return {
        "vectors": user_data.write_npz(root / "vectors.npz", user_data.vector_arrays()),
        "nhwc": user_data.write_npz(root / "nhwc.npz", user_data.image_arrays("NHWC")),
        "nchw": user_data.write_npz(root / "nchw.npz", user_data.image_arrays("NCHW", "float32")),
    }


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


# --- the loader -------------------------------------------------------------------------------------------------


def test_vectors_are_standardized_per_feature(files):
    arrays = user_data.vector_arrays()
    data = load_dataset(f"npz:{files['vectors']}")
    assert data.metadata["kind"] == "vectors" and data.num_classes == 3 and data.eval_part == "test"
    assert tuple(data.train.images.shape) == (192, 12, 1, 1) and data.train.images.dtype == torch.float32
    assert np.allclose(data.mean, arrays["x_train"].mean(0), atol=1e-5)
    x, y = next(data.loader("train", batch_size=192, training=False).epoch(0))
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(12), atol=1e-4)  # standardized with the train part's stats
    assert torch.allclose(x.std((0, 2, 3), unbiased=False), torch.ones(12), atol=1e-4)
    assert torch.equal(y, torch.from_numpy(arrays["y_train"]))
    same = load_dataset("tests.user_data:vectors")  # the same arrays from a function
    assert torch.equal(same.train.images, data.train.images) and same.name == "tests.user_data:vectors"


def test_both_image_layouts_and_dtypes_give_the_same_images(files):
    a = load_dataset(f"npz:{files['nhwc']}")
    b = load_dataset(f"npz:{files['nchw']}")
    assert a.metadata["kind"] == b.metadata["kind"] == "images" and a.eval_part == "valid"
    assert tuple(a.train.images.shape) == tuple(b.train.images.shape) == (160, 3, 8, 8)
    assert a.train.images.dtype == torch.uint8 and b.train.images.dtype == torch.float32
    xa, _ = next(a.loader("train", batch_size=160, training=False).epoch(0))
    xb, _ = next(b.loader("train", batch_size=160, training=False).epoch(0))
    assert torch.allclose(xa, xb, atol=1e-4)  # uint8 / 255 and the float copy normalize to the same inputs
    raw = user_data.image_arrays("NHWC")["x_train"]
    assert torch.equal(a.train.images, torch.from_numpy(raw.transpose(0, 3, 1, 2).copy()))


def _bad(tmp_path, **changes):
    arrays = user_data.vector_arrays()
    for k, v in changes.items():
        if v is None:
            arrays.pop(k)
        else:
            arrays[k] = v
    return user_data.write_npz(tmp_path / "bad.npz", arrays)


BAD_CASES = [
    ({"y_test": None}, "missing y_test"),
    ({"X_extra": np.zeros(3)}, "unexpected X_extra"),
    ({"x_train": np.zeros((192, 2, 3), np.float32)}, "x_train has shape (192, 2, 3); expected vectors [N, D]"),
    ({"x_train": np.zeros((192, 12), np.int64)}, "x_train has dtype int64; accepted are uint8"),
    ({"y_train": np.full(192, "a")}, "y_train has dtype <U1; labels must be integers"),
    ({"y_train": -np.ones(192, np.int64)}, "y_train holds label -1"),
    ({"y_train": np.full(192, 0.5)}, "y_train holds non-integer values"),
    ({"x_test": np.full((48, 12), np.nan, np.float32)}, "x_test holds 576 NaN/inf value(s)"),
    ({"y_test": np.zeros(47, np.int64)}, "y_test has shape (47,); expected integer labels of shape (48,)"),
    ({"x_test": np.zeros((48, 11), np.float32)}, "the parts differ in kind, dtype or per-sample shape"),
    ({"x_valid": np.zeros((4, 12), np.float32)}, "give both x_valid and y_valid"),
    ({"x_train": np.zeros((192, 3, 8, 3), np.uint8), "x_test": np.zeros((48, 3, 8, 3), np.uint8)},
     "cannot tell channels from height/width"),
]


@pytest.mark.parametrize("changes,message", BAD_CASES)
def test_bad_arrays_are_one_clear_error(tmp_path, capsys, changes, message):
    path = _bad(tmp_path, **changes)
    with pytest.raises(DataError) as err:
        load_dataset(f"npz:{path}")
    assert message in str(err.value) and str(path) in str(err.value)
    code, out, err_text = run(capsys, "find-lr", "--family", "mlp", "--dataset", f"npz:{path}", *TINY)
    assert code == 2 and out == "" and err_text.count("\n") == 1 and message in err_text


def test_bad_files_and_functions(tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_text("not a zip")
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, x_train=np.array([{"a": 1}], dtype=object))
    cases = [
        (f"npz:{tmp_path / 'missing.npz'}", DataError, "not found"),
        (f"npz:{garbage}", DataError, "cannot read"),
        (f"npz:{pickled}", DataError, "object arrays (pickles), which are not loaded"),
        ("npz:", ConfigError, "give the file"),
        ("tests.user_data:not_a_mapping", DataError, "returned a list; expected a mapping of arrays"),
        ("tests.user_data:broken", ConfigError, "calling broken() failed: RuntimeError: the data server is down"),
        ("no_such_module_ahps:data", ConfigError, "module 'no_such_module_ahps' not found"),
        ("tests.user_data:nothing", ConfigError, "has no attribute 'nothing'"),
    ]
    for name, exc, message in cases:
        with pytest.raises(exc, match=None) as err:
            load_dataset(name)
        assert message in str(err.value), (name, str(err.value))
    with pytest.raises(ConfigError, match="must not be given"):
        load_dataset("tests.user_data:vectors", "/some/root")


def test_bad_file_through_the_real_entry_point_exits_2(tmp_path):
    path = _bad(tmp_path, y_train=None)
    r = subprocess.run(ahps_cmd() + ["validate", "--family", "mlp", "--dataset", f"npz:{path}", "--archs", "2"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 2 and "missing y_train" in one_line_error(r)


def test_vectors_only_fit_the_mlp_family(files, capsys):
    code, _, err = run(capsys, "train", "--family", "cnn", "--arch", "2", "--dataset", f"npz:{files['vectors']}",
                       "--lr", "0.1", *TINY[:-2])
    assert code == 2 and "holds vectors [N, 12]: the cnn family needs images" in err


# --- the commands ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset,family", [("vectors", "mlp"), ("nhwc", "cnn"), ("function", "mlp")])
def test_find_lr_validate_and_train_on_user_data(files, tmp_path, capsys, dataset, family):
    name = "tests.user_data:vectors" if dataset == "function" else f"npz:{files[dataset]}"
    grid = ["--grid", "0.03,0.1,0.3,1"]
    code, out, _ = run(capsys, "find-lr", "--family", family, "--dataset", name, *grid, *TINY, "--width", "8",
                       "--json")
    assert code == 0
    found = json.loads(out)
    assert found["dataset"] == name and found["base_lr"] in [0.03, 0.1, 0.3, 1.0]

    code, out, _ = run(capsys, "validate", "--family", family, "--dataset", name, "--archs", "2,2_02", *grid, *TINY,
                       "--width", "8", "--resolution", "0", "--n-boot", "50", "--out", str(tmp_path / "v"), "--json")
    assert code == 0
    rep = json.loads(out)
    assert rep["dataset"] == name and rep["base"]["lr"] == found["base_lr"]  # the same protocol on the proxy
    assert [p["arch"] for p in rep["points"]] == ["2", "2_02"]

    code, out, _ = run(capsys, "train", "--family", family, "--arch", "2", "--dataset", name, "--recipe",
                       "reference", "--lr", "0.1", "--epochs", "2", "--batch-size", "16", "--width", "8", "--device",
                       "cpu", "--json")
    assert code == 0
    res = json.loads(out)
    assert res["status"] == "completed" and len(res["history"]) == 2 and res["config"]["dataset"] == name
    assert res["history"][-1]["train_loss"] < res["history"][0]["train_loss"] * 1.5
    assert res["final"]["eval_acc"] is not None


def test_npz_from_s3(files, tmp_path, monkeypatch):
    pytest.importorskip("moto.server")
    from ahps_core.data import s3 as s3mod
    from tests.conftest import moto_s3_server

    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    with moto_s3_server() as url:
        client = s3mod.make_client(url)
        client.create_bucket(Bucket="mydata")
        client.upload_file(str(files["nhwc"]), "mydata", "sets/nhwc.npz")
        data = load_dataset("npz:s3://mydata/sets/nhwc.npz", cache_dir=tmp_path, endpoint_url=url)
        local = load_dataset(f"npz:{files['nhwc']}")
        assert torch.equal(data.train.images, local.train.images) and data.metadata["source"].startswith("s3://")
        cached = [p for p in (tmp_path / "npz" / "mydata").glob("nhwc.npz.*") if p.suffix != ".lock"]
        assert len(cached) == 1  # cached, keyed by the ETag
        mtime = cached[0].stat().st_mtime_ns
        again = load_dataset("npz:s3://mydata/sets/nhwc.npz", cache_dir=tmp_path, endpoint_url=url)
        assert torch.equal(again.train.images, data.train.images) and cached[0].stat().st_mtime_ns == mtime
        with pytest.raises(DataError, match="S3 object not found"):
            load_dataset("npz:s3://mydata/sets/none.npz", cache_dir=tmp_path, endpoint_url=url)


def test_user_data_as_the_pipelines_dataset(files, tmp_path, monkeypatch):
    """The transfer pipeline's ``dataset`` parameter takes ``npz:PATH`` and ``module:function``; a relative path
    is made absolute (the steps may run elsewhere) and the steps load it like any dataset."""
    from ahps_core.steps.common import load_training_data
    from ahps_core.steps.params import check_transfer
    from pipelines import get_pipeline

    base = get_pipeline("transfer").defaults()
    monkeypatch.chdir(files["vectors"].parent)
    p = check_transfer({**base, "dataset": "npz:vectors.npz"}, local=True)
    assert p["dataset"] == f"npz:{files['vectors']}"
    data = load_training_data(p["dataset"], p["data_source"])
    assert data.metadata["kind"] == "vectors" and len(data.train) == 192
    assert check_transfer({**base, "dataset": "tests.user_data:vectors"}, local=True)["dataset"] == \
        "tests.user_data:vectors"
    for change, message in [
        ({"dataset": "npz:nope.npz"}, "file 'nope.npz' does not exist"),
        ({"dataset": "npz:vectors.npz", "data_source": "/data"}, "data_source must be empty"),
        ({"dataset": "tests.user_data:nothing"}, "has no attribute 'nothing'"),
        ({"dataset": "mnist"}, "accepted are digits, cifar10, cifar10-valid, cifar100, ImageNet16-120, npz:PATH"),
    ]:
        with pytest.raises(ConfigError, match=None) as err:
            check_transfer({**base, **change}, local=True)
        assert message in str(err.value)
