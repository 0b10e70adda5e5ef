"""The packed training step records exactly what one train_step per item records (MLflow run keys, tags,
params, metrics, artifacts; the summaries), reuses finished runs, and groups a plan into packs."""

from __future__ import annotations

import pytest

from ahps_core.errors import ConfigError
from ahps_core.steps.pack import make_packs, pack_items, train_pack_step
from ahps_core.steps.training import train_step
from ahps_core.tracking import Tracker

ITEMS = [{"arch": a, "arm": arm, "seed": s, "lr": lr, "init": "arch-aware" if arm == "autoscaled" else "default",
          "base_lr": 0.5, "ratio": lr / 0.5, "predicted_lr": 0.2}
         for a in ("2_02", "2_12") for arm, lr in (("autoscaled", 0.2), ("fixed", 0.5)) for s in (0, 1)]
ARGS = dict(family="mlp", dataset="digits", data_source="", epochs=2, train_recipe="", batch_size=0, width=16,
            max_steps_per_epoch=5, device="cpu", rule="sum-cubed", convention="reference", experiment="ahps",
            checkpoint_root="", s3_endpoint="")
VOLATILE = {"mlflow_run_id", "seconds", "images_per_s", "checkpoint", "reused"}
#: Stacked MLP runs agree with their own runs to float rounding (bit for bit where MKL's batched and single matmuls
#: share kernels; otherwise measured 1e-7 relative): losses within 1e-5, accuracies equal.
LOSSES = ("train_loss", "eval_loss")
#: Tags that name the run's group and key, or the process that claimed it (the claim's owner and heartbeat).
PER_RUN_TAGS = ("ahps.run_group", "ahps.run_key", "ahps.owner", "ahps.heartbeat")


def _runs(uri: str, group: str):
    tr = Tracker(uri, "ahps", group)
    return {r.tags["ahps.run_key"].split("/", 1)[1]: r for r in tr.group_runs() if r.tags.get("ahps.kind") == "train"}


def _assert_same_run(tr: Tracker, got, ref) -> None:
    """``got`` (packed) records what ``ref`` (one train_step) records: status, params, tags (but the run group's
    and this process's claim), metric names and their steps, artifacts."""
    assert got.status == ref.status == "FINISHED"
    assert got.params == ref.params
    same_tags = {k: v for k, v in ref.tags.items() if not k.startswith("mlflow.") and k not in PER_RUN_TAGS}
    assert same_tags and {k: got.tags.get(k) for k in same_tags} == same_tags
    run_a, run_b = tr.client.get_run(ref.run_id), tr.client.get_run(got.run_id)
    assert sorted(run_b.data.metrics) == sorted(run_a.data.metrics)
    for name in run_a.data.metrics:
        assert [m.step for m in tr.client.get_metric_history(got.run_id, name)] == [
            m.step for m in tr.client.get_metric_history(ref.run_id, name)], name
    ref_art = sorted(f.path for f in tr.client.list_artifacts(ref.run_id)) + \
        sorted(f.path for f in tr.client.list_artifacts(ref.run_id, "model"))
    got_art = sorted(f.path for f in tr.client.list_artifacts(got.run_id)) + \
        sorted(f.path for f in tr.client.list_artifacts(got.run_id, "model"))
    assert got_art == ref_art


def test_make_packs():
    items = [dict(i, run_group="g") for i in ITEMS]
    packs = make_packs(items, 1)
    assert [p["archs"] for p in packs] == [["2_02"], ["2_12"]] and [len(p["items"]) for p in packs] == [4, 4]
    assert packs[0]["run_group"] == "g" and pack_items([p["items"] for p in packs]) == items
    assert [p["archs"] for p in make_packs(items, 2)] == [["2_02", "2_12"]]
    assert len(make_packs(items, 0)) == 8 and make_packs([], 1) == []
    assert pack_items([{"a": 1}, [{"b": 2}, {"c": 3}]]) == [{"a": 1}, {"b": 2}, {"c": 3}]
    with pytest.raises(ConfigError, match="pack -1"):
        make_packs(items, -1)


