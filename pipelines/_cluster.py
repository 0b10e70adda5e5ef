"""Cluster settings shared by every pipeline of :mod:`pipelines` (``transfer``, ``reevaluate``).

* :func:`cluster_params`: the tracking/cluster parameters every pipeline takes (tracking URI, MLflow experiment,
  run group, checkpoint root, S3 endpoint, secret names, GPU placement);
* :class:`TaskSettings`: the compile-time options of ``build`` (checked when made) and what they do to
  a task -- :meth:`TaskSettings.with_secrets` (S3 and MLflow credentials as env vars from Kubernetes secrets,
  optional, names from parameters), :meth:`TaskSettings.training` (GPU request, tolerations and node selector
  from parameters, the dataset cache volume, preemption retries);
* :func:`validate_cluster_params`: checks of those parameters (secret names, placement, tracking URI, checkpoint
  root), with the same messages for every pipeline.

On kfp's local runner all of these are ignored (it warns about the GPU request and retries; kfp-kubernetes
settings are silently ignored). Credential *values* are never parameters: only secret names are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ahps_core.errors import ConfigError
from pipelines import Param

DEFAULT_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
DEFAULT_ACCELERATOR = "nvidia.com/gpu"
DEFAULT_CACHE_DIR = "/var/cache/ahps/data"
S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
MLFLOW_SECRET_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
CACHE_VOLUME = "ahps-data-cache"
_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def cluster_params(*, experiment: str = "ahps") -> dict[str, Param]:
    """The tracking and cluster parameters of a pipeline (``experiment``: the default MLflow experiment)."""
    return {
        "tracking_uri": Param("", "MLflow tracking URI; empty: the task's $MLFLOW_TRACKING_URI"),
        "mlflow_experiment": Param(experiment, "MLflow experiment name"),
        "run_group": Param("", "run-group key (re-running a key reuses its finished runs); empty: the KFP run id"),
        "checkpoint_root": Param("", "checkpoint root, a directory or s3://bucket/prefix (resume after "
                                     "preemption); empty: checkpoints only in the task's model artifact"),
        "s3_endpoint": Param("", "S3 endpoint URL for data/checkpoints (MinIO etc.); empty: AWS or "
                                 "$AWS_ENDPOINT_URL_S3"),
        "s3_secret": Param("ahps-s3", "Kubernetes secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (optional)"),
        "mlflow_secret": Param("ahps-mlflow",
                               "Kubernetes secret with MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD (optional)"),
        "gpu_tolerations": Param([dict(t) for t in DEFAULT_TOLERATIONS],
                                 "tolerations of the training pods (list of Kubernetes tolerations)"),
        "gpu_node_selector": Param({}, "node selector of the training pods, e.g. "
                                       "{\"nvidia.com/gpu.present\": \"true\"}"),
    }


@dataclass(frozen=True)
class TaskSettings:
    """What the compile-time options of ``build`` do to a task.

    ``accelerator``: resource type the training steps request (``""``: no GPU request), ``gpus`` of them;
    ``dataset_pvc``: a PVC mounted at ``cache_dir`` instead of an emptyDir (``cache_dir`` ``""``: no cache volume
    and no ``AHPS_DATA_CACHE``); ``parallelism``: concurrent trainings of the ParallelFor (0: unlimited);
    ``retries``: retries of the training steps after a failure/preemption (0: none) with ``backoff`` doubling by
    ``backoff_factor``. The options are checked when the settings are made.
    """

    accelerator: str = DEFAULT_ACCELERATOR
    gpus: int = 1
    dataset_pvc: str = ""
    cache_dir: str = DEFAULT_CACHE_DIR
    parallelism: int = 0
    retries: int = 3
    backoff: str = "60s"
    backoff_factor: float = 2.0

    def __post_init__(self) -> None:
        if not isinstance(self.gpus, int) or self.gpus < 0:
            raise ConfigError(f"gpus {self.gpus!r} must be an integer >= 0")
        if self.parallelism < 0:
            raise ConfigError(f"parallelism {self.parallelism!r} must be >= 0 (0: unlimited)")

    def with_secrets(self, task, s3_secret, mlflow_secret):
        """S3 and MLflow credentials as env vars from the (optional) secrets named by the parameters."""
        from kfp import kubernetes

        kubernetes.use_secret_as_env(task, secret_name=s3_secret, secret_key_to_env={k: k for k in S3_SECRET_KEYS},
                                     optional=True)
        kubernetes.use_secret_as_env(task, secret_name=mlflow_secret,
                                     secret_key_to_env={k: k for k in MLFLOW_SECRET_KEYS}, optional=True)
        return task

    def cache(self, task):
        """The dataset cache volume at ``cache_dir`` (a PVC or an emptyDir) and ``AHPS_DATA_CACHE``."""
        from kfp import kubernetes

        if self.cache_dir:
            if self.dataset_pvc:
                kubernetes.mount_pvc(task, pvc_name=self.dataset_pvc, mount_path=self.cache_dir)
            else:
                kubernetes.empty_dir_mount(task, volume_name=CACHE_VOLUME, mount_path=self.cache_dir)
            task.set_env_variable("AHPS_DATA_CACHE", self.cache_dir)
        return task

    def training(self, task, tolerations, node_selector):
        """GPU, placement, dataset cache and preemption retries of a step that trains."""
        from kfp import kubernetes

        if self.accelerator and self.gpus > 0:
            task.set_accelerator_type(self.accelerator).set_accelerator_limit(self.gpus)
        kubernetes.add_toleration_json(task, tolerations)
        kubernetes.add_node_selector_json(task, node_selector)
        self.cache(task)
        if self.retries > 0:
            task.set_retry(num_retries=self.retries, backoff_duration=self.backoff, backoff_factor=self.backoff_factor)
        return task


def validate_cluster_params(p: dict[str, Any], *, local: bool) -> None:
    """Checks of the :func:`cluster_params` values in ``p`` (ConfigError naming the value)."""
    for name in ("s3_secret", "mlflow_secret"):
        if not _K8S_NAME.match(p[name]) or len(p[name]) > 253:
            raise ConfigError(f"{name} {p[name]!r} is not a valid Kubernetes secret name")
    if not p["mlflow_experiment"].strip():
        raise ConfigError("mlflow_experiment must not be empty")
    tol = p["gpu_tolerations"]
    if not all(isinstance(t, dict) for t in tol):
        raise ConfigError(f"gpu_tolerations {tol!r} must be a list of toleration objects, e.g. "
                          '[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]')
    sel = p["gpu_node_selector"]
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in sel.items()):
        raise ConfigError(f"gpu_node_selector {sel!r} must map label names to string values")
    if not local and not p["tracking_uri"]:
        raise ConfigError("tracking_uri is empty: the pipeline's pods need the MLflow server, e.g. --param "
                          "tracking_uri=http://ahps-mlflow.NAMESPACE.svc.cluster.local:5000")
    if p["checkpoint_root"].startswith("s3://"):
        from ahps_core.data.s3 import parse_s3_uri

        parse_s3_uri(p["checkpoint_root"])


__all__ = ["CACHE_VOLUME", "DEFAULT_ACCELERATOR", "DEFAULT_CACHE_DIR", "DEFAULT_TOLERATIONS", "MLFLOW_SECRET_KEYS",
           "S3_SECRET_KEYS", "TaskSettings", "cluster_params", "validate_cluster_params"]
