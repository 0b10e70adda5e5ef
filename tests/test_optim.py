"""ahps_core.optim.SGD: torch.optim.SGD's arithmetic (bit for bit on CPU) and state format, per-run LRs for
stacked parameters, and no torch._dynamo import."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from ahps_core.optim import SGD, block_rates
from tests.conftest import REPO


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def _steps(model: nn.Module, opt, lrs) -> None:
    g = torch.Generator().manual_seed(1)
    for lr in lrs:
        x, y = torch.randn(5, 6, generator=g), torch.randint(0, 3, (5,), generator=g)
        opt.param_groups[0]["lr"] = lr
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("momentum,nesterov,wd", [(0.0, False, 0.0), (0.9, False, 0.0), (0.9, True, 5e-4),
                                                  (0.5, False, 1e-3)])
def test_bit_identical_to_torch_sgd_and_same_state_format(momentum, nesterov, wd):
    ours, ref = _net(0), _net(0)
    opt = SGD(ours.parameters(), lr=0.3, momentum=momentum, nesterov=nesterov, weight_decay=wd)
    topt = torch.optim.SGD(ref.parameters(), lr=0.3, momentum=momentum, nesterov=nesterov, weight_decay=wd)
    lrs = [0.3, 0.2, 0.1234567, 0.05]
    _steps(ours, opt, lrs)
    _steps(ref, topt, lrs)
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)
    mine, theirs = opt.state_dict(), topt.state_dict()
    assert mine["param_groups"] == theirs["param_groups"]
    assert mine["state"].keys() == theirs["state"].keys()
    for i, entry in theirs["state"].items():
        assert torch.equal(mine["state"][i]["momentum_buffer"], entry["momentum_buffer"])
    # each loads the other's state and continues identically
    back = SGD(_net(0).parameters(), lr=0.3, momentum=momentum, nesterov=nesterov, weight_decay=wd)
    back.load_state_dict(theirs)
    topt2 = torch.optim.SGD(_net(0).parameters(), lr=0.3, momentum=momentum, nesterov=nesterov, weight_decay=wd)
    topt2.load_state_dict(mine)
    for a, b in zip(back.momentum_buffers, [topt2.state[p].get("momentum_buffer") for p in topt2.param_groups[0]
                                             ["params"]], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)


def test_per_run_lrs_of_stacked_parameters_equal_separate_runs():
    """dim 0 of a stacked parameter holds K runs' blocks ([K, ...] or [K * C, ...]); each block is updated
    exactly as its own run with its own LR."""
    g = torch.Generator().manual_seed(0)
    lrs = [0.1, 0.37, 0.0123]
    stacked = torch.randn(3, 4, 5, generator=g)
    concat = torch.randn(3 * 2, 4, 3, 3, generator=g).contiguous(memory_format=torch.channels_last)
    grads = [torch.randn_like(stacked), torch.randn_like(concat)]
    singles = [[stacked[k].clone() for k in range(3)], [concat[2 * k:2 * k + 2].clone() for k in range(3)]]
    single_grads = [[grads[0][k] for k in range(3)], [grads[1][2 * k:2 * k + 2] for k in range(3)]]
    for step in range(3):
        lr_vec = torch.tensor(lrs) * (step + 1)
        opt_params = [stacked, concat]
        for p, gr in zip(opt_params, grads, strict=True):
            p.grad = gr.clone()
        if step == 0:
            opt = SGD(opt_params, lr=lr_vec, momentum=0.9, nesterov=True, weight_decay=1e-3)
            refs = [[SGD([p], lr=lrs[k], momentum=0.9, nesterov=True, weight_decay=1e-3)
                     for k, p in enumerate(ps)] for ps in singles]
        opt.param_groups[0]["lr"] = lr_vec
        opt.step()
        for ps, gs, ros in zip(singles, single_grads, refs, strict=True):
            for k, (p, gr, ro) in enumerate(zip(ps, gs, ros, strict=True)):
                p.grad = gr.clone()
                ro.param_groups[0]["lr"] = float(lr_vec[k])
                ro.step()
    for k in range(3):
        assert torch.equal(stacked[k], singles[0][k])
        assert torch.equal(concat[2 * k:2 * k + 2], singles[1][k])
    assert block_rates(torch.tensor([1.0, 2.0]), torch.zeros(4, 3)).flatten().tolist() == [1.0, 1.0, 2.0, 2.0]


def test_constructing_and_stepping_does_not_import_dynamo():
    code = ("import sys, torch\nfrom ahps_core.optim import SGD\nm = torch.nn.Linear(3, 3)\n"
            "o = SGD(m.parameters(), lr=0.1, momentum=0.9)\nm(torch.randn(2, 3)).sum().backward()\no.step()\n"
            "assert 'torch._dynamo' not in sys.modules\n"
            "torch.optim.SGD(m.parameters(), lr=0.1)\nassert 'torch._dynamo' in sys.modules  # the check can fail\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
