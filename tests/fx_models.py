"""Test-only model factories for ``ahps lr --model MODULE:FACTORY`` and ``extract_graph`` tests.

Every model here is written out by hand (plain ``nn.Linear``/``nn.Conv2d`` layers and additions), not built by
``ahps_core.models.build_model``, so that graph extraction is checked against an independent implementation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DIGITS_SHAPE = (1, 8, 8)  # sklearn's 8x8 digits
DIGITS_CLASSES = 10


class Mlp_2_12_002_0012(nn.Module):
    """The reference MLP over DAG ``2_12_002_0012`` (two residual blocks of two Linear+ReLU layers), written out:

    h0 = relu(stem(flatten(x))); h1 = relu(l01(h0)); h2 = h0 + relu(l12(h1)); h3 = relu(l23(h2));
    h4 = h2 + relu(l34(h3)); logits = readout(h4).
    """

    def __init__(self, in_dim: int = 64, width: int = 32, classes: int = DIGITS_CLASSES) -> None:
        super().__init__()
        self.stem = nn.Linear(in_dim, width)
        self.l01 = nn.Linear(width, width)
        self.l12 = nn.Linear(width, width)
        self.l23 = nn.Linear(width, width)
        self.l34 = nn.Linear(width, width)
        self.readout = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h0 = F.relu(self.stem(torch.flatten(x, 1)))
        h1 = F.relu(self.l01(h0))
        h2 = h0 + F.relu(self.l12(h1))
        h3 = F.relu(self.l23(h2))
        h4 = h2 + F.relu(self.l34(h3))
        return self.readout(h4)


def mlp_2_12_002_0012() -> nn.Module:
    """Factory for ``ahps lr --model tests.fx_models:mlp_2_12_002_0012``: equivalent to the ``mlp`` DAG
    ``2_12_002_0012`` with stem and readout, on 8x8 digits."""
    return Mlp_2_12_002_0012()


class BasicBlock(nn.Module):
    """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN plus the shortcut (identity, or a 1x1 conv + BN projection
    when the block downsamples), then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class TinyResNet(nn.Module):
    """A torchvision-free ResNet: conv3x3 stem, two stages of two basic blocks (16 then 32 channels, the second
    stage downsampling with a projection shortcut), global average pooling, Linear head."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.stage1 = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 16))
        self.stage2 = nn.Sequential(BasicBlock(16, 32, stride=2), BasicBlock(32, 32))
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.stage1(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def tiny_resnet() -> nn.Module:
    """Factory for :class:`TinyResNet` (CIFAR-shaped input)."""
    return TinyResNet()
