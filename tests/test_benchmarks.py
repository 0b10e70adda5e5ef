"""Benchmark records: the real NATS-Bench fixture (architectures 0, 11, 284) through every adapter.

The accuracies below were read once by hand with the official API,
``nats_bench.create(FIXTURE_DIR, 'tss', fast_mode=True).query_meta_info_by_index(i, hp='200')``, trial by
trial (``.query(dataset)[seed].get_eval(set)['accuracy']``, final epoch), and are the ground truth here.
"""

from __future__ import annotations

import bz2
import json
import os
import pickle
import shutil

import pytest
import torch
from nb201_fixture import FIXTURE_DIR, drop_seed, nats_dict, nb201_dict

from ahps_core.benchmarks import DATASETS, EXPECTED_SEEDS, open_benchmark
from ahps_core.errors import ArchSpecError, BenchmarkError, ConfigError
from ahps_core.graph import parse_arch

ARCH = {
    0: "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|",
    11: "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|none~0|nor_conv_3x3~1|avg_pool_3x3~2|",
    284: "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|none~0|nor_conv_1x1~1|none~2|",
}
CODE = {0: "4_21_211", 11: "3_34_034", 284: "1_11_020"}

# (index, dataset) -> (test accuracy per seed 777/888/999, valid accuracy per seed or None), 200 epochs.
# cifar10: 'ori-test' (trained on train+valid; no valid split); cifar10-valid: test 'ori-test', valid 'x-valid';
# cifar100 / ImageNet16-120: test 'x-test', valid 'x-valid'.
TRUTH = {
    (0, "cifar10"): ((85.62, 86.18, 85.79), None),
    (0, "cifar10-valid"): ((81.52, 81.9, 81.14), (82.09199998291015, 81.61599997314453, 82.24000001464844)),
    (0, "cifar100"): (
        (51.97999997558594, 53.67999995727539, 53.07999995117188),
        (51.87999996948242, 53.07999993286133, 53.13999993896484),
    ),
    (0, "ImageNet16-120"): (
        (27.033333257039388, 25.766666610717774, 27.099999954223634),
        (28.333333353678384, 27.366666666666667, 28.933333257039386),
    ),
    (11, "cifar10"): ((91.79, 91.76, 91.2), None),
    (11, "cifar10-valid"): ((87.6, 87.96, 87.39), (87.74800000488281, 88.13199999511718, 87.93999999511719)),
    (11, "cifar100"): (
        (66.86000006103515, 67.67999995117188, 68.27999991455079),
        (67.71999993896485, 68.17999992675782, 66.45999992675782),
    ),
    (11, "ImageNet16-120"): (
        (29.233333333333334, 30.966666564941406, 30.299999908447266),
        (29.36666665649414, 31.43333332824707, 30.43333332824707),
    ),
    (284, "cifar10"): ((88.73, 88.55, 89.09), None),
    (284, "cifar10-valid"): ((85.83, 85.57, 85.51), (86.05199997802734, 86.02000001464843, 86.06799999755859)),
    (284, "cifar100"): (
        (63.0, 61.76000001220703, 61.65999991455078),
        (62.060000006103515, 62.13999999389648, 60.83999996337891),
    ),
    (284, "ImageNet16-120"): (
        (32.59999996439616, 31.933333201090495, 32.86666650390625),
        (33.93333337402344, 33.06666665140788, 33.199999928792316),
    ),
}


@pytest.fixture(scope="module")
def simple():
    return open_benchmark(FIXTURE_DIR)


@pytest.fixture(scope="module")
def nb201_pth(tmp_path_factory):
    path = tmp_path_factory.mktemp("nb201") / "NAS-Bench-201-fixture.pth"
    torch.save(nb201_dict(), path)
    return path


def assert_truth(records, index, dataset):
    test, valid = TRUTH[(index, dataset)]
    rec = records.query(ARCH[index], dataset)
    assert (rec.index, rec.arch_str, rec.dataset, rec.epochs) == (index, ARCH[index], dataset, 200)
    assert rec.test_acc_per_seed == pytest.approx(dict(zip(EXPECTED_SEEDS, test, strict=True)), abs=1e-9)
    assert rec.test_acc_mean == pytest.approx(sum(test) / 3, abs=1e-9)
    if valid is None:
        assert rec.valid_set is None and rec.valid_acc_per_seed == {} and "no validation split" in rec.note
    else:
        assert rec.valid_acc_per_seed == pytest.approx(dict(zip(EXPECTED_SEEDS, valid, strict=True)), abs=1e-9)
    headline = valid if dataset == "cifar10-valid" else test
    assert rec.acc_mean == pytest.approx(sum(headline) / 3, abs=1e-9)
    assert rec.missing_seeds == ()
    return rec


