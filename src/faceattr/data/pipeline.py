"""The tf.data input pipeline: file paths and labels in, batches of images and labels out.

::

    from_tensor_slices(paths, labels, copies, weights)
      -> read + decode JPEG + resize (parallel)        uint8, shape (S, S, 3)
      -> cache() in memory (filled during the first epoch; one entry per image, not per copy)
      -> [training] repeat each image `copies` times, shuffle
      -> batch -> [training] augment the batch (different every epoch) -> float32 -> prefetch

Images come out as float32 RGB in [0, 255], shape (N, S, S, 3): normalisation belongs to the
model, which saves it with itself. Labels come out as ``data.targets.label_arrays`` makes
them: ``{"age": float32 (N, 2) [lo, hi] years, "gender": int32 (N,), "race": int32 (N,)}``, -1 or
NaN where a label is missing.

The cache keeps the resized images as uint8 (S*S*3 bytes each, ~27 kB at 96 px) and keeps
each image once even when oversampling repeats it; repeats are made after the cache so
augmentation makes them differ. Augmentation runs on whole batches with stateless random ops
seeded from ``tf.data.Dataset.random(..., rerandomize_each_iteration=True)``, so it is
reproducible for a seed yet different in every epoch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tensorflow as tf

from faceattr.config import AugmentConfig
from faceattr.config import settings as config_settings
from faceattr.data.targets import label_arrays
from faceattr.errors import DataError

AUTOTUNE = tf.data.AUTOTUNE


def _decode(path: tf.Tensor, image_size: int) -> tf.Tensor:
    """Read one JPEG file -> uint8 RGB (image_size, image_size, 3), resized with antialiasing."""
    image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
    # Area averaging, as cv2.INTER_AREA in models.preprocessing: training and serving resize alike.
    image = tf.image.resize(image, (image_size, image_size), method="area")
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def load_images(paths: Sequence[str | Path], image_size: int) -> np.ndarray:
    """Decode and resize a few images (e.g. for a face grid) exactly as the pipeline does.

    Returns float32 RGB in [0, 255], shape (N, image_size, image_size, 3).
    """
    images = []
    for p in paths:
        if not Path(p).is_file():
            raise DataError(f"{p}: no such image file")
        try:
            images.append(_decode(tf.constant(str(p)), int(image_size)).numpy())
        except tf.errors.InvalidArgumentError as exc:
            raise DataError(f"{p}: cannot decode image ({exc.message.splitlines()[0]})") from exc
    if not images:
        return np.zeros((0, image_size, image_size, 3), np.float32)
    return np.stack(images).astype(np.float32)


# Not converted by AutoGraph: its branches test the config's Python values, never a tensor, and
# converting it (with the config checks it calls) took half a minute of every first training.
@tf.autograph.experimental.do_not_convert
def augment_batch(images: tf.Tensor, seed: tf.Tensor, augment_cfg: Mapping[str, Any] | None) -> tf.Tensor:
    """Randomly augment a batch, float32 (N, H, W, 3) in [0, 255] -> same shape and range.

    Per image: horizontal flip (``flip``), rotation uniform in ``[-rotation_deg,
    rotation_deg]`` degrees, zoom factor in ``[1 - scale, 1 + scale]`` (> 1 magnifies) and a
    shift of up to ``shift`` times the side along each axis (all about the centre, reflected
    borders), brightness shift up to ``brightness`` (on a
    0-1 scale), contrast factor in ``[1 - contrast, 1 + contrast]`` and, with probability
    ``blur``, a 3x3 box blur. ``seed`` is a shape (2,) int seed for stateless random ops.

    What real photos add to a chip (each off at 0, so older configs and caches are unchanged):
    with probability ``downscale``, the face shrunk to a factor in ``[downscale_min, 1]`` of its
    side and enlarged back (a small, soft face in a photo); a gamma in ``[1 / (1 + gamma),
    1 + gamma]`` (lighting); saturation factor in ``[1 - saturation, 1 + saturation]``; with
    probability ``grayscale``, the grey image; Gaussian noise of standard deviation up to
    ``noise`` (0-1 scale); with probability ``jpeg``, JPEG compression at a quality in
    ``[jpeg_quality_min, 95]``.
    """
    augment = config_settings(AugmentConfig, augment_cfg, "data.augment.")  # None: every op off
    n = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, num=5)

    def uniform(i: int, lo: float, hi: float, shape=None) -> tf.Tensor:
        return tf.random.stateless_uniform(shape if shape is not None else [n], seeds[i], lo, hi)

    def per_image(mask: tf.Tensor) -> tf.Tensor:
        return tf.reshape(mask, [-1, 1, 1, 1])

    if bool(augment.flip):
        images = tf.where(per_image(uniform(0, 0.0, 1.0) < 0.5), tf.reverse(images, axis=[2]), images)

    images = _turn_zoom_shift(images, seeds[1], augment)

    brightness = float(augment.brightness)
    if brightness > 0:
        images = images + per_image(uniform(2, -brightness, brightness)) * 255.0

    contrast = float(augment.contrast)
    if contrast > 0:
        mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
        images = (images - mean) * per_image(uniform(3, 1.0 - contrast, 1.0 + contrast)) + mean

    blur = float(augment.blur)
    if blur > 0:
        kernel = tf.fill([3, 3, 3, 1], 1.0 / 9.0)
        padded = tf.pad(images, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT")
        blurred = tf.nn.depthwise_conv2d(padded, kernel, strides=[1, 1, 1, 1], padding="VALID")
        images = tf.where(per_image(uniform(4, 0.0, 1.0) < blur), blurred, images)

    return tf.clip_by_value(_real_photo_augment(images, seeds[4], augment), 0.0, 255.0)


def _turn_zoom_shift(images: tf.Tensor, seed: tf.Tensor, augment: Any) -> tf.Tensor:
    """``augment_batch``'s geometry: per image a rotation, a zoom and a shift about the centre
    (reflected borders), drawn from ``seed`` (shape (2,)); float32 (N, H, W, 3) -> same."""
    n = tf.shape(images)[0]
    h, w = tf.cast(tf.shape(images)[1], tf.float32), tf.cast(tf.shape(images)[2], tf.float32)
    rotation = math.radians(float(augment.rotation_deg))
    scale = float(augment.scale)
    shift = float(augment.shift)
    if rotation > 0 or scale > 0 or shift > 0:
        angle = tf.random.stateless_uniform([n], seed, -rotation, rotation) if rotation > 0 else tf.zeros([n])
        # Scale and shift draw from seeds split off the rotation's, so that turning them on
        # leaves the other augmentations' draws (and older runs) unchanged.
        geo = tf.random.experimental.stateless_split(seed, num=3)
        zoom = tf.random.stateless_uniform([n], geo[0], 1.0 - scale, 1.0 + scale) if scale > 0 else tf.ones([n])
        tx, ty = (tf.random.stateless_uniform([n], geo[i], -shift, shift) * size if shift > 0 else tf.zeros([n])
                  for i, size in ((1, w), (2, h)))
        # Output pixel (x, y) samples input c + R(angle) (x - c) / zoom + t: a turn and a zoom
        # (zoom > 1 magnifies) about the image centre c, then a shift t in pixels.
        cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
        cx, cy = (w - 1) / 2, (h - 1) / 2
        dx = cx - (cos * cx - sin * cy) + tx
        dy = cy - (sin * cx + cos * cy) + ty
        zeros = tf.zeros_like(angle)
        transforms = tf.stack([cos, -sin, dx, sin, cos, dy, zeros, zeros], axis=1)
        images = tf.raw_ops.ImageProjectiveTransformV3(
            images=images, transforms=transforms, output_shape=tf.shape(images)[1:3], fill_value=0.0,
            interpolation="BILINEAR", fill_mode="REFLECT")
    return images


def _real_photo_augment(images: tf.Tensor, seed: tf.Tensor, augment: Any) -> tf.Tensor:
    """The real-photo part of ``augment_batch`` (see there); float32 (N, H, W, 3) in [0, 255].
    Its draws come from seeds split off ``seed``, so they leave the others' draws unchanged."""
    n = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, num=12)

    def uniform(i: int, lo: float, hi: float) -> tf.Tensor:
        return tf.random.stateless_uniform([n], seeds[i], lo, hi)

    def chance(i: int, p: float) -> tf.Tensor:
        return tf.reshape(uniform(i, 0.0, 1.0) < p, [-1, 1, 1, 1])

    images = tf.clip_by_value(images, 0.0, 255.0)
    downscale = float(augment.downscale)
    if downscale > 0:
        size = tf.shape(images)[1:3]
        factors = uniform(1, float(augment.downscale_min), 1.0)

        def shrink(args: tuple[tf.Tensor, tf.Tensor]) -> tf.Tensor:
            image, factor = args
            small = tf.maximum(tf.cast(tf.round(tf.cast(size, tf.float32) * factor), tf.int32), 8)
            return tf.image.resize(tf.image.resize(image, small, method="area"), size, method="bilinear")

        shrunk = tf.map_fn(shrink, (images, factors), fn_output_signature=tf.float32)
        images = tf.where(chance(0, downscale), shrunk, images)
    gamma = float(augment.gamma)
    if gamma > 0:
        g = tf.exp(uniform(2, -math.log1p(gamma), math.log1p(gamma)))
        images = 255.0 * tf.pow(images / 255.0, tf.reshape(g, [-1, 1, 1, 1]))
    saturation = float(augment.saturation)
    grayscale = float(augment.grayscale)
    if saturation > 0 or grayscale > 0:
        grey = tf.reduce_sum(images * tf.constant([0.299, 0.587, 0.114]), axis=-1, keepdims=True)
        factor = tf.reshape(uniform(3, 1.0 - saturation, 1.0 + saturation), [-1, 1, 1, 1])
        factor = tf.where(chance(4, grayscale), tf.zeros_like(factor), factor)
        images = grey + (images - grey) * factor
    noise = float(augment.noise)
    if noise > 0:
        std = tf.reshape(uniform(5, 0.0, noise), [-1, 1, 1, 1]) * 255.0
        images = images + std * tf.random.stateless_normal(tf.shape(images), seeds[6])
    jpeg = float(augment.jpeg)
    if jpeg > 0:
        quality = tf.cast(tf.round(uniform(7, float(augment.jpeg_quality_min), 95.0)), tf.int32)

        def compress(args: tuple[tf.Tensor, tf.Tensor]) -> tf.Tensor:
            image, q = args
            pixels = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
            return tf.cast(tf.image.adjust_jpeg_quality(pixels, q), tf.float32)

        compressed = tf.map_fn(compress, (images, quality), fn_output_signature=tf.float32)
        images = tf.where(chance(8, jpeg), compressed, images)
    return images


