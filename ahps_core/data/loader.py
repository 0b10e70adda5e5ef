"""A device-resident batch iterator with NAS-Bench-201's augmentation done per batch on the device.

The whole split lives on the training device as uint8 NCHW (CIFAR-10 train: 154 MB), so there are no
per-sample CPU transforms, no ``DataLoader`` workers and no host-to-device copies per step. Each batch is one
gather from the (pre-padded) uint8 images followed by float conversion and normalization.

Augmentation reproduces torchvision's ``RandomHorizontalFlip(), RandomCrop(S, padding=p), ToTensor(),
Normalize(mean, std)`` (the order in NB201's ``get_datasets``) exactly, per image: the flip is applied first,
then zero padding in [0, 255] pixel space (so padded pixels normalize to ``-mean/std``), then an ``S x S``
crop at a uniformly random offset in ``0..2p`` on each axis, then ``x / 255`` and ``(x - mean) / std``.

Reproducibility and resumption: all randomness of epoch ``e`` (the permutation, every image's crop offsets
and flip bit) is drawn at the start of the epoch from a ``torch.Generator`` on the device seeded with a hash
of ``(seed, e)``. ``epoch(e)`` therefore yields the same batches whatever epochs ran before, and
``epoch(e, start_step=k)`` yields exactly batches ``k..`` of that sequence. Streams are reproducible per
device type (CPU and CUDA generators differ). The iterator never synchronizes with the host: batch bounds
are Python integers computed from the dataset size, and nothing reads a device value.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ahps_core.errors import ConfigError


def epoch_seed(seed: int, epoch: int) -> int:
    """The generator seed of epoch ``epoch``: a 63-bit hash of ``(seed, epoch)`` (numpy ``SeedSequence``)."""
    if seed < 0 or epoch < 0:
        raise ConfigError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
    high, low = np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint32)
    return (int(high) << 31) ^ int(low)


class DeviceLoader:
    """Iterate over ``(images, labels)`` in normalized float batches, entirely on ``device``.

    Args:
        images: uint8 ``[N, C, H, W]`` tensor (any device; copied to ``device`` once), or float32 (user data,
            :mod:`ahps_core.data.custom`: taken as it is, not divided by 255).
        labels: integer ``[N]`` tensor.
        batch_size: images per batch.
        device: where the data lives and batches are produced.
        mean, std: per-channel normalization constants in [0, 1] units (as torchvision ``Normalize``).
        augment: apply random flip / padded crop (training); ``False`` for evaluation.
        pad: zero padding of the random crop (NB201: 4 for CIFAR, 2 for ImageNet16); 0 disables the crop.
        flip: random horizontal flip with probability 1/2 (only when ``augment``).
        shuffle: a fresh random order each epoch; ``False`` keeps the stored order.
        drop_last: drop the final incomplete batch.
        seed: base seed; epoch ``e`` uses :func:`epoch_seed` ``(seed, e)``.
        channels_last: return batches in ``torch.channels_last`` memory format.
        dtype: floating dtype of the returned images (normalization is computed in float32).
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int = 256,
        device: str | torch.device = "cpu",
        *,
        mean: Sequence[float],
        std: Sequence[float],
        augment: bool = False,
        pad: int = 4,
        flip: bool = True,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if images.dtype not in (torch.uint8, torch.float32) or images.dim() != 4:
            raise ConfigError(
                f"images must be a uint8 or float32 [N, C, H, W] tensor, got {images.dtype} {tuple(images.shape)}"
            )
        if labels.dim() != 1 or labels.shape[0] != images.shape[0] or labels.is_floating_point():
            raise ConfigError(
                f"labels must be an integer [N] tensor with N={images.shape[0]}, "
                f"got {labels.dtype} {tuple(labels.shape)}"
            )
        channels = images.shape[1]
        if len(mean) != channels or len(std) != channels or min(std) <= 0:
            raise ConfigError(f"mean and std need {channels} values with std > 0, got mean={mean}, std={std}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if pad < 0:
            raise ConfigError(f"pad must be >= 0, got {pad}")
        if not dtype.is_floating_point:
            raise ConfigError(f"dtype must be a floating dtype, got {dtype}")
        if drop_last and images.shape[0] < batch_size:
            raise ConfigError(
                f"drop_last=True with batch_size {batch_size} > {images.shape[0]} images leaves no batch per epoch"
            )
        if seed < 0:
            raise ConfigError(f"seed must be >= 0, got {seed}")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.num_samples = int(images.shape[0])
        self.crop_pad = pad if augment else 0
        self.flip = flip and augment
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.channels_last = channels_last
        self.dtype = dtype
        self._scale = 255.0 if images.dtype == torch.uint8 else 1.0  # uint8 pixels to [0, 1]; floats as they are
        self.height, self.width = int(images.shape[2]), int(images.shape[3])
        p = self.crop_pad
        # Zero padding once for the whole split instead of per batch: a batch is then a single gather.
        self._source = F.pad(images.to(self.device), (p, p, p, p)) if p else images.to(self.device).contiguous()
        self._labels = labels.to(self.device, torch.int64)
        shape = (1, channels, 1, 1)
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(shape)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(shape)
        self._rows = torch.arange(self.height, device=self.device)
        self._cols = torch.arange(self.width, device=self.device)
        self._planes = torch.arange(channels, device=self.device) * self._source[0, 0].numel()  # channel offsets

    def __len__(self) -> int:
        """Batches per epoch."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return (self.num_samples + self.batch_size - 1) // self.batch_size

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield the batches ``start_step..len(self)-1`` of epoch ``epoch`` as ``(images, labels)`` on the device.

        ``images`` is ``[B, C, H, W]`` of ``self.dtype`` (channels-last strides if requested), normalized;
        ``labels`` is int64 ``[B]``. The same ``(seed, epoch)`` always gives the same batches.
        """
        if not 0 <= start_step <= len(self):
            raise ConfigError(f"start_step must be in 0..{len(self)}, got {start_step}")
        order, crops = self._draw(epoch)
        for step in range(start_step, len(self)):
            window = slice(step * self.batch_size, min((step + 1) * self.batch_size, self.num_samples))
            index = order[window]
            if crops is None:
                pixels = self._source.index_select(0, index)
                if self.channels_last:
                    pixels = pixels.contiguous(memory_format=torch.channels_last)
            else:
                pixels = self._crop(index, crops[0][window], crops[1][window])
            batch = pixels.to(torch.float32)
            if self._scale != 1.0:
                batch = batch.div_(self._scale)
            batch = batch.sub_(self._mean).div_(self._std)
            yield (batch if self.dtype == torch.float32 else batch.to(self.dtype)), self._labels[index]

    def _draw(self, epoch: int) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """Epoch ``epoch``'s sample order and, when augmenting, per position the source rows ``[N, H]`` and
        columns ``[N, W]`` of the padded images (in that draw order: permutation, top, left, flip)."""
        generator = torch.Generator(device=self.device)
        generator.manual_seed(epoch_seed(self.seed, epoch))
        n, device = self.num_samples, self.device
        if self.shuffle:
            order = torch.randperm(n, generator=generator, device=device)
        else:
            order = torch.arange(n, device=device)
        if not (self.crop_pad or self.flip):
            return order, None
        span = 2 * self.crop_pad + 1  # crop offsets 0..2p, as torchvision RandomCrop on the padded image
        top = torch.randint(0, span, (n, 1), generator=generator, device=device)
        left = torch.randint(0, span, (n, 1), generator=generator, device=device)
        rows = top + self._rows
        cols = left + self._cols
        if self.flip:
            # Flip, then pad and crop at `left`: output column x reads padded column (W + 2p - 1) - left - x.
            flipped = torch.rand((n, 1), generator=generator, device=device) < 0.5
            cols = torch.where(flipped, (self.width + 2 * self.crop_pad - 1) - cols, cols)
        return order, (rows, cols)

    def _crop(self, index: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """The uint8 crops (flips folded into ``cols``) of images ``index``: one ``take`` with flat offsets.

        ``take`` with a broadcast-built flat index is ~3x faster on CPU than 4-tensor advanced indexing and
        the same single gather kernel on GPU.
        """
        _, channels, height, width = self._source.shape
        image = index * (channels * height * width)
        rows = rows * width
        if self.channels_last:
            # Offsets in [B, H, W, C] order, then permute: an NCHW view with channels-last strides, no copy.
            flat = image[:, None, None, None] + rows[:, :, None, None] + cols[:, None, :, None] + self._planes
            return self._source.take(flat).permute(0, 3, 1, 2)
        flat = (
            image[:, None, None, None] + self._planes[:, None, None] + rows[:, None, :, None] + cols[:, None, None, :]
        )
        return self._source.take(flat)
