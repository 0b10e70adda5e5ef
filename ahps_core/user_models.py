"""Bring your own model: a family of networks built by the user's ``module:factory`` (``--model``).

``factory(name)`` builds the network called ``name`` (a validate target such as ``depth8``); a factory that
takes no argument builds one network (``find-lr`` / ``train`` without ``--arch``). The factory initializes the
network itself: ahps seeds torch's global RNG with the run's seed around the call (and restores it), so seed
``s`` always builds the same weights. The graph the transfer rules read comes from torch.fx
(:func:`ahps_core.models.fx.extract_graph`), as in ``ahps lr --model``: a ``graph``-family
:class:`~ahps_core.graph.ArchGraph` of the whole network, stem and head included.

The proxy (the network the base LR is measured on) is named explicitly: ``--proxy NAME`` (built by the same
factory, ``factory(NAME)``) or ``--proxy module:factory`` (another factory, called without arguments).

Every model is checked against the dataset once before any training: one forward pass on two training inputs
must give logits of shape ``[2, num_classes]`` (a mismatch or an exception is one line naming the model).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ahps_core.errors import ConfigError
from ahps_core.refs import call_ref, is_ref, load_ref, one_line

if TYPE_CHECKING:
    from ahps_core.data import DatasetSplit
    from ahps_core.graph import ArchGraph

WHAT = "model reference"


def _takes_name(fn: Callable[..., Any]) -> bool | None:
    """Whether ``fn`` can take one positional argument (None when its signature cannot be read)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    try:
        sig.bind("x")
        return True
    except TypeError:
        return False


class UserModels:
    """The networks of ``ref`` (``module:factory``) and their proxy (module docstring)."""

    def __init__(self, ref: str, *, proxy: str | None = None) -> None:
        self.ref = ref
        self.fn = load_ref(ref, WHAT)
        self.proxy = proxy
        self._proxy_fn = load_ref(proxy, WHAT) if proxy is not None and is_ref(proxy) else None

    def build(self, name: str | None = None, seed: int = 0) -> nn.Module:
        """The network ``name`` (``factory(name)``; ``factory()`` when ``name`` is None), built under seed ``seed``."""
        return self._build(self.fn, self.ref, name, seed)

    def _build(self, fn: Callable[..., Any], ref: str, name: str | None, seed: int) -> nn.Module:
        args: tuple[Any, ...] = () if name is None else (name,)
        takes = _takes_name(fn)
        if name is not None and takes is False:
            raise ConfigError(f"{WHAT} {ref!r} takes no argument, so it cannot build the network {name!r}: give a "
                              "factory taking the network's name, e.g. def make(name): ...")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = call_ref(fn, ref, WHAT, *args)
        if not isinstance(model, nn.Module):
            shown = "" if name is None else repr(name)
            raise ConfigError(f"{WHAT} {ref!r}: {ref.split(':')[1]}({shown}) returned a {type(model).__name__}, "
                              "expected a torch.nn.Module")
        return model

    def seeded(self, name: str | None = None) -> Callable[[int], nn.Module]:
        """``seed -> network name`` (a :data:`~ahps_core.probe.ModelFactory`)."""
        return lambda seed: self.build(name, seed)

    def graph(self, name: str | None = None) -> ArchGraph:
        """The fx graph of the network ``name`` (its spec is ``name``, or the reference)."""
        from ahps_core.models.fx import extract_graph

        return extract_graph(self.build(name, 0), name=name or self.ref)

    # -- the proxy -------------------------------------------------------------------------------------------
    def _need_proxy(self) -> str:
        if self.proxy is None:
            raise ConfigError(f"--model {self.ref}: name the proxy the base LR is measured on: --proxy NAME (built "
                              "by the same factory) or --proxy module:factory")
        return self.proxy

    @property
    def proxy_name(self) -> str:
        return self._need_proxy()

    def build_proxy(self, seed: int = 0) -> nn.Module:
        proxy = self._need_proxy()
        if self._proxy_fn is not None:
            return self._build(self._proxy_fn, proxy, None, seed)
        return self.build(proxy, seed)

    def proxy_factory(self) -> Callable[[int], nn.Module]:
        return self.build_proxy

    def proxy_graph(self) -> ArchGraph:
        from ahps_core.models.fx import extract_graph

        return extract_graph(self.build_proxy(0), name=self._need_proxy())

    def identity(self, name: str | None) -> dict[str, Any]:
        """What a measurement of network ``name`` depends on besides the protocol: the reference, the name and
        the built network's class and parameter shapes."""
        from ahps_core.train import model_signature

        model = self.build_proxy(0) if name == self.proxy else self.build(name, 0)
        return {"model": self.ref, "name": name, "signature": model_signature(model)}


def check_fits(model: nn.Module, data: DatasetSplit, label: str) -> None:
    """One forward pass of ``model`` on two (normalized) training inputs of ``data`` must give ``[2, classes]``
    logits; otherwise a one-line :class:`ConfigError` naming ``label``."""
    loader = data.loader("train", batch_size=2, training=False)
    x, _ = next(loader.epoch(0))
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except Exception as exc:
        raise ConfigError(f"model {label} fails on {data.name} inputs of shape {tuple(x.shape)}: "
                          f"{one_line(exc)}") from exc
    finally:
        model.train()
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
    if shape != (x.shape[0], data.num_classes):
        raise ConfigError(f"model {label} returns {shape if shape else type(out).__name__} on {data.name} inputs of "
                          f"shape {tuple(x.shape)}; expected logits of shape ({x.shape[0]}, {data.num_classes})")


__all__ = ["UserModels", "check_fits"]
