"""DeviceLoader: shapes, NB201 normalization/crop/flip semantics, reproducibility and resumption."""

from __future__ import annotations

import itertools

import pytest
import torch

from ahps_core.data import DeviceLoader, epoch_seed, load_dataset
from ahps_core.errors import ConfigError

MEAN = (0.49, 0.48, 0.45)
STD = (0.25, 0.24, 0.26)


def _data(
    n: int = 50, size: int = 8, channels: int = 3, seed: int = 0, width: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (n, channels, size, width or size)
    images = torch.randint(1, 256, shape, generator=g, dtype=torch.uint8)  # no zero pixel
    return images, torch.arange(n)  # label = index, to identify each sample in a batch


def _normalize(pixels: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    """torchvision ToTensor + Normalize on uint8 CHW pixels."""
    shape = (1, -1, 1, 1)
    return (pixels.float() / 255 - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape)


def _torchvision_crop(image: torch.Tensor, top: int, left: int, flip: bool, pad: int) -> torch.Tensor:
    """Reference: RandomHorizontalFlip, then RandomCrop(size, padding=pad) at (top, left), on uint8 CHW."""
    if flip:
        image = image.flip(-1)
    padded = torch.nn.functional.pad(image, (pad, pad, pad, pad))  # fill 0, as torchvision's default
    h, w = image.shape[-2:]
    return padded[:, top : top + h, left : left + w]


def _assert_each_is_one_crop_of_its_source(images: torch.Tensor, x: torch.Tensor, y: torch.Tensor, pad: int) -> None:
    choices = list(itertools.product(range(2 * pad + 1), range(2 * pad + 1), (False, True)))
    found = []
    for out, label in zip(x, y, strict=True):
        source = images[label]
        matches = [
            c for c in choices if torch.allclose(out, _normalize(_torchvision_crop(source, *c, pad))[0], atol=1e-6)
        ]
        assert len(matches) == 1, f"image {int(label)} is not one crop/flip of its source"
        found.append(matches[0])
    offsets = {(top, left) for top, left, _ in found}
    flips = [flip for _, _, flip in found]
    assert len(offsets) > 10  # per-image offsets, not one per batch
    assert 16 < sum(flips) < 48  # per-image flips, p = 1/2
    assert any(top != pad or left != pad for top, left, _ in found)  # the crop really moves content


def _batches(loader: DeviceLoader, epoch: int, start: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader.epoch(epoch, start)]


def test_shapes_len_and_drop_last() -> None:
    images, labels = _data(50)
    loader = DeviceLoader(images, labels, 16, mean=MEAN, std=STD)
    batches = _batches(loader, 0)
    assert len(loader) == len(batches) == 4
    assert [len(y) for _, y in batches] == [16, 16, 16, 2]
    x, y = batches[0]
    assert x.shape == (16, 3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    dropping = DeviceLoader(images, labels, 16, mean=MEAN, std=STD, drop_last=True)
    assert len(dropping) == 3 and [len(y) for _, y in dropping.epoch(0)] == [16, 16, 16]


def test_each_epoch_visits_every_sample_once_in_a_new_order() -> None:
    images, labels = _data(50)
    loader = DeviceLoader(images, labels, 16, mean=MEAN, std=STD, shuffle=True)
    orders = [torch.cat([y for _, y in loader.epoch(e)]) for e in range(3)]
    for order in orders:
        assert torch.equal(order.sort().values, labels)
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[1], orders[2])


def test_evaluation_mode_is_plain_normalization_in_order() -> None:
    images, labels = _data(20)
    loader = DeviceLoader(images, labels, 8, mean=MEAN, std=STD, augment=False, shuffle=False)
    x = torch.cat([x for x, _ in loader.epoch(0)])
    y = torch.cat([y for _, y in loader.epoch(0)])
    assert torch.equal(y, labels)
    torch.testing.assert_close(x, _normalize(images), rtol=0, atol=1e-6)


def test_crop_and_flip_match_torchvision_semantics_per_image() -> None:
    """Every augmented image is exactly flip -> zero-pad -> crop of its source, with its own offsets."""
    pad = 2
    images, labels = _data(64, size=8, width=11)  # not square: rows and columns must not be mixed up
    for channels_last in (False, True):
        loader = DeviceLoader(
            images, labels, 64, mean=MEAN, std=STD, augment=True, pad=pad, seed=3, channels_last=channels_last
        )
        ((x, y),) = list(loader.epoch(0))
        _assert_each_is_one_crop_of_its_source(images, x, y, pad)


def test_padding_is_zero_pixels_normalized_like_nb201() -> None:
    """Padded pixels are 0 in [0, 255] space before Normalize, i.e. exactly -mean/std per channel."""
    images = torch.full((200, 3, 4, 4), 200, dtype=torch.uint8)
    loader = DeviceLoader(
        images, torch.zeros(200, dtype=torch.long), 200, mean=MEAN, std=STD, augment=True, pad=4, flip=False
    )
    ((x, _),) = list(loader.epoch(0))
    fill = torch.tensor([-m / s for m, s in zip(MEAN, STD, strict=True)])
    content = _normalize(images[:1])[0, :, 0, 0]
    is_fill = torch.isclose(x, fill.view(1, 3, 1, 1).expand_as(x), atol=1e-6)
    is_content = torch.isclose(x, content.view(1, 3, 1, 1).expand_as(x), atol=1e-6)
    assert (is_fill | is_content).all()
    assert is_fill.any() and is_content.any()
    assert is_fill.float().mean() > 0.3  # pad 4 on a 4x4 image: most crops are mostly padding


def test_same_seed_and_epoch_reproduce_regardless_of_history() -> None:
    images, labels = _data(40)

    def make(seed: int) -> DeviceLoader:
        return DeviceLoader(images, labels, 16, mean=MEAN, std=STD, augment=True, pad=2, seed=seed)

    fresh = _batches(make(7), 2)
    used = make(7)
    for epoch in (0, 1, 5):
        _batches(used, epoch)
    again = _batches(used, 2)  # after other epochs ran
    for (xa, ya), (xb, yb) in zip(fresh, again, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other_epoch = _batches(make(7), 3)
    other_seed = _batches(make(8), 2)
    assert not torch.equal(fresh[0][0], other_epoch[0][0])
    assert not torch.equal(fresh[0][0], other_seed[0][0])


def test_resume_from_step_yields_the_remaining_batches() -> None:
    images, labels = _data(50)
    loader = DeviceLoader(images, labels, 16, mean=MEAN, std=STD, augment=True, pad=2, seed=1)
    full = _batches(loader, 4)
    resumed = _batches(DeviceLoader(images, labels, 16, mean=MEAN, std=STD, augment=True, pad=2, seed=1), 4, start=2)
    assert len(resumed) == 2
    for (xa, ya), (xb, yb) in zip(full[2:], resumed, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert _batches(loader, 4, start=len(loader)) == []
    with pytest.raises(ConfigError, match=r"start_step must be in 0\.\.4"):
        next(loader.epoch(0, start_step=5))


def test_epoch_seed_depends_on_seed_and_epoch() -> None:
    seeds = {epoch_seed(s, e) for s in range(5) for e in range(50)}
    assert len(seeds) == 250 and all(0 <= v < 2**63 for v in seeds)
    assert epoch_seed(3, 4) == epoch_seed(3, 4)


def test_channels_last_and_dtype_options() -> None:
    images, labels = _data(30)
    kwargs = {"mean": MEAN, "std": STD, "augment": True, "pad": 2, "seed": 5}
    plain = _batches(DeviceLoader(images, labels, 10, **kwargs), 0)
    nhwc = _batches(DeviceLoader(images, labels, 10, channels_last=True, **kwargs), 0)
    half = _batches(DeviceLoader(images, labels, 10, dtype=torch.bfloat16, **kwargs), 0)
    for (xp, yp), (xc, yc), (xh, _) in zip(plain, nhwc, half, strict=True):
        assert torch.equal(xp, xc) and torch.equal(yp, yc)
        assert xc.is_contiguous(memory_format=torch.channels_last) and not xc.is_contiguous()
        assert xh.dtype == torch.bfloat16
        torch.testing.assert_close(xh.float(), xp, rtol=1e-2, atol=2e-2)
    evaluation = next(DeviceLoader(images, labels, 10, mean=MEAN, std=STD, channels_last=True).epoch(0))[0]
    assert evaluation.is_contiguous(memory_format=torch.channels_last)


def test_flip_only_and_single_channel() -> None:
    images, labels = _data(64, size=6, channels=1)
    loader = DeviceLoader(images, labels, 64, mean=(0.3,), std=(0.4,), augment=True, pad=0, flip=True, shuffle=False)
    ((x, _),) = list(loader.epoch(0))
    expected, mirrored = _normalize(images, (0.3,), (0.4,)), _normalize(images.flip(-1), (0.3,), (0.4,))
    same = torch.isclose(x, expected, atol=1e-6).flatten(1).all(1)
    flipped = torch.isclose(x, mirrored, atol=1e-6).flatten(1).all(1)
    assert (same | flipped).all() and same.any() and flipped.any()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"mean": (0.5,)}, "mean and std need 3 values"),
        ({"std": (0.2, 0.0, 0.2)}, "std > 0"),
        ({"pad": -1}, "pad must be >= 0"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"dtype": torch.int32}, "floating dtype"),
        ({"batch_size": 100, "drop_last": True}, "leaves no batch"),
    ],
)
def test_bad_arguments_are_config_errors(kwargs: dict, message: str) -> None:
    images, labels = _data(20)
    args = {"batch_size": 8, "mean": MEAN, "std": STD} | kwargs
    with pytest.raises(ConfigError, match=message):
        DeviceLoader(images, labels, **args)