@pytest.mark.parametrize("index", sorted(ARCH))
@pytest.mark.parametrize("dataset", list(DATASETS))
def test_simple_dir_gives_the_recorded_accuracies(simple, index, dataset):
    assert_truth(simple, index, dataset)


def test_simple_dir_listing(simple):
    assert simple.format == "nats-tss-simple"
    assert len(simple) == 3 and simple.space_size == 15625
    assert simple.indices() == [0, 11, 284]
    assert simple.arch_strs() == [ARCH[0], ARCH[11], ARCH[284]]
    assert simple.arch_str(11) == ARCH[11]


def test_every_spec_form_finds_the_same_record(simple):
    by_str = simple.query(ARCH[11], "cifar100")
    for spec in (CODE[11], f"nb201:{CODE[11]}", parse_arch(CODE[11], "nb201"), 11):
        assert simple.query(spec, "cifar100") == by_str


def test_the_official_api_agrees_per_seed_and_on_the_mean(simple):
    import nats_bench

    api = nats_bench.create(str(FIXTURE_DIR), "tss", fast_mode=True, verbose=False)
    for index in ARCH:
        for dataset in DATASETS:
            rec = simple.query(index, dataset)
            for seed in EXPECTED_SEEDS:
                info = api.get_more_info(index, dataset, hp="200", is_random=seed)
                assert rec.test_acc_per_seed[seed] == info["test-accuracy"]
                if rec.valid_set:
                    assert rec.valid_acc_per_seed[seed] == info["valid-accuracy"]
            mean = api.get_more_info(index, dataset, hp="200", is_random=False)
            assert rec.test_acc_mean == pytest.approx(mean["test-accuracy"], abs=1e-9)


def test_nb201_pth_file_gives_the_same_numbers(simple, nb201_pth):
    records = open_benchmark(nb201_pth)
    assert records.format == "nas-bench-201" and len(records) == 3 and records.space_size == 15625
    for index in ARCH:
        for dataset in DATASETS:
            assert assert_truth(records, index, dataset) == simple.query(index, dataset)


def test_dicts_and_api_objects_are_accepted(simple):
    from nas_201_api import NASBench201API

    data = nb201_dict()
    for source in (data, NASBench201API(data, verbose=False), nats_dict()):
        records = open_benchmark(source)
        assert records.indices() == [0, 11, 284]
        assert records.query(284, "ImageNet16-120") == simple.query(284, "ImageNet16-120")


def test_nats_single_file_and_fast_mode_api(simple, tmp_path):
    import nats_bench
    from nats_bench.api_utils import pickle_save

    pickle_save(nats_dict(), str(tmp_path / "NATS-tss-fixture.pickle"))  # appends .pbz2
    records = open_benchmark(tmp_path / "NATS-tss-fixture.pickle.pbz2")
    assert records.format == "nats-tss" and records.query(0, "cifar10") == simple.query(0, "cifar10")
    api = nats_bench.create(str(FIXTURE_DIR), "tss", fast_mode=True, verbose=False)
    assert open_benchmark(api).query(11, "cifar10-valid") == simple.query(11, "cifar10-valid")


def test_a_missing_seed_is_reported_not_hidden(tmp_path):
    data = nb201_dict()
    data["arch2infos"][11]["full"] = drop_seed(data["arch2infos"][11]["full"], "cifar100", 888)
    path = tmp_path / "gap.pth"
    torch.save(data, path)
    rec = open_benchmark(path).query(11, "cifar100")
    test, _ = TRUTH[(11, "cifar100")]
    assert rec.missing_seeds == (888,)
    assert rec.test_acc_per_seed == pytest.approx({777: test[0], 999: test[2]})
    assert rec.acc_mean == pytest.approx((test[0] + test[2]) / 2)
    assert "888" in rec.note and "2 seed" in rec.note


def test_the_12_epoch_runs_are_never_used(tmp_path):
    data = nb201_dict()
    del data["arch2infos"][0]["full"]  # only the 12-epoch ('less') results left: the API must refuse
    with pytest.raises(BenchmarkError, match="full"):
        open_benchmark(data).query(0, "cifar10")


