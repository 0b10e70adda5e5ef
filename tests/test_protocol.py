"""NAS-Bench-201's protocol (ahps_core.protocol): the protocol object per dataset, the fixed arm of each family as
the plan uses it, the deviations of a run, NB201's split files recognised by NB201's own check (path and S3), and
the split file reaching the training loader through the transfer pipeline's train step. The end-to-end runs with
and without a split file and the compiled defaults are in test_reevaluate.py."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from ahps_core.data.checksums import md5_file
from ahps_core.data.datasets import indices_hash
from ahps_core.data.splits import NB201_SPLIT_HEADS, NB201_SPLIT_SETS, read_split, write_split_file
from ahps_core.errors import ChecksumError, ConfigError, DataError
from ahps_core.protocol import (
    DEVIATIONS,
    FIXED_ARMS,
    budget_info,
    fixed_arm,
    nb201_protocol,
    protocol_status,
    protocol_tags,
)
from tests.conftest import moto_s3_server

EXACT = dict(seeds=[999, 777, 888], amp="off", cell="full", indegree="all")
FULL_BUDGET = budget_info(C=16, N=5, epochs=200, batch_size=256)


def nb201_like_split(dataset: str, path: Path) -> tuple[list[int], list[int]]:
    """A split file with NB201's first indices of both keys that partitions the whole set, as NB201's files do (the
    rest of the set alternates between the two parts). Not NB201's file, but it passes NB201's own check."""
    heads = NB201_SPLIT_HEADS[dataset]
    (k1, h1), (k2, h2) = heads.items()
    rest = sorted(set(range(NB201_SPLIT_SETS[dataset])) - set(h1) - set(h2))
    first, second = h1 + rest[0::2], h2 + rest[1::2]
    write_split_file(path, (k1, k2), first, second)
    return first, second


# --- the protocol object ------------------------------------------------------------------------------------------


def test_the_nb201_protocol_of_each_dataset():
    expected = {"cifar10": ("ori-test", "test", None), "cifar10-valid": ("x-valid", "valid", "cifar-split.txt"),
                "cifar100": ("x-test", "test", "cifar100-test-split.txt"),
                "ImageNet16-120": ("x-test", "test", "imagenet-16-120-test-split.txt")}
    for dataset, (headline, part, split) in expected.items():
        p = nb201_protocol(dataset)
        assert (p.headline_set, p.eval_part, p.split_file) == (headline, part, split)
        assert (p.seeds, p.amp, p.recipe, p.cell, p.indegree) == ((777, 888, 999), "off", "nb201", "full", "all")
        assert (p.epochs, p.batch_size, p.C, p.N, p.max_steps_per_epoch) == (200, 256, 16, 5, 0)
        assert (p.fixed_arm.lr, p.fixed_arm.init) == (0.1, "default")
        json.dumps(p.to_dict())
    from ahps_core.benchmarks import DATASETS as BENCHMARK_SETS

    for dataset, spec in BENCHMARK_SETS.items():  # the records' headline sets are the protocol's
        assert nb201_protocol(dataset).headline_set == spec.headline
    with pytest.raises(ConfigError, match="unknown dataset 'digits'"):
        nb201_protocol("digits")


def test_the_nb201_recipe_is_fp32_and_its_probe_uses_the_recipes_optimizer():
    from ahps_core.presets import PRESETS, default_budget, recipe_config

    assert PRESETS["nb201"]["amp"] == "off" and recipe_config("nb201").amp == "off"
    assert recipe_config("nb201", amp="bf16").amp == "bf16"  # only when asked
    nb = PRESETS["nb201"]
    for dataset in ("cifar10", "cifar100", "ImageNet16-120"):
        probe = default_budget(dataset, "nb201")
        assert (probe.momentum, probe.nesterov, probe.weight_decay, probe.batch_size) == (
            nb["momentum"], nb["nesterov"], nb["weight_decay"], nb["batch_size"])
        assert (probe.epochs, probe.augment, probe.amp) == (1, True, "off")
        config = probe.config(0.1, 0, family="nb201", arch="1_01_001", dataset=dataset)
        assert (config.momentum, config.nesterov, config.weight_decay, config.augment) == (0.9, True, 5e-4, True)
    # the digits/mlp probe is unchanged: plain SGD at batch 32 for 6 epochs
    digits = default_budget("digits", "mlp")
    assert (digits.epochs, digits.batch_size, digits.momentum, digits.nesterov) == (6, 32, 0.0, False)
    assert default_budget("cifar10", "mlp").batch_size == 128


def test_the_nb201_base_lr_search_probes_with_the_recipes_optimizer(tmp_path):
    from ahps_core.data import load_dataset
    from ahps_core.data.checksums import load_checksums
    from ahps_core.data.synthetic import write_synthetic_datasets
    from ahps_core.lr_search import find_base_lr
    from ahps_core.presets import FAMILY_BUDGETS

    manifest = write_synthetic_datasets(tmp_path / "data")
    data = load_dataset("cifar10", tmp_path / "data", checksums=load_checksums(manifest))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a 2-point grid: the best LR is at its edge
        result = find_base_lr("nb201", "cifar10", data=data, grid=[0.05, 0.2], seeds=[0], C=2, N=1, refine=False)
    assert result.budget == FAMILY_BUDGETS["nb201"].to_dict()
    assert (result.budget["momentum"], result.budget["batch_size"], result.budget["augment"]) == (0.9, 256, True)


def test_the_fixed_arm_of_each_family_is_what_the_plan_trains(tmp_path):
    from ahps_core.steps.transfer import plan_step

    assert set(FIXED_ARMS) == {"nb201", "mlp", "cnn"}
    assert (fixed_arm("nb201").lr_for(0.46), fixed_arm("mlp").lr_for(0.46)) == (0.1, 0.46)
    assert {a.init for a in FIXED_ARMS.values()} == {"default"}
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for family, targets, fixed_lr, expected in (("nb201", ["3_33_133"], 0.0, 0.1), ("mlp", ["2_02"], 0.0, 0.46),
                                                 ("nb201", ["3_33_133"], 0.2, 0.2)):
        items = plan_step(family=family, targets=targets, seeds=[0], base_lr=0.46, fixed_lr=fixed_lr,
                          rule="sum-cubed", convention="reference", tracking_uri=uri, experiment="t",
                          run_group=f"g-{family}-{fixed_lr}", out_dir=str(tmp_path / family))
        arms = {i["arm"]: i for i in items}
        assert (arms["fixed"]["lr"], arms["fixed"]["init"]) == (pytest.approx(expected), "default")
        assert arms["autoscaled"]["init"] == "arch-aware" and arms["autoscaled"]["lr"] < 0.46


# --- deviations -----------------------------------------------------------------------------------------------------


def test_a_run_is_nb201_only_without_any_deviation():
    nb_split = {"source": "s3://b/cifar100-test-split.txt", "md5": "0" * 32, "nb201": True}
    exact = protocol_status("cifar100", **EXACT, budget=FULL_BUDGET, split=nb_split)
    assert (exact["label"], exact["names"], exact["deviations"]) == ("nb201", [], [])
    assert protocol_tags(exact) == {"protocol": "nb201", "protocol_deviations": "none"}
    assert exact["text"].startswith("NAS-Bench-201's protocol on cifar100: split file cifar100-test-split.txt")
    assert protocol_status("cifar10", **EXACT, budget=FULL_BUDGET, split=None)["label"] == "nb201"  # no split there

    every = protocol_status("cifar100", seeds=[777], amp="bf16", cell="pruned", indegree="live",
                            budget=budget_info(C=4, N=1, epochs=2, synthetic=True), split=None)
    assert every["label"] == "deviated" and every["names"] == list(DEVIATIONS)
    assert protocol_tags(every) == {"protocol": "deviated",
                                    "protocol_deviations": "budget,split,seeds,amp,cell,indegree"}
    text = {d["name"]: d["text"] for d in every["deviations"]}
    assert text["split"].startswith("no NB201 split file (cifar100-test-split.txt)")
    assert text["seeds"] == "seeds [777] (NB201: 777, 888, 999)" and "bf16" in text["amp"]
    assert text["budget"].startswith("REDUCED network/budget: C=4 channels")
    for name, change in (("split", {"split": None}), ("seeds", {"seeds": [777, 888]}), ("amp", {"amp": "auto"}),
                         ("cell", {"cell": "pruned"}), ("indegree", {"indegree": "live"}),
                         ("budget", {"budget": budget_info(C=16, N=5, epochs=200, max_steps_per_epoch=10)})):
        args = {**EXACT, "budget": FULL_BUDGET, "split": nb_split, **change}
        assert protocol_status("ImageNet16-120", **args)["names"] == [name], name
    other = protocol_status("cifar100", **EXACT, budget=FULL_BUDGET, split={**nb_split, "nb201": False})
    assert other["names"] == ["split"] and "is not NB201's cifar100-test-split.txt" in other["deviations"][0]["text"]


# --- NB201's split files ------------------------------------------------------------------------------------------


def test_nb201_split_files_pass_nb201s_own_check_without_an_md5(tmp_path):
    for dataset in ("cifar10-valid", "cifar100", "ImageNet16-120"):
        path = tmp_path / f"{dataset}.txt"
        first, second = nb201_like_split(dataset, path)
        keys = tuple(NB201_SPLIT_HEADS[dataset])
        split = read_split(path, dataset, keys, size=NB201_SPLIT_SETS[dataset])
        assert (split.verified, split.nb201, split.md5) == ("nb201", True, md5_file(path))
        assert split.indices[0].tolist() == first and split.indices[1].tolist() == second
    # another first index: not NB201's file; without its md5 it is refused, with it accepted (and not NB201's)
    path = tmp_path / "cifar100-test-split.txt"
    first, second = nb201_like_split("cifar100", path)
    write_split_file(path, ("xvalid", "xtest"), second, first)
    with pytest.raises(DataError, match=r"has no known md5 and is not NB201's cifar100 split \(cifar100-test-split"):
        read_split(path, "cifar100", ("xvalid", "xtest"))
    split = read_split(path, "cifar100", ("xvalid", "xtest"), checksums={path.name: md5_file(path)})
    assert (split.verified, split.nb201) == ("md5", False)
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        read_split(path, "cifar100", ("xvalid", "xtest"), checksums={path.name: "0" * 32})
    assert read_split(path, "cifar100", ("xvalid", "xtest"), verify=False).verified == "unverified"
    with pytest.raises(DataError, match="cannot read split file"):
        read_split(tmp_path / "absent.txt", "cifar100", ("xvalid", "xtest"))


def test_a_split_file_on_s3_is_fetched_and_verified(tmp_path, monkeypatch):
    boto3 = pytest.importorskip("boto3")
    path = tmp_path / "imagenet-16-120-test-split.txt"
    first, _ = nb201_like_split("ImageNet16-120", path)
    with moto_s3_server() as url:
        for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                     "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(k, v)
        s3 = boto3.client("s3", endpoint_url=url)
        s3.create_bucket(Bucket="nb201")
        s3.upload_file(str(path), "nb201", "configs/imagenet-16-120-test-split.txt")
        split = read_split("s3://nb201/configs/imagenet-16-120-test-split.txt", "ImageNet16-120",
                           ("xvalid", "xtest"), cache_dir=tmp_path / "cache", endpoint_url=url)
    assert (split.nb201, split.md5, split.indices[0].tolist()) == (True, md5_file(path), first)
    assert (tmp_path / "cache" / "splits" / "nb201" / "configs" / path.name).is_file()


def test_the_split_file_reaches_the_transfer_pipelines_training(tmp_path):
    """The transfer pipeline's train step (what its ``train`` component calls, with the pipeline's ``split_file``)
    evaluates on exactly the file's part (x-valid for cifar100 in that pipeline) and records the file's md5; the
    compiled pipeline's wiring of ``split_file`` into its tasks is checked in test_compile.py."""
    from ahps_core.data.synthetic import write_synthetic_datasets
    from ahps_core.steps.training import train_step

    data = tmp_path / "data"
    manifest = write_synthetic_datasets(data)
    split = data / "cifar100-test-split.txt"
    xvalid, _ = read_split(split, "cifar100", ("xvalid", "xtest"),
                           checksums={split.name: md5_file(split)}).indices
    common = dict(family="mlp", dataset="cifar100", data_source=str(data), epochs=1, train_recipe="", batch_size=32,
                  width=8, max_steps_per_epoch=1, device="cpu", rule="sum-cubed", convention="reference",
                  tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="t", run_group="g",
                  checkpoint_root="", s3_endpoint="", checksums_file=str(manifest))
    for arm, spec in (("fixed", "2_02"), ("autoscaled", "2_22")):
        item = {"arch": spec, "arm": arm, "seed": 0, "lr": 0.05, "init": "default", "run_group": "g"}
        summary = train_step(item=item, model_dir=str(tmp_path / arm), split_file=str(split), **common)
        assert summary["status"] == "completed"
        assert summary["data"]["split_md5"] == md5_file(split) and summary["data"]["eval_part"] == "valid"
        assert summary["data"]["eval_indices"] == indices_hash(xvalid)
        assert summary["data"]["eval_images"] == len(xvalid) == len(np.unique(xvalid))
    seeded = train_step(item={"arch": "2_02", "arm": "fixed", "seed": 1, "lr": 0.05, "run_group": "g"},
                        model_dir=str(tmp_path / "seeded"), **common)
    assert seeded["data"]["split"].startswith("seeded") and seeded["data"]["eval_indices"] != indices_hash(xvalid)