def test_a_pack_records_what_one_train_step_per_item_records(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    for group in ("single", "packed"):
        Tracker(uri, "ahps", group).ensure_parent(name=group)
    singles = [train_step(item=item, tracking_uri=uri, run_group="single", model_dir=str(tmp_path / "s" / str(i)),
                          **ARGS) for i, item in enumerate(ITEMS[:4])]
    pack = {"pack": 0, "archs": ["2_02"], "items": [dict(i, run_group="packed") for i in ITEMS[:4]]}
    packed = train_pack_step(pack=pack, tracking_uri=uri, model_dir=str(tmp_path / "p"), **ARGS)
    for a, b in zip(singles, packed, strict=True):
        skip = VOLATILE | set(LOSSES)
        assert {k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip}
        assert [b[k] for k in LOSSES] == pytest.approx([a[k] for k in LOSSES], rel=1e-5)
    single_runs, packed_runs = _runs(uri, "single"), _runs(uri, "packed")
    assert sorted(single_runs) == sorted(packed_runs) == sorted(
        f"2_02/{arm}/{s}" for arm in ("autoscaled", "fixed") for s in (0, 1))
    tr = Tracker(uri, "ahps", "x")
    for key, ref in single_runs.items():
        got = packed_runs[key]
        _assert_same_run(tr, got, ref)
        ref_hist = tr.client.get_metric_history(ref.run_id, "train_loss")
        got_hist = tr.client.get_metric_history(got.run_id, "train_loss")
        assert [m.step for m in got_hist] == [m.step for m in ref_hist]
        assert [m.value for m in got_hist] == pytest.approx([m.value for m in ref_hist], rel=1e-5)
        assert [m.value for m in tr.client.get_metric_history(got.run_id, "eval_acc")] == [
            m.value for m in tr.client.get_metric_history(ref.run_id, "eval_acc")]
    assert (tmp_path / "p" / "2_02" / "fixed" / "1" / "result.json").is_file()
    assert (tmp_path / "p" / "2_02" / "fixed" / "1" / "checkpoint" / "checkpoint.pt").is_file()

    again = train_pack_step(pack=pack, tracking_uri=uri, model_dir=str(tmp_path / "p2"), **ARGS)
    assert all(s["reused"] for s in again) and [s["mlflow_run_id"] for s in again] == [
        s["mlflow_run_id"] for s in packed]
    assert len(_runs(uri, "packed")) == 4  # nothing duplicated


def test_several_architectures_in_worker_processes(tmp_path):
    """workers='on' (what a GPU pack does with several architectures) runs each architecture in its own
    process; the results are those of the in-process pack."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = dict(ARGS, epochs=1, max_steps_per_epoch=3)
    items = [i for i in ITEMS if i["seed"] == 0]
    out = {}
    for group, workers in (("inproc", "off"), ("procs", "on")):
        Tracker(uri, "ahps", group).ensure_parent(name=group)
        pack = {"pack": 0, "archs": ["2_02", "2_12"], "items": [dict(i, run_group=group) for i in items]}
        out[group] = train_pack_step(pack=pack, tracking_uri=uri, model_dir=str(tmp_path / group), workers=workers,
                                     **args)
    assert [(s["arch"], s["arm"], s["seed"], s["train_loss"], s["eval_acc"]) for s in out["procs"]] == [
        (s["arch"], s["arm"], s["seed"], s["train_loss"], s["eval_acc"]) for s in out["inproc"]]
    assert len(_runs(uri, "procs")) == 4


def test_a_pack_of_finished_runs_imports_no_torch(tmp_path):
    """The reuse check (MLflow lookups by run key) comes before anything heavy: a task whose runs are all finished
    never imports torch (nor scikit-learn)."""
    import json
    import subprocess
    import sys

    from tests.conftest import REPO

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    Tracker(uri, "ahps", "g").ensure_parent(name="g")
    pack = {"pack": 0, "archs": ["2_02"], "items": [dict(i, run_group="g") for i in ITEMS[:2]]}
    args = dict(ARGS, epochs=1, max_steps_per_epoch=2)
    code = ("import json, sys\nfrom ahps_core.steps.pack import train_pack_step\n"
            f"out = train_pack_step(pack={pack!r}, tracking_uri={uri!r}, model_dir=sys.argv[1], **{args!r})\n"
            "print(json.dumps({'reused': [s['reused'] for s in out], 'torch': 'torch' in sys.modules, "
            "'sklearn': 'sklearn' in sys.modules}))\n")
    results = []
    for n in (1, 2):
        r = subprocess.run([sys.executable, "-c", code, str(tmp_path / f"m{n}")], capture_output=True, text=True,
                           cwd=REPO, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        results.append(json.loads(r.stdout.strip().splitlines()[-1]))
    assert results[0] == {"reused": [False, False], "torch": True, "sklearn": False}
    assert results[1] == {"reused": [True, True], "torch": False, "sklearn": False}


def test_local_runs_pack_the_architectures_into_the_parallel_slots():
    from ahps.orchestration.local import local_pack

    assert local_pack({"targets": ["a", "b", "c", "d", "e"]}, 2) == 3  # 5 targets, 2 slots: packs of 3 and 2
    assert local_pack({"targets": ["a"]}, 4) == 1 and local_pack({"sample_size": 3}, 2) == 2


def test_a_reevaluation_pack_records_what_reeval_train_step_records(tmp_path):
    """NB201 cells through the re-evaluation's packed step record exactly what ``reeval_train_step`` records, with
    #12's options passed through: the split file reaches the loader (the summary's ``data``), ``cell``/
    ``indegree``/``amp`` reach the configuration (hash and params), the protocol tags reach the run, and the files
    (result, reevaluation, checkpoint with its identity sidecar) are the same."""
    import json

    from ahps_core.data.checksums import md5_file
    from ahps_core.data.synthetic import write_synthetic_datasets
    from ahps_core.steps.reevaluate import reeval_train_pack_step, reeval_train_step

    data = tmp_path / "data"
    manifest = write_synthetic_datasets(data)
    split = data / "cifar100-test-split.txt"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cell = "|nor_conv_3x3~0|+|skip_connect~0|none~1|+|avg_pool_3x3~0|none~1|nor_conv_1x1~2|"
    items = [{"arch": cell, "arm": "autoscaled", "seed": s, "lr": 0.05, "init": "arch-aware", "benchmark_acc": 60.0,
              "benchmark_index": 7, "arch_code": "c7", "budget": "reduced", "protocol": "deviated",
              "protocol_deviations": "budget,seeds"} for s in (777, 888)]
    args = dict(dataset="cifar100", data_source=str(data), checksums_file=str(manifest), epochs=1, batch_size=32,
                C=4, N=1, max_steps_per_epoch=2, device="cpu", rule="effective-depth", convention="wu",
                tracking_uri=uri, experiment="ahps", checkpoint_root="", s3_endpoint="", split_file=str(split),
                amp="off", cell="full", indegree="all")
    for group in ("single", "packed"):
        Tracker(uri, "ahps", group).ensure_parent(name=group)
    singles = [reeval_train_step(item=dict(item, run_group="single"), model_dir=str(tmp_path / "s" / str(n)),
                                 **args) for n, item in enumerate(items)]
    pack = {"pack": 0, "archs": [cell], "items": [dict(i, run_group="packed") for i in items]}
    packed = reeval_train_pack_step(pack=pack, model_dir=str(tmp_path / "p"), **args)
    for a, b in zip(singles, packed, strict=True):  # a convolutional network on CPU: each run trains alone
        assert {k: v for k, v in a.items() if k not in VOLATILE} == {k: v for k, v in b.items() if k not in VOLATILE}
        assert b["data"]["split_md5"] == md5_file(split) and b["data"]["eval_part"] == "test"
        assert b["amp"] == "off" and "new_acc" in b and b["delta"] == pytest.approx(b["new_acc"] - 60.0)
    single_runs, packed_runs = _runs(uri, "single"), _runs(uri, "packed")
    assert len(single_runs) == len(packed_runs) == 2
    tr = Tracker(uri, "ahps", "x")
    for key, ref in single_runs.items():
        got = packed_runs[key]
        _assert_same_run(tr, got, ref)
        assert (got.tags["protocol"], got.tags["protocol_deviations"]) == ("deviated", "budget,seeds")
        assert (got.params["cell"], got.params["indegree"], got.params["amp"]) == ("full", "all", "off")
        assert got.params["split_file"] == str(split)
        assert tr.client.get_run(got.run_id).data.metrics["new_acc"] == pytest.approx(
            tr.client.get_run(ref.run_id).data.metrics["new_acc"])
    for n, item in enumerate(items):
        single_dir = tmp_path / "s" / str(n)
        packed_dir = tmp_path / "p" / cell_dir(cell) / "autoscaled" / str(item["seed"])
        for name in ("result.json", "reevaluation.json", "checkpoint/checkpoint.json", "checkpoint/checkpoint.pt",
                     "checkpoint/result.json"):
            assert (single_dir / name).is_file() and (packed_dir / name).is_file(), name
        sidecar = [json.loads((d / "checkpoint" / "checkpoint.json").read_text()) for d in (single_dir, packed_dir)]
        assert sidecar[0] == sidecar[1]


def cell_dir(arch: str) -> str:
    from ahps_core.storage import slug

    return slug(arch)
