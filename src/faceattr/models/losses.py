"""Losses and metrics that take partial labels: age intervals, and missing labels left out.

Targets (``data.targets.label_arrays`` builds them):

- ``age``: (N, 2) float32 ``[lo, hi]`` in years. An exact age is ``[age, age]``; an age group
  its ends (an open group such as 70+ has ``hi = data.targets.OPEN_END``); no age label is ``[nan, nan]``.
  A plain (N, 1) exact-age target is taken too (``[age, age]``).
- ``gender``, ``race``: (N,) int32 class indices, ``-1`` where not labelled.

**Interval age loss.** The error of a prediction is its distance outside the labelled interval,
``d = max(lo - pred, 0, pred - hi)``: zero anywhere inside the group, growing as the prediction
leaves it, and for an exact age exactly ``|pred - age|``. The usual age loss (``mae``, ``huber``,
``mse``) is applied to ``d``, so exact ages train as before and both label families share one
loss. Why this one: an age group says only that the age lies inside it, so every age inside is
equally right (no pull towards the group's middle, which would bias wide groups like 70+),
while a prediction outside is wrong by how far it is out, on the same scale in years as the
exact ages' errors. (An ordinal or soft-label loss over groups would need the two families to
be weighed against each other.)

**Missing labels.** A face without a label for a head adds nothing to that head's loss or metric
(its per-face loss is 0, and metrics count only labelled faces); the other heads still learn from
it. Losses are summed over the batch and divided by the batch size, as Keras' own are.
"""

from __future__ import annotations

import keras
from keras import ops

from faceattr.data.targets import OPEN_END


def _interval(y_true):
    """(lo, hi, labelled) from an (N, 2) interval or an (N, 1) exact-age target; (N,) each."""
    y_true = ops.cast(y_true, "float32")
    lo = y_true[:, 0]
    hi = y_true[:, 1] if y_true.shape[-1] == 2 else lo
    labelled = ops.logical_not(ops.isnan(lo))
    return ops.where(labelled, lo, 0.0), ops.where(ops.isnan(hi), OPEN_END, hi), labelled


def interval_distance(y_true, y_pred):
    """Years from each predicted age (N, 1) to its labelled interval (0 inside), and whether the
    face has an age label; both (N,)."""
    lo, hi, labelled = _interval(y_true)
    pred = ops.cast(y_pred, "float32")[:, 0]
    distance = ops.maximum(ops.maximum(lo - pred, pred - hi), 0.0)
    return ops.where(labelled, distance, 0.0), labelled


@keras.saving.register_keras_serializable(package="faceattr")
class IntervalAgeLoss(keras.losses.Loss):
    """``kind`` (mae | huber | mse) of the distance outside the age interval; 0 for faces without
    an age label. ``delta``: Huber's switch from quadratic to linear, years."""

    def __init__(self, kind: str = "huber", delta: float = 5.0, name: str = "interval_age_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        if kind not in ("mae", "huber", "mse"):
            raise ValueError(f"age loss: unknown kind {kind!r} (mae|huber|mse)")
        self.kind, self.delta = kind, float(delta)

    def call(self, y_true, y_pred):
        d, labelled = interval_distance(y_true, y_pred)
        if self.kind == "mae":
            loss = d
        elif self.kind == "mse":
            loss = ops.square(d)
        else:
            small = ops.minimum(d, self.delta)
            loss = 0.5 * ops.square(small) + self.delta * (d - small)
        return ops.where(labelled, loss, 0.0)

    def get_config(self) -> dict:
        return {**super().get_config(), "kind": self.kind, "delta": self.delta}


@keras.saving.register_keras_serializable(package="faceattr")
class MaskedSparseCategoricalCrossentropy(keras.losses.Loss):
    """Sparse categorical cross-entropy on probabilities; 0 for faces labelled ``-1``."""

    def __init__(self, name: str = "masked_sparse_categorical_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        y_true = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        labelled = y_true >= 0
        ce = keras.losses.sparse_categorical_crossentropy(ops.maximum(y_true, 0), y_pred)
        return ops.where(labelled, ce, 0.0)


class _MaskedMean(keras.metrics.Metric):
    """The mean of a per-face value over the faces that carry the label (sample weights ignored)."""

    def __init__(self, name: str, **kwargs):
        super().__init__(name=name, **kwargs)
        self.total = self.add_variable((), initializer="zeros", name="total")
        self.count = self.add_variable((), initializer="zeros", name="count")

    def values(self, y_true, y_pred):  # (per-face value, labelled), both (N,)
        raise NotImplementedError

    def update_state(self, y_true, y_pred, sample_weight=None):
        value, labelled = self.values(y_true, y_pred)
        mask = ops.cast(labelled, "float32")
        self.total.assign_add(ops.sum(ops.cast(value, "float32") * mask))
        self.count.assign_add(ops.sum(mask))

    def result(self):
        return ops.divide_no_nan(self.total, self.count)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)


@keras.saving.register_keras_serializable(package="faceattr")
class IntervalMAE(_MaskedMean):
    """Mean years outside the labelled age interval (the MAE for exact ages), over faces with an age."""

    def __init__(self, name: str = "mae", **kwargs):
        super().__init__(name=name, **kwargs)

    def values(self, y_true, y_pred):
        return interval_distance(y_true, y_pred)


@keras.saving.register_keras_serializable(package="faceattr")
class MaskedAccuracy(_MaskedMean):
    """Accuracy of the most probable class, over faces with a label (``-1``: none)."""

    def __init__(self, name: str = "accuracy", **kwargs):
        super().__init__(name=name, **kwargs)

    def values(self, y_true, y_pred):
        y_true = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        hit = ops.cast(ops.equal(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), y_true), "float32")
        return hit, y_true >= 0
