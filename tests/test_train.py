"""The training engine: exact resume, divergence, schedule, optimizer, checkpoints, config validation."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from ahps_core.data import load_dataset
from ahps_core.errors import ConfigError
from ahps_core.presets import (
    PER_DATASET,
    PRESETS,
    default_budget,
    default_preset,
    default_width,
    preset_values,
    recipe_config,
)
from ahps_core.runtime import make_train_loader
from ahps_core.train import (
    TrainConfig,
    TrainResult,
    build_config_model,
    lr_at,
    schedule_steps,
    train,
)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def small(**kw) -> TrainConfig:
    base = dict(family="mlp", arch="2_02", dataset="digits", width=32, epochs=3, batch_size=64, lr=0.05,
                momentum=0.9, nesterov=True, weight_decay=5e-4, schedule="cosine", warmup_epochs=1.0,
                max_steps_per_epoch=6, device="cpu", seed=3)
    base.update(kw)
    return TrainConfig(**base)


def _strip(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def test_interrupted_and_resumed_run_equals_uninterrupted_bit_for_bit(tmp_path, digits):
    ref_model = build_config_model(small(), digits)
    ref = train(small(checkpoint_dir=str(tmp_path / "a")), model=ref_model, data=digits)
    assert ref.status == "completed" and len(ref.history) == 3 and ref.resumed_from == 0

    class Interrupt(Exception):
        pass

    def stop_after_first(record):
        if record["epoch"] == 1:
            raise Interrupt

    ckpt = tmp_path / "b"
    with pytest.raises(Interrupt):
        train(small(checkpoint_dir=str(ckpt)), model=build_config_model(small(), digits), data=digits,
              callback=stop_after_first)
    assert (ckpt / "checkpoint.pt").exists() and not list(ckpt.glob("*.tmp"))
    # a fresh process would rebuild the model from scratch: resume must restore everything from the checkpoint
    fresh = build_config_model(small(seed=99), digits)
    resumed = train(small(checkpoint_dir=str(ckpt)), model=fresh, data=digits)
    assert resumed.resumed_from == 1 and resumed.status == "completed"
    assert _strip(resumed.history) == _strip(ref.history)
    assert resumed.final["train_loss"] == ref.final["train_loss"]
    assert resumed.final["eval_acc"] == ref.final["eval_acc"]
    for (ka, a), (kb, b) in zip(ref_model.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(a, b), ka
    # a finished run started again returns its result without training
    again = train(small(checkpoint_dir=str(ckpt)), model=build_config_model(small(), digits), data=digits)
    assert _strip(again.history) == _strip(ref.history)
    json.dumps(again.to_dict(), allow_nan=False)


def test_checkpoint_of_another_config_is_an_error(tmp_path, digits):
    train(small(epochs=1, checkpoint_dir=str(tmp_path)), data=digits)
    with pytest.raises(ConfigError, match="different configuration"):
        train(small(epochs=1, lr=0.01, checkpoint_dir=str(tmp_path)), data=digits)


class NanAfter(nn.Module):
    """Wraps a model; its output becomes NaN from the ``after``-th forward call on (a controlled divergence)."""

    def __init__(self, inner: nn.Module, after: int) -> None:
        super().__init__()
        self.inner, self.after, self.calls = inner, after, 0

    def forward(self, x):
        out = self.inner(x)
        if self.training:
            self.calls += 1
            if self.calls > self.after:
                return out * float("nan")
        return out


def test_divergence_stops_with_status_and_keeps_history(digits):
    cfg = small(epochs=4, max_steps_per_epoch=5)
    model = NanAfter(build_config_model(cfg, digits), after=12)  # steps 0-11 fine: epochs 1, 2 complete
    res = train(cfg, model=model, data=digits)
    assert res.status == "diverged" and res.diverged
    assert [h["epoch"] for h in res.history] == [1, 2]
    assert res.diverged_at == {"epoch": 3, "step": 2}
    assert res.final_train_loss == math.inf
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the NaN step was not applied
    payload = json.dumps(res.to_dict(), allow_nan=False)
    assert TrainResult.from_dict(json.loads(payload)).final_train_loss == math.inf


def test_huge_lr_diverges_without_exception(digits):
    res = train(small(lr=1e6, epochs=2, momentum=0.0, nesterov=False, schedule="constant", warmup_epochs=0),
                data=digits)
    assert res.status == "diverged" and res.final["train_loss"] == math.inf


def test_schedule_values():
    kw = dict(base_lr=0.1, total_steps=10, warmup_steps=2, schedule="cosine")
    assert [lr_at(s, **kw) for s in (0, 1)] == [0.05, 0.1]
    assert lr_at(2, **kw) == pytest.approx(0.1)
    assert lr_at(6, **kw) == pytest.approx(0.05)  # half way through the cosine part
    assert lr_at(9, **kw) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert lr_at(10, **kw) == pytest.approx(0.0, abs=1e-15)
    assert [lr_at(s, base_lr=0.1, total_steps=10, schedule="constant") for s in (0, 9)] == [0.1, 0.1]
    assert schedule_steps(small(epochs=4, warmup_epochs=0.5), 10) == (40, 5)


def test_recorded_lr_follows_schedule(digits):
    res = train(small(epochs=2, eval_every=0), data=digits)
    assert res.history[0]["lr"] == pytest.approx(0.05)  # last warmup step: (5 + 1) / 6 * lr
    assert res.history[1]["lr"] == pytest.approx(0.05 * 0.5 * (1 + math.cos(math.pi * 5 / 6)))


def test_nesterov_and_weight_decay_match_torch_sgd(digits):
    cfg = small(epochs=1, schedule="constant", warmup_epochs=0, eval_every=0, max_steps_per_epoch=4)
    ours = build_config_model(cfg, digits)
    train(cfg, model=ours, data=digits)

    ref = build_config_model(cfg, digits)
    opt = torch.optim.SGD(ref.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loader = make_train_loader(cfg, digits, torch.device("cpu"), channels_last=False)
    for i, (x, y) in enumerate(loader.epoch(0)):
        if i == 4:
            break
        loss = nn.functional.cross_entropy(ref(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)

    plain = build_config_model(cfg, digits)
    train(cfg.replace(nesterov=False, weight_decay=0.0), model=plain, data=digits)
    assert not all(torch.equal(a, b) for a, b in zip(ours.parameters(), plain.parameters(), strict=True))


def test_truncated_epochs_and_metrics(digits):
    res = train(small(epochs=1, max_steps_per_epoch=3, batch_size=32), data=digits)
    rec = res.history[0]
    assert rec["steps"] == 3 and rec["images"] == 96
    assert 0 <= rec["train_acc"] <= 1 and 0 <= rec["eval_acc"] <= 1 and rec["eval_loss"] > 0
    assert res.num_params > 0 and res.images_per_s > 0 and res.channels_last is False and res.amp == "off"


def test_presets():
    nb = recipe_config("nb201", lr=0.2)
    assert (nb.epochs, nb.batch_size, nb.lr, nb.momentum, nb.nesterov, nb.weight_decay, nb.schedule) == (
        200, 256, 0.2, 0.9, True, 5e-4, "cosine")
    probe = recipe_config("probe", lr=0.1)
    assert probe.momentum == 0 and probe.schedule == "constant" and probe.eval_every == 0
    assert set(PRESETS) == {"nb201", "probe", "reference"}
    with pytest.raises(ConfigError, match="unknown recipe 'adam': accepted are nb201, probe, reference"):
        recipe_config("adam")
    with pytest.raises(ConfigError, match="unknown preset 'adam'"):
        preset_values("adam", family="mlp", dataset="digits")


def test_every_family_default_is_a_named_preset_with_the_probe_setting():
    """mlp/cnn train by default with ``reference``: plain SGD at a constant LR with the probe's batch size and
    hidden width on the dataset (digits: batch 32, width 128; elsewhere batch 128 and the model's width)."""
    assert {f: default_preset(f) for f in ("mlp", "cnn", "nb201")} == {"mlp": "reference", "cnn": "reference",
                                                                         "nb201": "nb201"}
    assert PRESETS["reference"]["batch_size"] == PRESETS["reference"]["width"] == PER_DATASET
    digits = preset_values("reference", family="cnn", dataset="digits")
    assert (digits["batch_size"], digits["width"]) == (default_budget("digits").batch_size, 128) == (32, 128)
    cifar = preset_values("reference", family="mlp", dataset="cifar10")
    assert (cifar["batch_size"], cifar["width"]) == (128, default_width("mlp", "cifar10")) == (128, None)
    assert (cifar["momentum"], cifar["schedule"], cifar["eval_every"]) == (0.0, "constant", 1)
    config = recipe_config("reference", family="mlp", dataset="digits", lr=0.3)
    assert (config.batch_size, config.width, config.lr, config.nesterov) == (32, 128, 0.3, False)
    assert preset_values("nb201", family="mlp", dataset="digits") == PRESETS["nb201"]  # nothing per dataset
    for name in PRESETS:
        TrainConfig.from_dict(preset_values(name, family="mlp", dataset="digits")).validated()
    with pytest.raises(ConfigError, match="unknown family 'graph'"):
        default_preset("graph")


@pytest.mark.parametrize("changes,message", [
    (dict(lr=0.0), "learning rate 0.0"),
    (dict(lr=-1.0), "learning rate -1.0"),
    (dict(schedule="step"), "unknown schedule 'step'"),
    (dict(epochs=0), "epochs 0"),
    (dict(momentum=0.0, nesterov=True), "nesterov needs momentum"),
    (dict(device="tpu"), "unknown device 'tpu'"),
    (dict(family="rnn"), "unknown family 'rnn'"),
])
def test_config_validation(changes, message):
    with pytest.raises(ConfigError, match=message):
        small(**changes).validated()
