"""The digits reader that does not import scikit-learn gives exactly scikit-learn's arrays and split."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from ahps_core.data.digits import approximate_mode, digits_arrays, digits_split
from tests.conftest import REPO


def test_arrays_and_split_equal_scikit_learns():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    ref = load_digits()
    images, labels = digits_arrays()
    assert images.shape == (1797, 8, 8) and np.array_equal(images, ref.images)
    assert labels.dtype == np.int64 and np.array_equal(labels, ref.target)
    for test_size, seed in ((360, 0), (300, 7), (10, 3)):
        train, test = train_test_split(np.arange(len(labels)), test_size=test_size, stratify=labels,
                                       random_state=seed)
        ours_train, ours_test = digits_split(labels, test_size=test_size, seed=seed)
        assert np.array_equal(ours_train, np.sort(train)) and np.array_equal(ours_test, np.sort(test))
    assert len(digits_split(labels)[1]) == 360


def test_approximate_mode_matches_scikit_learn_on_ties():
    from sklearn.utils.extmath import _approximate_mode

    for counts, draws, seed in (([5, 2], 4, 0), ([2, 2, 2, 1], 2, 0), ([2, 2, 2, 1], 2, 42), ([3, 3, 3], 4, 5)):
        c = np.array(counts)
        got = approximate_mode(c, draws, np.random.RandomState(seed))
        assert np.array_equal(got, _approximate_mode(c, draws, np.random.RandomState(seed)))


def test_loading_digits_does_not_import_sklearn():
    code = ("import sys\nfrom ahps_core.data import load_dataset\nd = load_dataset('digits')\n"
            "assert len(d.train) == 1437 and len(d.eval) == 360\n"
            "assert 'sklearn' not in sys.modules, 'sklearn imported'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr


def test_the_loader_equals_the_scikit_learn_path():
    """The DatasetSplit is what the previous loader (scikit-learn's functions) gave: images, labels, mean, std."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from ahps_core.data import load_dataset

    d = load_digits()
    images = np.rint(d.images * (255 / 16)).astype(np.uint8)[:, None]
    train, test = train_test_split(np.arange(len(d.target)), test_size=360, stratify=d.target, random_state=0)
    train, test = np.sort(train), np.sort(test)
    split = load_dataset("digits")
    assert np.array_equal(split.train.images.numpy(), images[train])
    assert np.array_equal(split.eval.labels.numpy(), d.target[test])
    scaled = images[train].astype(np.float64) / 255
    assert split.mean == (float(scaled.mean()),) and split.std == (float(scaled.std()),)
