"""Training-batch augmentation (random crop from a padded image, horizontal flip): what it draws,
that it is a function of the data generator alone, and that a resumed run sees the same batches."""

from __future__ import annotations

import pytest
import torch

import harness.training as T
from harness import checkpoints as ckpt
from harness import config as C
from harness.context import RunContext
from harness.core.rundir import RunDir
from harness.data import Augment, Split, load_dataset


def _images(n=64, c=3, h=8, w=8, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def _windows(x, p, mode):
    """Every (offset, flip) candidate of one image: the set an augmented image must come from."""
    padded = torch.nn.functional.pad(x[None], (p, p, p, p), mode="constant" if mode == "zeros" else "reflect")[0]
    h, w = x.shape[-2:]
    for dy in range(2 * p + 1):
        for dx in range(2 * p + 1):
            win = padded[:, dy : dy + h, dx : dx + w]
            yield (dy, dx, False), win
            yield (dy, dx, True), win.flip(-1)


@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_each_augmented_image_is_a_window_of_its_padded_image_maybe_mirrored(mode):
    x = _images(32)
    out = Augment(2, mode, flip=True)(x, torch.Generator().manual_seed(5))
    assert out.shape == x.shape and out.dtype == x.dtype
    seen = set()
    for i in range(x.shape[0]):
        matches = [k for k, win in _windows(x[i], 2, mode) if torch.equal(win, out[i])]
        assert matches, f"example {i} is no crop of its padded image"
        seen.add(matches[0])
    # the offsets and flips drawn cover the range, not one corner
    assert {dy for dy, _, _ in seen} == set(range(5)) and {f for *_, f in seen} == {True, False}


def test_zero_padding_is_black_and_reflect_padding_repeats_the_image():
    ones = torch.ones(200, 1, 6, 6)
    zeros_pad = Augment(3, "zeros", flip=False)(ones, torch.Generator().manual_seed(0))
    reflect = Augment(3, "reflect", flip=False)(ones, torch.Generator().manual_seed(0))
    assert torch.equal(reflect, ones)
    assert (zeros_pad == 0).any() and ((zeros_pad == 0) | (zeros_pad == 1)).all()
    # a crop at offset p sees no padding; offset 0 leaves p zero rows at the top
    assert (zeros_pad.flatten(1).sum(1) == 36).any() and (zeros_pad[:, 0, 0, :].sum(1) == 0).any()


def test_flip_alone_mirrors_about_half_and_crop_alone_never_mirrors():
    x = _images(2000, c=1, h=4, w=4)
    flipped = Augment(0, "zeros", flip=True)(x, torch.Generator().manual_seed(1))
    mirrored = (flipped == x.flip(-1)).flatten(1).all(1)
    same = (flipped == x).flatten(1).all(1)
    assert (mirrored | same).all() and 0.45 < mirrored.float().mean() < 0.55
    assert Augment.of("crop", 2).flip is False
    assert Augment.of("none") is None


def test_the_draw_depends_on_the_generator_alone():
    x = _images(16)
    aug = Augment(4, "zeros", True)
    a = aug(x, torch.Generator().manual_seed(7))
    b = aug(x.clone(), torch.Generator().manual_seed(7))
    c = aug(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_split_batches_augment_shuffled_training_batches_only():
    x, y = _images(40), torch.arange(40) % 10
    plain = Split(x, y)
    aug = Split(x, y, Augment(2, "zeros", True))
    augmented = list(aug.batches(16, shuffle=True, generator=torch.Generator().manual_seed(3)))
    shuffled = list(plain.batches(16, shuffle=True, generator=torch.Generator().manual_seed(3)))
    assert [len(b[1]) for b in augmented] == [16, 16, 8]
    for (xa, ya), (xp, yp) in zip(augmented, shuffled):
        assert torch.equal(ya, yp)  # the epoch's order is the generator's first draw; augmentation comes after it
        assert not torch.equal(xa, xp)
    # unshuffled (evaluation) batches of the same split are the images as stored
    assert torch.equal(torch.cat([b[0] for b in aug.batches(16)]), x)


def test_load_dataset_puts_the_augmentation_on_train_only():
    b = load_dataset("synthetic", augment=Augment(1, "reflect", True))
    assert b.train.augment is not None and b.val.augment is None and b.test.augment is None
    assert b.info()["augment"]["pad_mode"] == "reflect"


def test_a_resumed_augmented_run_is_bitwise_the_uninterrupted_one(tmp_path):
    cfg = C.resolve(
        {
            "defense": "fast-at",
            "dataset": "synthetic",
            "device": "cpu",
            "train": {"epochs": 2},
            "data": {"augment": "crop-flip", "crop_padding": 2, "pad_mode": "reflect"},
            "monitor": {"val_n": 50},
            "out": {"root": str(tmp_path), "name": "x"},
        }
    )
    assert cfg["data"]["augment"] == "crop-flip"

    def new(name):
        run = RunDir.create(tmp_path, name)
        run.write_config(cfg)
        return run

    whole = new("whole")
    T.train(whole, RunContext.from_config(cfg), progress=False)
    cut = new("cut")

    def stop(epoch, row):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        T.train(cut, RunContext.from_config(cfg), progress=False, on_epoch_end=stop)
    T.train(cut, RunContext.from_config(cfg), resume=True, progress=False)
    a = ckpt.load_resume(whole.checkpoint_path("last"))["model"]
    b = ckpt.load_resume(cut.checkpoint_path("last"))["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and augmentation changed training: the same run without it ends elsewhere
    plain_cfg = C.deep_merge(cfg, {"data": {"augment": "none"}})
    plain = RunDir.create(tmp_path, "plain")
    plain.write_config(plain_cfg)
    T.train(plain, RunContext.from_config(plain_cfg), progress=False)
    c = ckpt.load_resume(plain.checkpoint_path("last"))["model"]
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("split, first_val", [("numpy-legacy", None), ("first", 0)])
def test_val_split_methods(split, first_val):
    import numpy as np

    b = load_dataset("synthetic", val_size=100, split=split, split_seed=0)
    raw = load_dataset("synthetic", val_size=1, split="first")  # train = every example but the first
    full_x = torch.cat([raw.val.x, raw.train.x])
    if split == "numpy-legacy":
        np.random.seed(0)
        expected = np.sort(np.random.permutation(3000)[:100])  # Rice et al.'s generate_validation.py, exactly
        assert torch.equal(b.val.x, full_x[torch.from_numpy(expected)])
    else:
        assert torch.equal(b.val.x, full_x[:100])
    assert len(b.train) == 2900 and b.split == split
