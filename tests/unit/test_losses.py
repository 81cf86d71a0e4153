"""The losses and metrics of partial labels (models.losses) on values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from faceattr.data.targets import OPEN_END
from faceattr.models.losses import (
    IntervalAgeLoss,
    IntervalMAE,
    MaskedAccuracy,
    MaskedSparseCategoricalCrossentropy,
)

NAN = math.nan
# An age group (inside), an exact age (3 years off), an open group 70+ (10 years under), no age.
TARGETS = np.array([[20, 29], [30, 30], [70, OPEN_END], [NAN, NAN]], np.float32)
PREDICTED = np.array([[25.0], [33.0], [60.0], [50.0]], np.float32)


@pytest.mark.parametrize(("kind", "per_face"), [
    ("mae", [0.0, 3.0, 10.0, 0.0]),
    ("mse", [0.0, 9.0, 100.0, 0.0]),
    ("huber", [0.0, 4.5, 5 * 10 - 12.5, 0.0]),  # delta 5: 0.5 d^2 inside, 5 d - 12.5 beyond
])
def test_interval_age_loss_on_known_values(kind, per_face):
    loss = IntervalAgeLoss(kind, delta=5.0)
    assert float(loss(TARGETS, PREDICTED)) == pytest.approx(sum(per_face) / 4)  # over the batch, as Keras' own
    weights = np.array([1, 1, 0, 1], np.float32)
    assert float(loss(TARGETS, PREDICTED, sample_weight=weights)) == pytest.approx((per_face[1]) / 4)


def test_an_exact_age_trains_as_the_plain_loss():
    ages = np.array([[12.0], [40.0]], np.float32)
    pred = np.array([[15.0], [31.0]], np.float32)
    import keras

    assert float(IntervalAgeLoss("huber", 5.0)(ages, pred)) == pytest.approx(float(keras.losses.Huber(5.0)(ages, pred)))
    assert float(IntervalAgeLoss("mae")(np.hstack([ages, ages]), pred)) == pytest.approx(6.0)


def test_interval_mae_counts_faces_with_an_age_only():
    metric = IntervalMAE()
    metric.update_state(TARGETS, PREDICTED)
    assert float(metric.result()) == pytest.approx(13.0 / 3)


def test_missing_classes_are_left_out():
    y = np.array([1, -1, 0], np.int32)
    probs = np.array([[0.2, 0.8], [0.9, 0.1], [0.6, 0.4]], np.float32)
    ce = MaskedSparseCategoricalCrossentropy()(y, probs)
    assert float(ce) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 3, rel=1e-5)
    accuracy = MaskedAccuracy()
    accuracy.update_state(y, np.array([[0.2, 0.8], [0.9, 0.1], [0.3, 0.7]], np.float32))
    assert float(accuracy.result()) == pytest.approx(0.5)  # one right of the two labelled


def test_no_label_gives_no_gradient():
    import tensorflow as tf

    pred = tf.Variable([[50.0], [50.0]])
    with tf.GradientTape() as tape:
        loss = IntervalAgeLoss("huber")(np.array([[NAN, NAN], [20, 29]], np.float32), pred)
    grad = tape.gradient(loss, pred).numpy()
    assert grad[0, 0] == 0.0 and grad[1, 0] > 0 and np.isfinite(grad).all()
