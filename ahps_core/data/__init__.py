"""Datasets for the re-evaluation and LR experiments: readers, NB201 splits, S3 cache, device-resident loader.

Typical use::

    from ahps_core.data import load_dataset
    data = load_dataset("cifar10-valid", "s3://datasets/cifar")          # or a local directory
    loader = data.loader("train", batch_size=256, device="cuda", seed=0)  # NB201 crop+flip on the GPU
    for x, y in loader.epoch(epoch_index):
        ...

See :mod:`ahps_core.data.datasets` for the parts, splits and normalization of each dataset, and
:mod:`ahps_core.data.loader` for the augmentation and reproducibility contract. Never imports torchvision.
"""

from ahps_core.data.checksums import KNOWN_MD5
from ahps_core.data.datasets import DATASETS, DatasetSpec, DatasetSplit, Part, default_cache_dir, load_dataset
from ahps_core.data.loader import DeviceLoader, epoch_seed
from ahps_core.data.synthetic import write_cifar_like, write_imagenet16_like

__all__ = [
    "DATASETS",
    "KNOWN_MD5",
    "DatasetSpec",
    "DatasetSplit",
    "DeviceLoader",
    "Part",
    "default_cache_dir",
    "epoch_seed",
    "load_dataset",
    "write_cifar_like",
    "write_imagenet16_like",
]
