"""How a stacked training step runs on CUDA (``step_mode``): eagerly, replayed from a CUDA graph, or compiled.

A stacked NB201 step launches hundreds of small kernels (the largest cell ~1,000 ATen ops per step, a mean cell
~450); one model per GPU is launch-bound. Two ways to pay the launches once:

* ``graphs``: the first :data:`WARMUP_STEPS` steps of a stack run eagerly on a side stream (they are real
  training steps; cuDNN autotunes there), then the whole step (forward, per-run losses, backward, the SGD update
  with the per-run LRs) is captured in a ``torch.cuda.CUDAGraph`` for the stack's full batch shape, and every
  later full batch is copied into the graph's static inputs and replayed. The LR vector is an input of the graph
  (its schedule lives on the device). A batch of another shape (an epoch's last, partial batch) runs eagerly.
  Autocast runs with ``cache_enabled=False`` (required under capture). Runs whose loss went non-finite stay in
  the graph until the end of the epoch (runs are independent blocks of the stacked network, so they do not
  affect the others) and are dropped then, as in the eager step on CUDA.
* ``compile``: ``torch.compile`` of the stacked network (forward, and its backward through AOT autograd); the
  update stays the eager ``torch._foreach_*`` one.

On CPU both resolve to ``eager`` (:func:`resolve_step_mode`): there is nothing to gain from either there.
``auto`` reads ``$AHPS_STEP_MODE`` (the pipelines' compile-time ``--step-mode`` sets it on the training tasks),
default ``eager``, until the GPU check (``ahps bench gpu``) has measured the others on the target GPU.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from ahps_core.checks import check_choice
from ahps_core.stacking import per_run_loss
from ahps_core.train_config import STEP_MODES

STEP_MODE_ENV = "AHPS_STEP_MODE"
#: Eager steps of a stack before its step is captured in a CUDA graph.
WARMUP_STEPS = 3


def resolve_step_mode(mode: str, device: torch.device) -> str:
    """``eager``, ``graphs`` or ``compile`` for ``mode`` on ``device`` (module docstring)."""
    check_choice("step_mode", mode, STEP_MODES)
    if mode == "auto":
        mode = os.environ.get(STEP_MODE_ENV, "").strip() or "eager"
        check_choice(f"${STEP_MODE_ENV}", mode, STEP_MODES[1:])
    return mode if device.type == "cuda" else "eager"


def step_runner(mode: str) -> Callable[..., Any]:
    """The step function of ``mode`` (the signature of :func:`ahps_core.packed.eager_step`)."""
    from ahps_core.packed import eager_step

    if mode == "graphs":
        return graph_step
    if mode == "compile":
        return compiled_step
    return eager_step


def compiled_step(st, x, y, lr_vec, amp_dtype, device, dead, step, runs):
    """:func:`~ahps_core.packed.eager_step` with the stacked network run through ``torch.compile``."""
    from ahps_core.packed import eager_step

    compiled = st.cache.get("compiled")
    if compiled is None:
        compiled = st.cache["compiled"] = torch.compile(st.module, dynamic=False)
    plain = st.module
    st.module = compiled
    try:
        return eager_step(st, x, y, lr_vec, amp_dtype, device, dead, step, runs)
    finally:
        st.module = plain


def _forward_backward_update(st, x, y, lr_vec, amp_dtype):
    with torch.autocast("cuda", dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None,
                        cache_enabled=False):
        logits = st.module(x)
    losses = per_run_loss(logits, y)
    loss_vec = torch.stack([loss.detach() for loss in losses])
    st.optimizer.param_groups[0]["lr"] = lr_vec
    torch.stack(losses).sum().backward()
    st.optimizer.step()
    hits = (logits.detach().argmax(-1) == y).sum(-1)
    return loss_vec, hits


def graph_step(st, x, y, lr_vec, amp_dtype, device, dead, step, runs):
    """The ``graphs`` step (module docstring): eager warm-up on a side stream, then capture once per stack and
    batch shape, then replay."""
    from ahps_core.packed import eager_step

    cache = st.cache
    shape = (tuple(x.shape), tuple(y.shape))
    full = cache.setdefault("full_shape", shape)
    if shape != full:
        return eager_step(st, x, y, lr_vec, amp_dtype, device, dead, step, runs)
    warm = cache.get("warm", 0)
    if warm < WARMUP_STEPS:
        cache["warm"] = warm + 1
        side = cache.setdefault("side", torch.cuda.Stream())
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            st.optimizer.zero_grad(set_to_none=True)
            out = _forward_backward_update(st, x, y, lr_vec, amp_dtype)
        torch.cuda.current_stream().wait_stream(side)
        return out
    graph = cache.get("graph")
    if graph is None:
        static = {"x": x.clone(), "y": y.clone(), "lr": lr_vec.clone()}
        st.optimizer.zero_grad(set_to_none=True)  # the gradients are allocated inside the graph's pool
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static["out"] = _forward_backward_update(st, static["x"], static["y"], static["lr"], amp_dtype)
        cache["graph"], cache["static"] = graph, static
    static = cache["static"]
    static["x"].copy_(x)
    static["y"].copy_(y)
    static["lr"].copy_(lr_vec)
    graph.replay()
    loss_vec, hits = static["out"]
    return loss_vec.clone(), hits.clone()


__all__ = ["STEP_MODE_ENV", "WARMUP_STEPS", "compiled_step", "graph_step", "resolve_step_mode", "step_runner"]
