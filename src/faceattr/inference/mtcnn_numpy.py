"""MTCNN (Zhang et al., 2016) in NumPy and OpenCV, with the weights of the ``mtcnn`` package.

The ``mtcnn`` package (MIT licence; its weights ship inside its wheel) runs its three small
networks in TensorFlow, and importing TensorFlow alone takes seconds, more than ``run --img``
on one photo may take from a cold start. The networks are tiny (PNet 7k, RNet 100k, ONet
390k weights), so this module runs the same layers in NumPy (convolutions as one matrix
product over the sliding windows) and reproduces the package's detection cascade
(``mtcnn/stages``): an image pyramid through PNet, then RNet and ONet on the surviving
candidates, each with box regression and non-maximum suppression, ONet adding five landmarks.

The weights are read once from the package's ``assets/weights/*.lz4`` (joblib files) and
cached as a plain ``.npz`` (loaded without pickle) keyed by their bytes' sha256.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from pathlib import Path

import cv2
import numpy as np
from threadpoolctl import ThreadpoolController

from faceattr.errors import ModelError

log = logging.getLogger(__name__)

NETS = ("pnet", "rnet", "onet")
#: Pyramid step and stage thresholds, as the ``mtcnn`` package's defaults.
SCALE_FACTOR = 0.709
THRESHOLDS = (0.6, 0.7, 0.8)
PNET_CELL = 12


# ----------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------
def package_weights_dir() -> Path:
    """The ``mtcnn`` package's weights folder, found without importing it (that imports TensorFlow)."""
    spec = importlib.util.find_spec("mtcnn")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("detector=mtcnn needs the 'mtcnn' package for its weights; pip install mtcnn")
    folder = Path(next(iter(spec.submodule_search_locations))) / "assets" / "weights"
    missing = [n for n in NETS if not (folder / f"{n}.lz4").is_file()]
    if missing:
        raise ModelError(f"{folder}: the mtcnn package lacks its weights {', '.join(missing)}; reinstall mtcnn")
    return folder


def load_weights(cache_dir: Path | None = None) -> dict[str, list[np.ndarray]]:
    """The three networks' weight lists (Keras ``get_weights`` order), via the ``.npz`` cache."""
    folder = package_weights_dir()
    digest = hashlib.sha256(b"".join((folder / f"{n}.lz4").read_bytes() for n in NETS)).hexdigest()[:16]
    cached = Path(cache_dir) / "mtcnn" / f"weights-{digest}.npz" if cache_dir else None
    if cached is not None and cached.is_file():
        with np.load(cached, allow_pickle=False) as data:
            return {n: [data[f"{n}_{i}"] for i in range(int(data[f"{n}_count"]))] for n in NETS}
    import joblib  # deferred: slow to import, used once (on the package's own files: a pickle of its own)

    weights = {n: [np.asarray(w, dtype=np.float32) for w in joblib.load(folder / f"{n}.lz4")] for n in NETS}
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.tmp.npz")
        np.savez(tmp, **{f"{n}_{i}": w for n in NETS for i, w in enumerate(weights[n])},
                 **{f"{n}_count": np.array(len(weights[n])) for n in NETS})
        tmp.replace(cached)
        log.info("MTCNN weights cached at %s", cached)
    return weights


# ----------------------------------------------------------------------------------------
# Layers (NHWC float32, as Keras)
# ----------------------------------------------------------------------------------------
def conv(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """'valid' stride-1 convolution: (N, H, W, C) with kernel (kh, kw, C, F) -> (N, H', W', F).

    One matrix product over the windows, laid out (N, H', W', kh, kw, C) so that each copied
    run is a pixel's C channels and the kernel keeps its own order."""
    kh, kw, c, f = kernel.shape
    n, height, width = x.shape[:3]
    h, w = height - kh + 1, width - kw + 1
    cols = np.empty((n, h, w, kh, kw, c), np.float32)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, :, i, j, :] = x[:, i:i + h, j:j + w, :]
    out = cols.reshape(n * h * w, kh * kw * c) @ kernel.reshape(kh * kw * c, f)
    out += bias
    return out.reshape(n, h, w, f)


