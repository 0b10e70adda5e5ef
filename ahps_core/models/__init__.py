"""Torch models built from architecture graphs, and graph extraction from arbitrary ``nn.Module``s.

* :func:`build_model` / :func:`build_proxy`: the reference networks (MLP/CNN over a DAG, NAS-Bench-201's macro
  network) from an :class:`~ahps_core.graph.ArchGraph`, initialized by :mod:`ahps_core.init`;
* :func:`extract_graph` / :func:`load_model_factory` (:mod:`ahps_core.models.fx`): an ``ArchGraph`` (family
  ``graph``) from any torch.fx-traceable module.
"""

from ahps_core.models.build import MODEL_FAMILIES, PROXY_SPECS, build_model, build_proxy, proxy_graph
from ahps_core.models.dag import DagNet
from ahps_core.models.fx import extract_graph, load_model_factory
from ahps_core.models.nb201 import TinyNetwork

__all__ = [
    "MODEL_FAMILIES",
    "PROXY_SPECS",
    "DagNet",
    "TinyNetwork",
    "build_model",
    "build_proxy",
    "extract_graph",
    "load_model_factory",
    "proxy_graph",
]
