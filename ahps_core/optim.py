"""SGD (momentum, Nesterov, weight decay) without ``torch.optim``'s machinery, for one model or a stack of them.

:class:`SGD` computes exactly ``torch.optim.SGD``'s update (no dampening, not maximizing): per parameter
``g = grad + wd * p``; ``buf = g`` at the first step, then ``buf = momentum * buf + g``; ``g = g + momentum * buf``
(Nesterov) or ``g = buf``; ``p -= lr * g``. It uses the same tensor operations in the same order: the
single-tensor loop on CPU (bit-identical results to ``torch.optim.SGD``, tested) and the ``torch._foreach_*``
kernels on CUDA (``torch.optim.SGD``'s default there). Its :meth:`SGD.state_dict` has ``torch.optim.SGD``'s
format, so checkpoints written with either load into the other.

Why not ``torch.optim.SGD``: in torch 2.13 its constructor (``Optimizer.add_param_group``, wrapped in
``torch._disable_dynamo``) imports ``torch._dynamo`` on first use, 1.2-1.4 s per process on a 2-core CPU, paid by
every training task of a pipeline.

Stacked runs (:mod:`ahps_core.packed`): ``lr`` may be a 1-D tensor of ``K`` per-run learning rates; every
parameter's dim 0 then holds the ``K`` runs' equal blocks in order (``[K, ...]`` or ``[K * C, ...]``), and the
last update is ``p.addcmul_(g, lr, value=-1)`` with ``lr`` broadcast per block (:func:`block_rates`), the same
arithmetic as ``add_(g, alpha=-lr)`` (bit-identical on CPU, tested).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch


class SGD:
    """``torch.optim.SGD``-compatible SGD over ``params`` (module docstring). ``param_groups[0]["lr"]`` is the LR
    of the next :meth:`step` (a float, or a ``[K]`` tensor of per-run LRs for stacked parameters)."""

    def __init__(self, params: Iterable[torch.Tensor], *, lr: float | torch.Tensor, momentum: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0) -> None:
        self.params = list(params)
        self.param_groups: list[dict[str, Any]] = [{
            "lr": lr, "momentum": momentum, "dampening": 0, "weight_decay": weight_decay, "nesterov": nesterov,
            "maximize": False, "foreach": None, "differentiable": False, "fused": None,
            "params": list(range(len(self.params))),
        }]
        self.momentum_buffers: list[torch.Tensor | None] = [None] * len(self.params)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        group = self.param_groups[0]
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        params = [self.params[i] for i in live]
        grads = [p.grad for p in params]
        bufs = [self.momentum_buffers[i] for i in live]
        sgd_update(params, grads, bufs, lr=group["lr"], momentum=group["momentum"],  # type: ignore[arg-type]
                   weight_decay=group["weight_decay"], nesterov=group["nesterov"])
        if group["momentum"]:
            for i, buf in zip(live, bufs, strict=True):
                self.momentum_buffers[i] = buf

    def state_dict(self) -> dict[str, Any]:
        """``torch.optim.SGD.state_dict()``'s format: ``{"state": {index: {"momentum_buffer": t}}, "param_groups":
        [...]}`` (a tensor LR is stored as a list of floats)."""
        group = dict(self.param_groups[0])
        if isinstance(group["lr"], torch.Tensor):
            group["lr"] = [float(v) for v in group["lr"].tolist()]
        state = {i: {"momentum_buffer": b} for i, b in enumerate(self.momentum_buffers) if b is not None}
        return {"state": state, "param_groups": [group]}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """The momentum buffers of a :meth:`state_dict` (or of ``torch.optim.SGD``'s); the hyper-parameters stay
        this optimizer's own (a training sets them from its configuration)."""
        state = state_dict.get("state", {})
        for i, p in enumerate(self.params):
            entry = state.get(i, state.get(str(i)))
            buf = entry.get("momentum_buffer") if entry else None
            self.momentum_buffers[i] = None if buf is None else buf.detach().to(p.device, p.dtype).clone()


def sgd_update(params: list[torch.Tensor], grads: list[torch.Tensor], bufs: list[torch.Tensor | None], *,
               lr: float | torch.Tensor, momentum: float, weight_decay: float, nesterov: bool) -> None:
    """``torch.optim.SGD``'s update in place (module docstring); ``bufs`` entries are filled at the first step.
    ``lr``: a float, or a ``[K]`` tensor of per-run LRs (every parameter's dim 0 holds the ``K`` runs' blocks)."""
    if params and params[0].device.type != "cpu":
        _foreach_update(params, grads, bufs, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
        return
    for i, param in enumerate(params):
        grad = grads[i]
        if weight_decay != 0:
            grad = grad.add(param, alpha=weight_decay)
        if momentum != 0:
            buf = bufs[i]
            if buf is None:
                buf = grad.detach().clone()
                bufs[i] = buf
            else:
                buf.mul_(momentum).add_(grad, alpha=1)
            grad = grad.add(buf, alpha=momentum) if nesterov else buf
        if isinstance(lr, torch.Tensor):
            param.addcmul_(grad, block_rates(lr, param), value=-1)
        else:
            param.add_(grad, alpha=-lr)


def _foreach_update(params: list[torch.Tensor], grads: list[torch.Tensor], bufs: list[torch.Tensor | None], *,
                    lr: float | torch.Tensor, momentum: float, weight_decay: float, nesterov: bool) -> None:
    """The ``torch._foreach_*`` form of :func:`sgd_update` (``torch.optim.SGD``'s default on CUDA); it never reads
    a device value, so it can run inside a captured CUDA graph."""
    steps: list[torch.Tensor] = list(grads)
    if weight_decay != 0:
        steps = list(torch._foreach_add(steps, params, alpha=weight_decay))
    if momentum != 0:
        if all(b is not None for b in bufs):
            live = [b for b in bufs if b is not None]
            torch._foreach_mul_(live, momentum)
            torch._foreach_add_(live, steps, alpha=1)
        else:
            for i, g in enumerate(steps):
                buf = bufs[i]
                if buf is None:
                    bufs[i] = g.detach().clone()
                else:
                    buf.mul_(momentum).add_(g, alpha=1)
            live = [b for b in bufs if b is not None]
        if nesterov:
            torch._foreach_add_(steps, live, alpha=momentum)
        else:
            steps = live
    if isinstance(lr, torch.Tensor):
        torch._foreach_addcmul_(params, steps, [block_rates(lr, p) for p in params], value=-1)
    else:
        torch._foreach_add_(params, steps, alpha=-lr)


def block_rates(lr: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """The per-run LRs ``lr`` (``[K]``) broadcast over ``param``, whose dim 0 holds the ``K`` runs' equal blocks
    (``[K, ...]`` stacked, or ``[K * C, ...]`` concatenated); works for any memory format."""
    k, rows = lr.shape[0], param.shape[0]
    rate = lr if rows == k else lr.view(k, 1).expand(k, rows // k).reshape(rows)  # no host sync, on any device
    return rate.view(rows, *([1] * (param.dim() - 1)))


__all__ = ["SGD", "block_rates", "sgd_update"]