def prelu(x: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """PReLU, in place: ``x`` is a layer's fresh output, never needed again."""
    negative = np.minimum(x, 0)
    negative *= alpha.reshape(-1)
    np.maximum(x, 0, out=x)
    x += negative
    return x


def max_pool(x: np.ndarray, size: int, stride: int, same: bool) -> np.ndarray:
    """TensorFlow's max pooling: 'same' pads the end (and the start by the odd remainder) with -inf."""
    if same:
        pads = []
        for dim in x.shape[1:3]:
            out = -(-dim // stride)
            total = max((out - 1) * stride + size - dim, 0)
            pads.append((total // 2, total - total // 2))
        x = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=-np.inf)
    h = (x.shape[1] - size) // stride + 1
    w = (x.shape[2] - size) // stride + 1
    # The maximum over the window's size x size offsets, each a strided view of the input.
    views = [x[:, i:i + (h - 1) * stride + 1:stride, j:j + (w - 1) * stride + 1:stride]
             for i in range(size) for j in range(size)]
    pooled = np.maximum(views[0], views[1])
    for view in views[2:]:
        np.maximum(pooled, view, out=pooled)
    return pooled


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def pnet(x: np.ndarray, w: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(1, H, W, 3) -> box offsets (1, H', W', 4), face probabilities (1, H', W', 2)."""
    x = max_pool(prelu(conv(x, w[0], w[1]), w[2]), 2, 2, True)
    x = prelu(conv(x, w[3], w[4]), w[5])
    x = prelu(conv(x, w[6], w[7]), w[8])
    return conv(x, w[9], w[10]), softmax(conv(x, w[11], w[12]))


def _flatten_transposed(x: np.ndarray) -> np.ndarray:
    """Keras ``Permute((2, 1, 3))`` then ``Flatten``: the weights expect width-major order."""
    return x.transpose(0, 2, 1, 3).reshape(len(x), -1)


def rnet(x: np.ndarray, w: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(N, 24, 24, 3) -> box offsets (N, 4), face probabilities (N, 2)."""
    x = max_pool(prelu(conv(x, w[0], w[1]), w[2]), 3, 2, True)
    x = max_pool(prelu(conv(x, w[3], w[4]), w[5]), 3, 2, False)
    x = prelu(conv(x, w[6], w[7]), w[8])
    x = prelu(_flatten_transposed(x) @ w[9] + w[10], w[11])
    return x @ w[12] + w[13], softmax(x @ w[14] + w[15])


def onet(x: np.ndarray, w: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, 48, 48, 3) -> box offsets (N, 4), landmarks (N, 10) (x's then y's, box fractions),
    face probabilities (N, 2)."""
    x = max_pool(prelu(conv(x, w[0], w[1]), w[2]), 3, 2, True)
    x = max_pool(prelu(conv(x, w[3], w[4]), w[5]), 3, 2, False)
    x = max_pool(prelu(conv(x, w[6], w[7]), w[8]), 2, 2, True)
    x = prelu(conv(x, w[9], w[10]), w[11])
    x = prelu(_flatten_transposed(x) @ w[12] + w[13], w[14])
    return x @ w[15] + w[16], x @ w[17] + w[18], softmax(x @ w[19] + w[20])


# ----------------------------------------------------------------------------------------
# The cascade (boxes as rows [x1, y1, x2, y2, score, ...] in image pixels)
# ----------------------------------------------------------------------------------------
def nms(boxes: np.ndarray, threshold: float, method: str = "union") -> np.ndarray:
    """Rows of ``boxes`` (sorted by score, best first) that no better-scored row overlaps by more
    than ``threshold`` (IoU, or intersection over the smaller box with ``method="min"``)."""
    if len(boxes) == 0:
        return boxes
    boxes = boxes[np.argsort(-boxes[:, 4], kind="stable")]
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = (x2 - x1) * (y2 - y1)
    iw = np.maximum(0, np.minimum(x2[:, None], x2[None]) - np.maximum(x1[:, None], x1[None]))
    ih = np.maximum(0, np.minimum(y2[:, None], y2[None]) - np.maximum(y1[:, None], y1[None]))
    inter = iw * ih
    denom = np.minimum(area[:, None], area[None]) if method == "min" else area[:, None] + area[None] - inter
    overlap = np.divide(inter, denom, out=np.zeros_like(inter), where=denom > 0)
    suppressed = np.triu(overlap > threshold, k=1).any(axis=0)
    return boxes[~suppressed]


def square(boxes: np.ndarray) -> np.ndarray:
    """Each box grown to a square of its longer side about its centre."""
    out = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + w / 2 - side / 2
    out[:, 1] = boxes[:, 1] + h / 2 - side / 2
    out[:, 2] = out[:, 0] + side
    out[:, 3] = out[:, 1] + side
    return out


def regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Move each box's corners by ``offsets`` (N, 4) x its size (+1 px, as the package does)."""
    out = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    out[:, :4] += offsets * np.stack([w, h, w, h], axis=1)
    return out


def patches(image: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """TensorFlow's ``crop_and_resize`` of the normalised image (box corners divided by the image
    size, as the package does): bilinear samples, 0 outside the image. (N, size, size, 3)."""
    h, w = image.shape[:2]
    grid = np.arange(size, dtype=np.float64) / (size - 1)
    out = np.empty((len(boxes), size, size, 3), np.float32)
    for i, (x1, y1, x2, y2) in enumerate(boxes[:, :4]):
        xs = (x1 / w + grid * (x2 - x1) / w) * (w - 1)
        ys = (y1 / h + grid * (y2 - y1) / h) * (h - 1)
        map_x, map_y = np.meshgrid(xs.astype(np.float32), ys.astype(np.float32))
        out[i] = cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out


def pyramid(height: int, width: int, min_face: float) -> list[float]:
    """Scales at which PNet's 12 px cell sees faces from ``min_face`` pixels up."""
    scale = PNET_CELL / float(min_face)
    side = min(height, width) * scale
    scales = []
    while side >= PNET_CELL:
        scales.append(scale)
        scale *= SCALE_FACTOR
        side *= SCALE_FACTOR
    return scales


class NumpyMTCNN:
    """MTCNN face detection on (H, W, 3) uint8 RGB images; see the module docstring."""

    def __init__(self, cache_dir: Path | None = None) -> None:
        self.weights = load_weights(cache_dir)
        self._threads = ThreadpoolController()

    def detect(self, image_rgb: np.ndarray, min_face: float = 20.0) -> np.ndarray:
        """Faces as rows ``[x1, y1, x2, y2, score, lx1..lx5, ly1..ly5]`` (pixels; landmarks in the
        order left eye, right eye, nose, mouth left, mouth right), best first; boxes clipped to
        the image, landmarks not."""
        # The matrix products are small: one BLAS thread measured twice as fast as two on a busy
        # 2-core machine, where the threads wait for each other.
        with self._threads.limit(limits=1, user_api="blas"):
            return self._detect(image_rgb, min_face)

    def _detect(self, image_rgb: np.ndarray, min_face: float) -> np.ndarray:
        h, w = image_rgb.shape[:2]
        norm = (image_rgb.astype(np.float32) - 127.5) / 128.0
        # Stage 1: PNet over the pyramid proposes candidate boxes.
        found = []
        for scale in pyramid(h, w, min_face):
            sh, sw = int(h * scale), int(w * scale)
            level = cv2.resize(norm, (sw, sh), interpolation=cv2.INTER_AREA)
            reg, prob = pnet(level[None], self.weights["pnet"])
            ys, xs = np.nonzero(prob[0, :, :, 1] > THRESHOLDS[0])
            if len(ys) == 0:
                continue
            off = reg[0, ys, xs]
            x0, y0 = xs * 2.0, ys * 2.0
            boxes = np.stack([x0 + off[:, 0] * PNET_CELL, y0 + off[:, 1] * PNET_CELL,
                              x0 + PNET_CELL + off[:, 2] * PNET_CELL, y0 + PNET_CELL + off[:, 3] * PNET_CELL,
                              prob[0, ys, xs, 1]], axis=1)
            boxes[:, :4] /= scale
            found.append(nms(boxes, 0.5))
        if not found:
            return np.empty((0, 15))
        boxes = square(nms(np.concatenate(found), 0.7))
        # Stage 2: RNet refines and rejects.
        offsets, prob = rnet(patches(norm, boxes, 24), self.weights["rnet"])
        boxes[:, 4] = prob[:, 1]
        boxes = regress(boxes, offsets)
        boxes = boxes[boxes[:, 4] > THRESHOLDS[1]]
        if len(boxes) == 0:
            return np.empty((0, 15))
        boxes = square(nms(boxes, 0.7))
        # Stage 3: ONet gives the final boxes, scores and landmarks.
        offsets, marks, prob = onet(patches(norm, boxes, 48), self.weights["onet"])
        bw = boxes[:, 2:3] - boxes[:, 0:1] + 1
        bh = boxes[:, 3:4] - boxes[:, 1:2] + 1
        lx = bw * marks[:, 0:5] + boxes[:, 0:1] - 1
        ly = bh * marks[:, 5:10] + boxes[:, 1:2] - 1
        boxes[:, 4] = prob[:, 1]
        boxes = np.concatenate([regress(boxes, offsets), lx, ly], axis=1)
        boxes = nms(boxes[boxes[:, 4] > THRESHOLDS[2]], 0.7, method="min")
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, w - 1)
        boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, h - 1)
        return boxes
