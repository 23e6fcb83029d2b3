"""Real Fashion-MNIST and digits: split sizes, determinism, disjointness, preprocessing."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from trainables.data import DataConfig, load_raw, load_splits
from trainables.data.splits import carve, generator
from trainables.errors import DataError


def test_fashion_mnist_default_splits(fashion_mnist_splits):
    s = fashion_mnist_splits
    assert s.sizes() == {"train": 55000, "val": 5000, "test": 10000}
    assert s.image_shape == (1, 28, 28)
    assert s.num_classes == 10 and s.classes[0] == "T-shirt/top"
    for split in (s.train, s.val, s.test):
        assert split.images.dtype == torch.uint8
        assert set(split.labels.unique().tolist()) == set(range(10))
    # Fashion-MNIST's well-known statistics
    assert s.mean[0] == pytest.approx(0.2860, abs=2e-3)
    assert s.std[0] == pytest.approx(0.3530, abs=2e-3)


def test_val_is_carved_disjointly_from_train(fashion_mnist_splits):
    train_idx, val_idx = fashion_mnist_splits.train.indices, fashion_mnist_splits.val.indices
    assert len(set(train_idx.tolist()) & set(val_idx.tolist())) == 0
    assert sorted(train_idx.tolist() + val_idx.tolist()) == list(range(60000))


def test_split_is_deterministic_and_seeded(fashion_mnist_splits):
    again = load_splits(DataConfig(name="fashion_mnist", download=False))
    assert torch.equal(again.val.indices, fashion_mnist_splits.val.indices)
    assert torch.equal(again.val.images, fashion_mnist_splits.val.images)
    other = load_splits(DataConfig(name="fashion_mnist", download=False, split_seed=1))
    overlap = len(set(other.val.indices.tolist()) & set(fashion_mnist_splits.val.indices.tolist()))
    assert overlap < 1000  # ~5000 * 5000 / 60000 = 417 expected by chance


def test_normalised_batches_have_unit_statistics(fashion_mnist_splits):
    x, y = fashion_mnist_splits.train.batch(torch.arange(20000))
    assert x.dtype == torch.float32 and x.shape == (20000, 1, 28, 28)
    assert x.mean().item() == pytest.approx(0.0, abs=0.02)
    assert x.std().item() == pytest.approx(1.0, abs=0.02)


def test_dataloader_batches_equal_single_items(digits_splits):
    loader = DataLoader(digits_splits.train, batch_size=16, shuffle=False)
    x, y = next(iter(loader))
    singles = [digits_splits.train[i] for i in range(16)]
    assert torch.equal(x, torch.stack([s[0] for s in singles]))
    assert torch.equal(y, torch.stack([s[1] for s in singles]))


def test_digits_test_carve_out_keeps_every_image_once(digits_splits):
    from sklearn.datasets import load_digits

    sizes = digits_splits.sizes()
    assert sum(sizes.values()) == 1797
    assert sizes["test"] == round(0.2 * 1797)
    assert digits_splits.image_shape == (1, 8, 8)
    # the three splits together are exactly the dataset: compare multisets of (pixels, label) rows
    rows = lambda images, labels: sorted(  # noqa: E731
        zip(map(bytes, images.reshape(len(images), -1).numpy()), labels.tolist(), strict=True)
    )
    ours = sum(
        (
            rows(d.images, d.labels)
            for d in (digits_splits.train, digits_splits.val, digits_splits.test)
        ),
        [],
    )
    bunch = load_digits()
    original = torch.from_numpy((bunch.images * (255.0 / 16.0)).round().astype("uint8"))
    assert sorted(ours) == rows(original, torch.from_numpy(bunch.target))


def test_subsets_are_seeded_and_drawn_from_their_split(fashion_mnist_splits):
    cfg = DataConfig(
        name="fashion_mnist", download=False, subset={"train": 1000, "val": 300, "test": 200}
    )
    s = load_splits(cfg)
    assert s.sizes() == {"train": 1000, "val": 300, "test": 200}
    assert set(s.val.indices.tolist()) <= set(fashion_mnist_splits.val.indices.tolist())
    assert set(s.train.indices.tolist()) <= set(fashion_mnist_splits.train.indices.tolist())
    assert torch.equal(load_splits(cfg).train.indices, s.train.indices)
    # normalisation statistics come from the (subset) train split
    assert s.mean[0] == pytest.approx(fashion_mnist_splits.mean[0], abs=0.02)


def test_resize_and_channel_conversion():
    s = load_splits(DataConfig(name="digits", image_size=16, channels=3))
    assert s.image_shape == (3, 16, 16)
    assert torch.equal(s.train.images[:, 0], s.train.images[:, 2])  # grey repeated
    assert len(s.mean) == 3


def test_carve_is_a_partition():
    kept, carved = carve(100, 30, generator(0, "x"))
    assert len(carved) == 30 and len(kept) == 70
    assert sorted(kept.tolist() + carved.tolist()) == list(range(100))
    again, _ = carve(100, 30, generator(0, "x"))
    assert torch.equal(kept, again)
    different, _ = carve(100, 30, generator(0, "y"))
    assert not torch.equal(kept, different)


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"val_size": 60000}, "data.val_size=60000 gives 60000 of 60000"),
        ({"subset": {"val": 6000}}, "data.subset.val=6000 exceeds the 5000 images"),
        ({"test_size": 0.1}, "data.test_size=0.1: fashion_mnist ships its own test split"),
        ({"normalize": "imagenet"}, "data.normalize=imagenet needs 3-channel images"),
    ],
)
def test_impossible_splits_name_the_field(options, fragment):
    with pytest.raises(DataError) as info:
        load_splits(DataConfig(name="fashion_mnist", download=False, **options))
    assert fragment in str(info.value)


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(DataError) as info:
        load_raw(DataConfig(name="mnistt"))
    assert "data.name='mnistt'" in str(info.value) and "fashion_mnist" in str(info.value)
