"""Cluster settings shared by every pipeline of :mod:`pipelines` (``transfer``, ``reevaluate``).

* :func:`cluster_params`: the tracking/cluster parameters every pipeline takes (tracking URI, MLflow experiment,
  run group, checkpoint root, S3 endpoint, secret names, GPU placement);
* :class:`TaskSettings`: the compile-time options of ``build`` (checked when made) and what they do to
  a task -- :meth:`TaskSettings.common` (every task: S3 and MLflow credentials as env vars from Kubernetes
  secrets, optional, names from parameters; the tracking-host policy from the ConfigMap ``ahps-policy``; the
  security context, :func:`secure`; CPU/memory requests), :meth:`TaskSettings.training` (GPU request, larger
  CPU/memory requests, the step mode, tolerations and node selector from parameters, the dataset cache volume,
  preemption retries);
* :func:`pipeline_context`: the components and settings a pipeline's ``build`` wires.

The checks of these parameters live with the others in :mod:`ahps_core.steps.params`.

On kfp's local runner all of these are ignored (it warns about the GPU request and retries; kfp-kubernetes
settings are silently ignored). Credential *values* are never parameters: only secret names are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from types import SimpleNamespace

from ahps_core.errors import ConfigError
from pipelines import Param

DEFAULT_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
DEFAULT_ACCELERATOR = "nvidia.com/gpu"
DEFAULT_CACHE_DIR = "/var/cache/ahps/data"
S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
MLFLOW_SECRET_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
CACHE_VOLUME = "ahps-data-cache"
#: The ConfigMap (fixed name; the Helm chart creates it) whose keys every task gets as env: the tracking-host policy.
POLICY_CONFIGMAP = "ahps-policy"
POLICY_KEYS = ("AHPS_ALLOWED_TRACKING_HOSTS",)
#: The image's non-root user and group (Dockerfile: ``USER 1000:1000``).
RUN_AS_USER = 1000
#: CPU/memory requests of every task, and of the training steps (which load a dataset, torch and a model).
DEFAULT_REQUESTS = {"cpu": "500m", "memory": "2Gi"}
DEFAULT_TRAIN_REQUESTS = {"cpu": "4", "memory": "16Gi"}
#: ``ahps_core.packed_gpu.STEP_MODE_ENV`` and ``ahps_core.train_config.STEP_MODES`` (not imported: they would pull
#: torch into compiling a pipeline)
STEP_MODE_ENV = "AHPS_STEP_MODE"
STEP_MODES = ("eager", "graphs", "compile")
_CPU = re.compile(r"^[0-9]+(\.[0-9]+)?m?$")
_MEMORY = re.compile(r"^[0-9]+(\.[0-9]+)?([KMGTPE]i?)?$")


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
        "mlflow_secret": Param("ahps-mlflow-auth",
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
    ``backoff_factor``; ``cpu_request``/``memory_request``: every task's requests, ``train_*``: the training
    steps'; ``step_mode``: ``$AHPS_STEP_MODE`` of the training steps (``graphs``: CUDA graphs, ``compile``:
    torch.compile; empty: eager); ``caching``: KFP's result cache for the tasks whose inputs can repeat (False:
    every task runs; :meth:`common`). The options are checked when the settings are made.
    """

    accelerator: str = DEFAULT_ACCELERATOR
    gpus: int = 1
    dataset_pvc: str = ""
    cache_dir: str = DEFAULT_CACHE_DIR
    parallelism: int = 0
    retries: int = 3
    backoff: str = "60s"
    backoff_factor: float = 2.0
    cpu_request: str = DEFAULT_REQUESTS["cpu"]
    memory_request: str = DEFAULT_REQUESTS["memory"]
    train_cpu_request: str = DEFAULT_TRAIN_REQUESTS["cpu"]
    train_memory_request: str = DEFAULT_TRAIN_REQUESTS["memory"]
    step_mode: str = ""
    caching: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.gpus, int) or self.gpus < 0:
            raise ConfigError(f"gpus {self.gpus!r} must be an integer >= 0")
        if self.parallelism < 0:
            raise ConfigError(f"parallelism {self.parallelism!r} must be >= 0 (0: unlimited)")
        if self.step_mode and self.step_mode not in STEP_MODES:
            raise ConfigError(f"step_mode {self.step_mode!r}: accepted are {', '.join(STEP_MODES)} (or empty: the "
                              "image's default, eager)")
        for name in ("cpu_request", "train_cpu_request"):
            if not _CPU.match(getattr(self, name)):
                raise ConfigError(f"{name} {getattr(self, name)!r} must be a Kubernetes CPU quantity, e.g. 2 or 500m")
        for name in ("memory_request", "train_memory_request"):
            if not _MEMORY.match(getattr(self, name)):
                raise ConfigError(f"{name} {getattr(self, name)!r} must be a Kubernetes memory quantity, e.g. 4Gi")

    def common(self, task, s3_secret, mlflow_secret):
        """What every task gets: the credentials (:meth:`with_secrets`), its CPU/memory requests (a training
        step's are raised by :meth:`training`) and its caching, stated: on (``caching``) -- a task hits KFP's cache
        when a run repeats its inputs, i.e. the same explicit ``run_group`` and parameters (with ``run_group``
        empty the group is the KFP run id, so nothing downstream of it can hit) -- or off. The steps that open
        the run group take the job id and are never cached (:meth:`uncached`)."""
        self.with_secrets(task, s3_secret, mlflow_secret)
        task.set_cpu_request(self.cpu_request).set_memory_request(self.memory_request)
        task.set_caching_options(self.caching)
        return task

    @staticmethod
    def uncached(task):
        """Caching off: the task's inputs include the KFP job id (``dsl.PIPELINE_JOB_ID_PLACEHOLDER``), so a cache
        key never repeats; and a hit would skip opening the run group's MLflow parent run."""
        return task.set_caching_options(False)

    def with_secrets(self, task, s3_secret, mlflow_secret):
        """What every task of a pipeline gets on a cluster: S3 and MLflow credentials as env vars from the
        (optional) secrets named by the parameters; the tracking-host policy as env from the ConfigMap
        :data:`POLICY_CONFIGMAP` (a fixed name, never a run parameter: whoever submits a run cannot lift it; an
        absent ConfigMap means no restriction); and the container's security context (:func:`secure`)."""
        from kfp import kubernetes

        kubernetes.use_secret_as_env(task, secret_name=s3_secret, secret_key_to_env={k: k for k in S3_SECRET_KEYS},
                                     optional=True)
        kubernetes.use_secret_as_env(task, secret_name=mlflow_secret,
                                     secret_key_to_env={k: k for k in MLFLOW_SECRET_KEYS}, optional=True)
        kubernetes.use_config_map_as_env(task, config_map_name=POLICY_CONFIGMAP,
                                         config_map_key_to_env={k: k for k in POLICY_KEYS}, optional=True)
        return secure(task)

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
        task.set_cpu_request(self.train_cpu_request).set_memory_request(self.train_memory_request)
        if self.step_mode:
            task.set_env_variable(STEP_MODE_ENV, self.step_mode)
        kubernetes.add_toleration_json(task, tolerations)
        kubernetes.add_node_selector_json(task, node_selector)
        self.cache(task)
        if self.retries > 0:
            task.set_retry(num_retries=self.retries, backoff_duration=self.backoff, backoff_factor=self.backoff_factor)
        return task


