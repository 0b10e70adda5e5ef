"""A model family defined outside ahps (for the bring-your-own-model tests): plain ReLU MLPs written with torch.nn,
initialized by PyTorch's defaults, named ``depth1``, ``depth2``, ...; and a residual variant ``res2``, ``res3``."""

from __future__ import annotations

import math

import torch
from torch import nn


class Chain(nn.Module):
    """``depth`` hidden layers of ReLU(Linear), then a linear readout; inputs are flattened."""

    def __init__(self, depth: int, *, d_in: int = 64, width: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth - 1))
        self.out = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(torch.flatten(x, 1)))
        for layer in self.hidden:
            h = torch.relu(layer(h))
        return self.out(h)


class Residual(Chain):
    """Like :class:`Chain`, but every hidden layer is a residual block ``h + ReLU(Linear(h)) / sqrt(2)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(torch.flatten(x, 1)))
        for layer in self.hidden:
            h = h + torch.relu(layer(h)) / math.sqrt(2)
        return self.out(h)


def make(name: str) -> nn.Module:
    """``depthN`` -> :class:`Chain` (N hidden layers), ``resN`` -> :class:`Residual`, on digits' 8x8 inputs."""
    for prefix, cls in (("depth", Chain), ("res", Residual)):
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            return cls(int(name[len(prefix):]))
    raise ValueError(f"unknown network {name!r}: expected depthN or resN")


def make_proxy() -> nn.Module:
    """A factory without arguments: the one-hidden-layer proxy."""
    return Chain(1)


def make_for_blobs(name: str) -> nn.Module:
    """The same family for ``tests.user_data`` vectors (12 features, 3 classes)."""
    return Chain(int(name.removeprefix("depth")), d_in=12, width=16, classes=3)


def make_wrong_classes(name: str) -> nn.Module:
    """Digits' inputs, but 3 logits (a mismatch ahps reports before training)."""
    return Chain(int(name.removeprefix("depth")), classes=3)
