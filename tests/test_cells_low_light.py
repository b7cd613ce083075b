"""Dim-acquisition (shot-noise) augmentation of the cell trainer (issue 5)."""

from __future__ import annotations

import numpy as np
import pytest

from medseg.cells.augment import augment, flip_rotate, intensity, low_light, random_crop


def test_low_light_is_poisson_at_the_drawn_photon_count():
    """Without a background, a flat image of level v at k photons has mean v and variance v / k (Poisson)."""
    rng = np.random.default_rng(0)
    v, k = 0.4, 20.0
    out = low_light(np.full((300, 300), v, np.float32), rng, photons=(k, k), background=(0.0, 0.0))
    assert out.mean() == pytest.approx(v, rel=0.02)
    assert out.var() == pytest.approx(v / k, rel=0.05)
    assert np.allclose(out * k, np.round(out * k), atol=1e-4)  # whole photon counts


def test_low_light_backgrounds_are_mostly_zeros_with_sparse_bright_pixels():
    """A dark background at b = 0.05 and k = 5 photons: Poisson(0.25) is 0 in 78 % of pixels before the offset
    subtraction, which only adds zeros; the pixels left are whole counts above the offset."""
    rng = np.random.default_rng(1)
    out = low_light(np.zeros((200, 200), np.float32), rng, photons=(5.0, 5.0), background=(0.05, 0.05))
    assert (out == 0).mean() >= np.exp(-0.25) - 0.01
    assert out.max() > 0 and out.min() == 0


def test_augment_without_low_light_keeps_the_random_stream():
    """p_low_light = 0 draws nothing more: the same samples as crop + flip/rotate + intensity alone (runs from before
    the option reproduce)."""
    img = np.random.default_rng(2).random((80, 90)).astype(np.float32)
    tgt = (img > 0.5).astype(np.int64)
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    x, y = augment(img, tgt, (64, 64), a)
    i2, t2 = random_crop(img, tgt, (64, 64), b)
    i2, t2 = flip_rotate(i2, t2, b)
    assert np.array_equal(x, intensity(i2, b)) and np.array_equal(y, t2)
    assert a.random() == b.random()


def test_augment_with_low_light_always_on_changes_only_the_image():
    img = np.random.default_rng(4).random((80, 90)).astype(np.float32)
    tgt = (img > 0.5).astype(np.int64)
    x0, y0 = augment(img, tgt, (64, 64), np.random.default_rng(5))
    x1, y1 = augment(img, tgt, (64, 64), np.random.default_rng(5), p_low_light=1.0)
    assert np.array_equal(y0, y1) and not np.array_equal(x0, x1)
    assert x1.min() >= 0


def test_config_rejects_a_probability_outside_0_1():
    from medseg.cells.config import CellTrainConfig
    from medseg.errors import InputError

    with pytest.raises(InputError, match="low_light_prob must be in"):
        CellTrainConfig(low_light_prob=1.5).validate()


def test_new_runs_train_with_it_and_runs_that_predate_the_field_keep_it_off(tmp_path):
    """The default is on (P = 0.25, chosen on 5 DSB2018 folds); a model.json written before the field existed was
    trained without it, so loading it (for scoring or --resume) must not switch the augmentation on mid-run."""
    import json

    from medseg.cells.config import CellTrainConfig
    from medseg.cells.saved_config import load_config

    assert CellTrainConfig().low_light_prob == 0.25
    conf = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(CellTrainConfig()).items()}
    old = {k: v for k, v in conf.items() if k != "low_light_prob"}
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "model.json").write_text(json.dumps({"kind": "medseg-cells", "config": old}))
    assert load_config(tmp_path / "old")[1].low_light_prob == 0.0
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "model.json").write_text(json.dumps({"kind": "medseg-cells", "config": conf}))
    assert load_config(tmp_path / "new")[1].low_light_prob == 0.25