def secure(task):
    """The security context kfp-kubernetes 2.17 lets a pipeline set on a task's container: the image's user
    (:data:`RUN_AS_USER`, non-root) and ``runAsNonRoot``. ``allowPrivilegeEscalation: false``, dropping every
    capability and the ``RuntimeDefault`` seccomp profile are not SDK settings: the KFP backend applies them to
    every pipeline container (its platform defaults, which the SDK cannot override); a read-only root file system
    and the pod-level ``fsGroup`` cannot be set from a pipeline at all (use the namespace's Pod Security admission
    or a policy engine for those)."""
    from kfp import kubernetes

    return kubernetes.set_security_context(task, run_as_user=RUN_AS_USER, run_as_group=RUN_AS_USER,
                                           run_as_non_root=True)


def pipeline_context(settings: TaskSettings | None, base_image: str | None,
                     params: dict[str, Param] | None = None) -> tuple[SimpleNamespace, TaskSettings]:
    """``(components on base_image, settings)`` for a pipeline's ``build`` (default settings when None); the
    components' inputs are described by the pipeline's ``params`` help."""
    from components import make_components

    helps = {name: p.help for name, p in (params or {}).items()}
    return make_components(base_image, helps), settings or TaskSettings()


__all__ = ["CACHE_VOLUME", "DEFAULT_ACCELERATOR", "DEFAULT_CACHE_DIR", "DEFAULT_REQUESTS", "DEFAULT_TOLERATIONS",
           "DEFAULT_TRAIN_REQUESTS", "MLFLOW_SECRET_KEYS", "POLICY_CONFIGMAP", "POLICY_KEYS", "RUN_AS_USER",
           "S3_SECRET_KEYS", "STEP_MODES", "STEP_MODE_ENV", "TaskSettings", "cluster_params", "pipeline_context",
           "secure"]