def test_record_to_dict_is_json(simple):
    d = simple.query(0, "cifar10").to_dict()
    assert json.loads(json.dumps(d, allow_nan=False))["test_acc_per_seed"]["777"] == 85.62
    assert d["valid_acc_mean"] is None and d["headline_set"] == "ori-test"


def test_seed_accuracies_and_accuracies(simple):
    acc = simple.accuracies("cifar10")
    seeds = simple.seed_accuracies("cifar10")
    assert set(acc) == set(seeds) == set(ARCH.values())
    assert seeds[ARCH[11]] == pytest.approx(dict(zip(EXPECTED_SEEDS, TRUTH[(11, "cifar10")][0], strict=True)))
    assert acc[ARCH[11]] == pytest.approx(sum(TRUTH[(11, "cifar10")][0]) / 3)


def test_lazy_loading_reads_only_queried_architectures(tmp_path):
    for name in ("meta.pickle.pbz2", "000011.pickle.pbz2"):
        shutil.copy(FIXTURE_DIR / name, tmp_path / name)
    (tmp_path / "000005.pickle.pbz2").write_bytes(b"not bz2")
    records = open_benchmark(tmp_path)  # opening touches no architecture file
    assert records.indices() == [5, 11]
    assert_truth(records, 11, "cifar10")
    with pytest.raises(BenchmarkError, match="000005"):
        records.query(5, "cifar10")


class Exploit:
    """Unpickling it runs a shell command, unless the loader refuses ``os.system``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_untrusted_nats_pickles_are_refused_before_running_code(tmp_path):
    marker = tmp_path / "pwned"
    with bz2.open(tmp_path / "meta.pickle.pbz2", "wb") as fh:
        pickle.dump({"meta_archs": [Exploit(marker)]}, fh)
    with pytest.raises(BenchmarkError, match="refused global"):
        open_benchmark(tmp_path)
    assert not marker.exists()


def test_untrusted_nb201_files_are_refused_before_running_code(tmp_path):
    marker = tmp_path / "pwned"
    data = nb201_dict((0,))
    data["total_archs"] = Exploit(marker)
    torch.save(data, tmp_path / "evil.pth")
    with pytest.raises(BenchmarkError, match="cannot load NAS-Bench-201 file"):
        open_benchmark(tmp_path / "evil.pth")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: p / "missing", "does not exist.*accepted are"),
        (lambda p: p, "has no meta.pickle.pbz2"),
        (lambda p: (p / "x.csv").write_text("a") and p / "x.csv", "unknown format.*'.pth'"),
        (lambda p: (p / "x.pth").write_bytes(b"junk") and p / "x.pth", "cannot load NAS-Bench-201 file"),
        (lambda p: shutil.copy(FIXTURE_DIR / "000011.pickle.pbz2", p), "open the directory"),
    ],
)
def test_bad_benchmark_paths_name_the_path(tmp_path, make, match):
    path = make(tmp_path)
    with pytest.raises(BenchmarkError, match=match) as err:
        open_benchmark(path)
    assert str(tmp_path) in str(err.value)


def test_bad_queries(simple):
    with pytest.raises(ConfigError, match="'imagenet'.*cifar10, cifar10-valid, cifar100, ImageNet16-120"):
        simple.query(0, "imagenet")
    with pytest.raises(BenchmarkError, match=r"index 5\).*3 of 15625"):
        simple.query(5, "cifar10")
    with pytest.raises(BenchmarkError, match="out of range"):
        simple.query(15625, "cifar10")
    with pytest.raises(ConfigError, match="nb201 cells"):
        simple.query("mlp:2_02_002", "cifar10")
    with pytest.raises(ArchSpecError):
        simple.query("|bogus~0|", "cifar10")
    with pytest.raises(BenchmarkError, match="accepted are"):
        open_benchmark(42)


def test_packaged_fixture_equals_the_team_copy():
    import hashlib

    from nb201_fixture import FIXTURE_DIR, SHARED_FIXTURE_DIR

    if not SHARED_FIXTURE_DIR.is_dir():
        pytest.skip("the team's fixture copy is not checked out beside the repository")
    names = sorted(p.name for p in SHARED_FIXTURE_DIR.iterdir())
    assert names == sorted(p.name for p in FIXTURE_DIR.iterdir() if not p.name.startswith("__"))
    for name in names:
        a = hashlib.sha256((SHARED_FIXTURE_DIR / name).read_bytes()).hexdigest()
        assert a == hashlib.sha256((FIXTURE_DIR / name).read_bytes()).hexdigest(), name
