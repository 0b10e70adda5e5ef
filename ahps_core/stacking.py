"""K networks of one architecture as ONE network: the layout packed training (:mod:`ahps_core.packed`) trains.

:class:`ModelStack` copies the first model's module tree and replaces every layer with parameters by its
K-run version, so the stacked network computes all K runs in one pass, each run on its own input:

* ``nn.Conv2d(cin, cout, groups=g)`` -> ``nn.Conv2d(K*cin, K*cout, groups=K*g)``: a grouped convolution whose
  group block ``k`` holds run ``k``'s weights (weights concatenated along dim 0);
* ``nn.BatchNorm2d(C)`` -> ``nn.BatchNorm2d(K*C)``: batch statistics per channel are per run (running stats
  concatenated; ``num_batches_tracked`` becomes a ``[K]`` counter, one per run);
* ``nn.Linear(in, out)`` -> :class:`StackedLinear`: weights ``[K, in, out]`` (transposed), one batched matmul
  (``torch.baddbmm``) over the K runs.

Convolutional activations travel run-major along the channel axis, ``[B, K*C, H, W]``, block ``k`` being run
``k``'s; linear layers take ``[B, K*F]`` (a flattened or pooled feature map) or ``[K, B, F]`` and return
``[K, B, F]``. Element-wise ops, pooling, flattening and sums of same-layout tensors therefore act per run
unchanged, and the readout (the model's last layer must be an ``nn.Linear``) returns ``[K, B, classes]``. Every
run's logits and gradients equal its own network's to float rounding: on CPU bit for bit for MLPs where MKL's
batched matmul computes each block with the single matmul's kernel (not on every CPU), within the tolerances
``tests/test_packed.py`` states for grouped convolutions; on GPU to floating-point tolerance.

A network is stackable when every module with parameters or buffers is one of those three (BatchNorm with a
running-average ``momentum``); :func:`stackable` says why not otherwise. Run ``k``'s state dict
(:meth:`ModelStack.state_of`) has the keys, shapes and memory formats of its own network's, so checkpoints are
exactly those of :func:`ahps_core.train.train`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ahps_core.errors import ConfigError

#: Module types :class:`ModelStack` replaces; any other module may hold no parameter or buffer of its own.
STACKED_TYPES = (nn.Conv2d, nn.BatchNorm2d, nn.Linear)


class StackedLinear(nn.Module):
    """K ``nn.Linear(in, out)`` as one module: input ``[B, K*in]`` (run-major features) or ``[K, B, in]``, output
    ``[K, B, out]``, so a chain of them (an MLP: linear layers, ReLUs and sums) runs in the ``[K, B, F]`` layout
    with no transposes, and the readout returns ``[K, B, classes]``. The weights are stored transposed,
    ``[K, in, out]``, so neither the batched matmul nor its backward transposes a weight-sized tensor."""

    def __init__(self, layers: Sequence[nn.Linear]) -> None:
        super().__init__()
        first = layers[0]
        self.runs, self.in_features, self.out_features = len(layers), first.in_features, first.out_features
        self.weight = nn.Parameter(torch.stack([m.weight.detach().t() for m in layers]).contiguous())
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in layers])) if first.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # [B, K*in] -> a [K, B, in] view
            x = x.reshape(x.shape[0], self.runs, self.in_features).transpose(0, 1)
        if self.bias is None:
            return torch.bmm(x, self.weight)
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight)


def stackable(model: nn.Module) -> str:
    """Empty when ``model`` can be stacked (module docstring), else the reason it cannot."""
    for name, m in model.named_modules():
        own = list(m.named_parameters(recurse=False)) + list(m.named_buffers(recurse=False))
        if isinstance(m, nn.BatchNorm2d) and m.momentum is None:
            return f"{name or 'the model'}: BatchNorm2d with momentum=None (cumulative average) cannot be stacked"
        if own and not isinstance(m, STACKED_TYPES):
            return f"{name or 'the model'}: {type(m).__name__} holds parameters ahps cannot stack"
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        return "the model has no nn.Linear readout"
    return ""


def _stack_conv(layers: Sequence[nn.Conv2d]) -> nn.Conv2d:
    c = layers[0]
    k = len(layers)
    if c.padding_mode != "zeros":
        raise ConfigError(f"Conv2d padding_mode {c.padding_mode!r} cannot be stacked (only 'zeros')")
    new = nn.Conv2d(k * c.in_channels, k * c.out_channels, c.kernel_size, stride=c.stride,  # type: ignore[arg-type]
                    padding=c.padding, dilation=c.dilation, groups=k * c.groups,  # type: ignore[arg-type]
                    bias=c.bias is not None, device="meta")
    new.weight = nn.Parameter(torch.cat([m.weight.detach() for m in layers]))
    if c.bias is not None:
        new.bias = nn.Parameter(torch.cat([m.bias.detach() for m in layers]))  # type: ignore[union-attr]
    return new


def _stack_bn(layers: Sequence[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    b = layers[0]
    new = nn.BatchNorm2d(len(layers) * b.num_features, eps=b.eps, momentum=b.momentum, affine=b.affine,
                         track_running_stats=b.track_running_stats, device="meta")
    if b.affine:
        new.weight = nn.Parameter(torch.cat([m.weight.detach() for m in layers]))
        new.bias = nn.Parameter(torch.cat([m.bias.detach() for m in layers]))
    if b.track_running_stats:
        new.running_mean = torch.cat([m.running_mean for m in layers])  # type: ignore[misc]
        new.running_var = torch.cat([m.running_var for m in layers])  # type: ignore[misc]
        new.num_batches_tracked = torch.stack([m.num_batches_tracked for m in layers])  # type: ignore[misc]
    return new


class ModelStack:
    """K models of one architecture (their own weights) as one stacked network, :attr:`module` (module
    docstring). ``models`` are not modified; the stack holds copies of their tensors."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        if not models:
            raise ConfigError("a stack needs at least one model")
        why = stackable(models[0])
        if why:
            raise ConfigError(f"cannot stack {type(models[0]).__name__}: {why}")
        self.runs = len(models)
        self.shapes = {k: tuple(v.shape) for k, v in models[0].state_dict().items()}
        module = copy.deepcopy(models[0])
        for name, m in list(models[0].named_modules()):
            if not isinstance(m, STACKED_TYPES):
                continue
            group = [model.get_submodule(name) for model in models]
            new: nn.Module
            if isinstance(m, nn.Conv2d):
                new = _stack_conv(group)  # type: ignore[arg-type]
            elif isinstance(m, nn.BatchNorm2d):
                new = _stack_bn(group)  # type: ignore[arg-type]
            else:
                new = StackedLinear(group)  # type: ignore[arg-type]
            parent, _, child = name.rpartition(".")
            setattr(module.get_submodule(parent) if parent else module, child, new)
        self.module = module
        state = module.state_dict()
        if list(state) != list(self.shapes):
            raise ConfigError("stacked state dict keys differ from the model's (unsupported module layout)")
        transposed = {f"{n}.weight" for n, m in module.named_modules() if isinstance(m, StackedLinear)}
        #: per state-dict key: "stack" ([K, *shape]), "stack_t" ([K, *reversed(shape)], a StackedLinear weight) or
        #: "cat" ([K * shape[0], *shape[1:]])
        self.kind = {name: "stack_t" if name in transposed else "stack" if tuple(t.shape) == (self.runs, *shape)
                     else "cat" for (name, t), shape in zip(state.items(), self.shapes.values(), strict=True)}

    def block(self, name: str, tensor: torch.Tensor, k: int) -> torch.Tensor:
        """Run ``k``'s part of the stacked tensor ``tensor`` of state-dict key ``name`` (a view, in the run's own
        network's shape)."""
        kind = self.kind[name]
        if kind == "stack":
            return tensor[k]
        if kind == "stack_t":
            return tensor[k].t()
        rows = tensor.shape[0] // self.runs
        return tensor[k * rows:(k + 1) * rows]

    def part(self, name: str, tensor: torch.Tensor, k: int) -> torch.Tensor:
        """A copy of :meth:`block` (contiguous where the stacked layout is transposed)."""
        block = self.block(name, tensor, k)
        return block.contiguous() if self.kind[name] == "stack_t" else block.clone()

    def state_of(self, k: int) -> dict[str, torch.Tensor]:
        """Run ``k``'s state dict, exactly as its own network's (copies)."""
        return {name: self.part(name, t, k) for name, t in self.module.state_dict().items()}

    def param_names(self) -> list[str]:
        return [name for name, _ in self.module.named_parameters()]

    def stack_tensors(self, name: str, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """Per-run tensors of state-dict key ``name`` (e.g. momentum buffers) in the stacked layout."""
        kind = self.kind[name]
        if kind == "stack_t":
            return torch.stack([t.t() for t in tensors]).contiguous()
        return torch.stack(list(tensors)) if kind == "stack" else torch.cat(list(tensors))

    def stack_input(self, xs: Sequence[torch.Tensor], channels_last: bool = False) -> torch.Tensor:
        """The stacked network's input from per-run batches ``[B, C, ...]`` (run-major along dim 1)."""
        x = torch.cat(list(xs), dim=1) if len(xs) > 1 else xs[0]
        return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x

    def shared_input(self, x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        """The same batch ``x`` for every run (evaluation)."""
        return self.stack_input([x] * self.runs, channels_last)


def per_run_loss(logits: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    """Each run's mean cross-entropy: ``logits`` ``[K, B, classes]``, ``labels`` ``[K, B]`` (computed per run, as a
    single run computes it, so the values and gradients are the single run's)."""
    if logits.dim() != 3 or logits.shape[:2] != labels.shape:
        raise ConfigError(f"a stacked network returned {tuple(logits.shape)} for labels {tuple(labels.shape)}; "
                          "expected [K, B, classes]: its last layer must be an nn.Linear readout")
    return [F.cross_entropy(out.float(), y) for out, y in zip(logits.unbind(0), labels.unbind(0), strict=True)]


__all__ = ["STACKED_TYPES", "ModelStack", "StackedLinear", "per_run_loss", "stackable"]