def test_bad_tensors_are_config_errors() -> None:
    images, labels = _data(20)
    with pytest.raises(ConfigError, match="uint8 or float32"):
        DeviceLoader(images.double(), labels, mean=MEAN, std=STD)
    with pytest.raises(ConfigError, match="uint8 or float32"):
        DeviceLoader(images[:, 0], labels, mean=MEAN, std=STD)
    with pytest.raises(ConfigError, match="labels must be"):
        DeviceLoader(images, labels[:5], mean=MEAN, std=STD)


def test_float_images_are_taken_as_they_are() -> None:
    """User data (ahps_core.data.custom) may hold float inputs: normalized, but not divided by 255."""
    images, labels = _data(20)
    as_uint8 = DeviceLoader(images, labels, batch_size=20, mean=MEAN, std=STD, shuffle=False)
    as_float = DeviceLoader(images.float() / 255, labels, batch_size=20, mean=MEAN, std=STD, shuffle=False)
    (xa, ya), = as_uint8.epoch(0)
    (xb, yb), = as_float.epoch(0)
    assert torch.allclose(xa, xb, atol=1e-5) and torch.equal(ya, yb)


def test_dataset_split_loader_uses_its_metadata() -> None:
    data = load_dataset("digits")
    train = data.loader("train", batch_size=128, seed=0)
    test = data.loader("test", batch_size=128)
    assert len(train) == 12 and len(test) == 3
    x, y = next(test.epoch(0))
    torch.testing.assert_close(x, _normalize(data.eval.images[:128], data.mean, data.std), rtol=0, atol=1e-6)
    assert torch.equal(y, data.eval.labels[:128])
    with pytest.raises(ConfigError, match="unknown part 'valid'"):
        data.loader("valid")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_iteration_never_synchronizes_with_the_host() -> None:
    images, labels = _data(1000, size=32)
    loader = DeviceLoader(images, labels, 256, "cuda", mean=MEAN, std=STD, augment=True, pad=4, channels_last=True)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for x, y in loader.epoch(0):
            assert x.device.type == "cuda" and y.device.type == "cuda"
    finally:
        torch.cuda.set_sync_debug_mode("default")