def _repeat_and_shuffle(ds: tf.data.Dataset, epoch_size: int, shuffle_buffer: int, seed: int) -> tf.data.Dataset:
    """``make_dataset``'s training order: each ``(x, y, w, copies)`` element ``copies`` times as
    ``(x, y, w)`` (``epoch_size`` in all), shuffled anew each epoch."""
    ds = ds.flat_map(lambda x, y, w, c: tf.data.Dataset.from_tensors((x, y, w)).repeat(c))
    # flat_map hides the epoch's length; stated, Keras knows its steps per epoch up front
    # instead of running the first epoch until the data ends ("Your input ran out of data").
    ds = ds.apply(tf.data.experimental.assert_cardinality(epoch_size))
    return ds.shuffle(max(1, int(shuffle_buffer)), seed=seed, reshuffle_each_iteration=True)


def make_dataset(
    frame: pd.DataFrame,
    image_size: int,
    batch_size: int,
    training: bool,
    augment_cfg: Mapping[str, Any] | None = None,
    shuffle_buffer: int = 2048,
    seed: int = 0,
    with_weights: bool = False,
) -> tf.data.Dataset:
    """Batches of ``(images, labels)`` (or ``(images, labels, weights)``) from ``frame``.

    Args:
        frame: rows with ``path``, ``age`` (years), ``gender``, ``race``; ``copies`` (training
            repeats, default 1) and ``weight`` (default 1.0) are used when present.
        image_size: output side S in pixels.
        training: repeat rows per ``copies``, shuffle and augment; otherwise keep the order of
            ``frame`` and each image once.
        augment_cfg: the ``data.augment`` node (see :func:`augment_batch`); training only.
        with_weights: also yield per-image sample weights, float32 (N,).

    Yields:
        images float32 (N, S, S, 3) RGB in [0, 255]; labels ``{"age": float32 (N, 2) [lo, hi],
        "gender": int32 (N,), "race": int32 (N,)}``; weights float32 (N,) if asked. One epoch
        of a training dataset holds ``frame["copies"].sum()`` images.
    """
    if frame.empty:
        raise DataError("make_dataset: no images (the split is empty)")
    if training:
        # Files come sorted by name, i.e. by age: without a full permutation first, a shuffle
        # buffer smaller than the split feeds batches of one age and the model chases them.
        frame = frame.sample(frac=1.0, random_state=seed)
    n = len(frame)
    copies = frame["copies"].to_numpy(np.int64) if "copies" in frame else np.ones(n, np.int64)
    weights = frame["weight"].to_numpy(np.float32) if "weight" in frame else np.ones(n, np.float32)
    labels = label_arrays(frame)
    paths = frame["path"].astype(str).to_numpy()
    size = int(image_size)

    ds = tf.data.Dataset.from_tensor_slices((paths, labels, weights, copies))
    ds = ds.map(lambda p, y, w, c: (_decode(p, size), y, w, c), num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.cache()
    if training:
        ds = _repeat_and_shuffle(ds, int(copies.sum()), shuffle_buffer, seed)
    else:
        ds = ds.map(lambda x, y, w, c: (x, y, w))
    ds = ds.batch(int(batch_size))
    ds = ds.map(lambda x, y, w: (tf.cast(x, tf.float32), y, w), num_parallel_calls=AUTOTUNE)
    if training and augment_cfg is not None:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2, drop_remainder=True)
        ds = tf.data.Dataset.zip(ds, seeds).map(
            lambda batch, s: (tf.ensure_shape(augment_batch(batch[0], s, augment_cfg), [None, size, size, 3]),
                              batch[1], batch[2]),
            num_parallel_calls=AUTOTUNE)
    if not with_weights:
        ds = ds.map(lambda x, y, w: (x, y))
    return ds.prefetch(AUTOTUNE)
