"""Inference on real parts: a tiny real CNN saved and loaded through ``models.io``, OpenCV's
Haar cascade on a real photo, real files (good, broken, odd formats) and a real video."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from omegaconf import OmegaConf

from faceattr.config import compose_config, group_node
from faceattr.errors import ConfigError, InputError, ModelError
from faceattr.inference.annotate import annotate, format_label, put_label
from faceattr.inference.crop import crop_face, crop_square, square_box
from faceattr.inference.detectors import Detection, make_detector
from faceattr.inference.images import expand_inputs, read_image
from faceattr.inference.photos_batch import COLUMNS
from faceattr.inference.predictor import FacePrediction, Predictor
from faceattr.inference.run import run_inputs
from faceattr.inference.tracking import IoUTracker, greedy_match, iou, iou_matrix
from faceattr.inference.video import FrameStats, run_video
from faceattr.labels import AGE_RANGE, GENDERS, RACES
from faceattr.models import io
from faceattr.models.cnn import build_cnn
from faceattr.models.info import ModelInfo

ROOT = Path(__file__).resolve().parents[2]
ASTRONAUT = ROOT / "examples" / "astronaut.jpg"
TINY_SIZE = 32


# ---------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A real (untrained) CNN, saved and reloadable through models.io, with the TensorFlow Lite
    export that training writes beside it (what `run` serves; its command-line runs then start
    without importing TensorFlow, as a user's do)."""
    from faceattr.models.export import export_tflite

    cfg = OmegaConf.merge(group_node("model", "cnn"),
                          {"input_size": TINY_SIZE, "filters": [8, 16], "heads": {"hidden_units": [8]}})
    model_dir = tmp_path_factory.mktemp("tiny_model")
    io.save_model(model_dir, ModelInfo(model_type="cnn", input_size=TINY_SIZE), build_cnn(cfg))
    export_tflite(model_dir)
    return model_dir


@pytest.fixture(scope="module")
def predictor(tiny_model_dir) -> Predictor:
    return Predictor.load(tiny_model_dir, batch_size=4, tta_flip=True)


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    img = cv2.imread(str(ASTRONAUT))
    assert img is not None
    return img


def compose_cfg(*overrides: str):
    """The real config tree, composed through Hydra as the CLI does."""
    return compose_config(["command=run", "run.display=false", *overrides])


def _q(path: Path | str) -> str:
    return "'" + str(path).replace("\\", "\\\\").replace("'", "\\'") + "'"


def write_clip(path: Path, frames: int = 30, size: tuple[int, int] = (320, 240), fps: float = 15.0) -> None:
    """A short real video: the astronaut's head pasted at a moving position on grey."""
    face = cv2.resize(cv2.imread(str(ASTRONAUT))[20:300, 120:330], (150, 200), interpolation=cv2.INTER_AREA)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    assert writer.isOpened()
    for i in range(frames):
        frame = np.full((size[1], size[0], 3), 90, np.uint8)
        x = 10 + 5 * i
        frame[20:220, x:x + 150] = face
        writer.write(frame)
    writer.release()


def count_frames(path: Path) -> tuple[int, tuple[int, int], float]:
    cap = cv2.VideoCapture(str(path))
    n, shape = 0, (0, 0)
    fps = cap.get(cv2.CAP_PROP_FPS)
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        n, shape = n + 1, frame.shape[:2]
    cap.release()
    return n, shape, fps


def make_bad_files(folder: Path) -> dict[str, Path]:
    """An empty file, a truncated JPEG and a text file named .jpg."""
    data = ASTRONAUT.read_bytes()
    bad = {"empty": folder / "empty.jpg", "truncated": folder / "truncated.jpg", "text": folder / "notes.jpg"}
    bad["empty"].write_bytes(b"")
    bad["truncated"].write_bytes(data[: len(data) // 2])
    bad["text"].write_text("this is not an image\n")
    return bad


# ---------------------------------------------------------------------------------------
# Detection and cropping
# ---------------------------------------------------------------------------------------
def test_haar_finds_the_one_face(astronaut):
    dets = make_detector(group_node("detector", "haar")).detect(astronaut)
    assert len(dets) == 1
    d = dets[0]
    assert abs(d.x - 177) <= 8 and abs(d.y - 66) <= 8 and abs(d.w - 95) <= 10 and d.landmarks is None


def test_haar_boxes_are_in_original_pixels_when_downscaled(astronaut):
    big = cv2.resize(astronaut, (1024, 1024))
    cfg = {**OmegaConf.to_container(group_node("detector", "haar")), "max_side": 512}
    (d,) = make_detector(cfg).detect(big)
    assert abs(d.x - 2 * 177) <= 16 and abs(d.w - 2 * 95) <= 20


def test_mtcnn_finds_the_face_with_landmarks(astronaut, tmp_path):
    """The eyes come out level-ish, inside the box; a second detector reads the cached weights."""
    cfg = group_node("detector", "mtcnn")
    dets = make_detector(cfg, cache_dir=tmp_path).detect(astronaut)
    assert len(list((tmp_path / "mtcnn").glob("weights-*.npz"))) == 1
    assert make_detector(cfg, cache_dir=tmp_path).detect(astronaut)[0].box == dets[0].box
    assert len(dets) == 1
    d = dets[0]
    assert iou(d.box, (177, 66, 95, 95)) > 0.5 and d.score >= 0.9
    (lx, ly), (rx, ry) = d.landmarks[:2]
    assert d.landmarks.shape == (5, 2) and lx < rx and abs(ly - ry) < 10  # image-left eye first
    assert d.x < lx < d.x + d.w and d.y < ly < d.y + d.h


@pytest.mark.slow
def test_numpy_mtcnn_networks_equal_the_packages_keras_networks(tmp_path):
    """Same weights, same layers: the NumPy networks give the Keras networks' outputs."""
    from mtcnn.network.onet import ONet
    from mtcnn.network.pnet import PNet
    from mtcnn.network.rnet import RNet

    from faceattr.inference import mtcnn_numpy

    weights = mtcnn_numpy.load_weights(tmp_path)
    rng = np.random.default_rng(0)
    for net, keras_cls, shape in ((mtcnn_numpy.pnet, PNet, (1, 37, 29, 3)), (mtcnn_numpy.rnet, RNet, (3, 24, 24, 3)),
                                  (mtcnn_numpy.onet, ONet, (3, 48, 48, 3))):
        model = keras_cls()
        model.build()
        model.set_weights(weights[net.__name__])
        x = rng.uniform(-1, 1, shape).astype(np.float32)
        for ours, theirs in zip(net(x, weights[net.__name__]), model(x), strict=True):
            assert np.allclose(ours, np.asarray(theirs), atol=1e-4), net.__name__


@pytest.mark.slow
def test_numpy_mtcnn_finds_what_the_package_finds(astronaut, tmp_path):
    from mtcnn import MTCNN

    from faceattr.inference.mtcnn_numpy import NumpyMTCNN

    rgb = cv2.cvtColor(astronaut, cv2.COLOR_BGR2RGB)
    ours = NumpyMTCNN(tmp_path).detect(rgb, min_face=40)
    theirs = np.asarray(MTCNN().detect_faces(rgb, min_face_size=20, output_type="numpy", box_format="xyxy"))
    theirs = theirs.reshape(-1, 16)[:, 1:]
    assert len(ours) == len(theirs) == 1
    side = float(theirs[0, 2] - theirs[0, 0])
    assert np.abs(ours[0, :4] - theirs[0, :4]).max() < 0.05 * side  # boxes within 5 % of the face size
    assert np.abs(ours[0, 5:] - theirs[0, 5:]).max() < 0.05 * side  # landmarks too
    assert abs(ours[0, 4] - theirs[0, 4]) < 0.01


def test_none_detector_is_the_whole_image(astronaut):
    (d,) = make_detector({"name": "none"}).detect(astronaut[:100, :200])
    assert d.box == (0, 0, 200, 100)


def test_unknown_detector_is_a_config_error():
    expected = "detector.name='yolo' is not allowed: expected one of haar, mtcnn, blazeface, none"
    with pytest.raises(ConfigError, match=expected):
        make_detector({"name": "yolo"})


def test_margin_math():
    cx, cy, side = square_box((100, 50, 40, 60), 0.4)
    assert (cx, cy) == (120, 80) and side == pytest.approx(60 * 1.8)  # longer side + 0.4 x it on each side
    assert square_box((0, 0, 10, 10), 0.0)[2] == 10


def test_crop_pads_by_replicating_the_border():
    img = np.zeros((100, 100, 3), np.uint8)
    img[:, 0] = 200  # left column bright
    crop = crop_square(img, 10, 50, 40)  # reaches 10 px beyond the left edge
    assert crop.shape == (40, 40, 3)
    assert (crop[:, :11] == 200).all() and (crop[:, 11:] == 0).all()


def test_crop_face_shape_and_content(astronaut):
    rgb = cv2.cvtColor(astronaut, cv2.COLOR_BGR2RGB)
    face = crop_face(rgb, Detection(177, 66, 95, 95), 0.4, 64)
    assert face.shape == (64, 64, 3) and face.dtype == np.uint8
    side = round(95 * 1.8)
    x0, y0 = round(177 + 47.5 - side / 2), round(66 + 47.5 - side / 2)
    expected = cv2.resize(rgb[y0:y0 + side, x0:x0 + side], (64, 64), interpolation=cv2.INTER_AREA)
    assert np.abs(face.astype(int) - expected).max() <= 1


# ---------------------------------------------------------------------------------------
# Reading images
# ---------------------------------------------------------------------------------------
def test_read_image_odd_formats(tmp_path, astronaut):
    gray = tmp_path / "gray.png"
    cv2.imwrite(str(gray), cv2.cvtColor(astronaut, cv2.COLOR_BGR2GRAY))
    rgba = tmp_path / "rgba.png"
    with_alpha = cv2.cvtColor(astronaut, cv2.COLOR_BGR2BGRA)
    with_alpha[:10, :10, 3] = 0  # transparent corner
    cv2.imwrite(str(rgba), with_alpha)
    deep = tmp_path / "deep.png"
    cv2.imwrite(str(deep), astronaut.astype(np.uint16) * 257)
    for path in (gray, rgba, deep):
        img = read_image(path)
        assert img.shape == (512, 512, 3) and img.dtype == np.uint8, path
    assert (read_image(rgba)[:10, :10] == 255).all()  # composited over white
    assert np.array_equal(read_image(deep), astronaut)  # 16-bit scaled back exactly
    assert np.array_equal(read_image(ASTRONAUT), astronaut)


@pytest.mark.parametrize("kind,message", [("empty", "empty file"), ("truncated", "truncated"),
                                          ("text", "not an image")])
def test_read_image_bad_files(tmp_path, kind, message):
    path = make_bad_files(tmp_path)[kind]
    with pytest.raises(InputError, match=message) as info:
        read_image(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_read_image_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_image(tmp_path / "nope.jpg")


def test_expand_inputs_files_folders_globs(tmp_path):
    for name in ("b.jpg", "a.png", "c.JPG", "notes.txt", ".hidden.jpg"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.jpg").write_bytes(b"x")
    assert [p.name for p in expand_inputs([str(tmp_path)])] == ["a.png", "b.jpg", "c.JPG"]  # not recursive
    assert [p.name for p in expand_inputs([str(tmp_path / "**" / "*.jpg")])] == ["b.jpg", "d.jpg"]
    got = expand_inputs([str(tmp_path / "b.jpg"), str(tmp_path), str(tmp_path / "missing.jpg")])
    assert [p.name for p in got] == ["b.jpg", "a.png", "c.JPG", "missing.jpg"]  # once each; missing kept


# ---------------------------------------------------------------------------------------
# Predictor
# ---------------------------------------------------------------------------------------
def test_predictor_outputs(predictor, astronaut):
    faces = [cv2.cvtColor(astronaut, cv2.COLOR_BGR2RGB)[66:161, 177:272], np.zeros((20, 30, 3), np.uint8)] * 3
    preds = predictor.predict(faces)  # 6 faces, batch_size 4: two model calls
    assert len(preds) == 6
    for p in preds:
        assert AGE_RANGE[0] <= p.age <= AGE_RANGE[1]
        assert p.gender in GENDERS and p.race in RACES
        assert p.gender_probs.shape == (2,) and p.race_probs.shape == (5,)
        assert p.gender_confidence == pytest.approx(p.gender_probs.max())
    assert preds[0].age == pytest.approx(preds[2].age, abs=1e-4)  # same face, same answer across chunks
    assert predictor.predict([]) == []


def test_flip_tta_averages_the_mirror(tiny_model_dir):
    plain = Predictor.load(tiny_model_dir, tta_flip=False)
    face = np.random.default_rng(1).integers(0, 255, (TINY_SIZE, TINY_SIZE, 3), dtype=np.uint8)
    a, b = plain.predict_arrays(plain.prepare([face, face[:, ::-1]]))["age"]
    tta = Predictor(plain.runner, TINY_SIZE, tta_flip=True).predict_arrays(plain.prepare([face]))["age"][0]
    assert tta == pytest.approx((a + b) / 2, abs=1e-3)


def test_predictor_refuses_mismatched_labels(tiny_model_dir):
    loaded = io.load_model(tiny_model_dir)
    loaded.info.races = ["a", "b", "c", "d", "e"]
    with pytest.raises(ModelError, match="differ"):
        Predictor.from_loaded(loaded)


# ---------------------------------------------------------------------------------------
# Tracking and annotation (no model)
# ---------------------------------------------------------------------------------------
def fake_pred(age: float, gender: int, race: int, conf: float = 0.9) -> FacePrediction:
    g = np.full(2, 1 - conf, np.float32)
    g[gender] = conf
    r = np.full(5, (1 - conf) / 4, np.float32)
    r[race] = conf
    return FacePrediction.from_outputs(age, g, r)


def test_iou_basics():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (20, 20, 5, 5)) == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 10, 10)) == pytest.approx(50 / 150)
    m = iou_matrix([(0, 0, 10, 10), (100, 100, 10, 10)], [(101, 100, 10, 10), (1, 0, 10, 10)])
    assert sorted(greedy_match(m, 0.3)) == [(0, 1), (1, 0)]


def test_tracker_keeps_ids_while_faces_move():
    tr = IoUTracker(iou_threshold=0.3, max_missed=2)
    first = tr.update([(0, 0, 50, 50), (200, 0, 50, 50)], [fake_pred(30, 0, 0), fake_pred(60, 1, 1)])
    ids = {t.box[0]: t.track_id for t in first}
    second = tr.update([(205, 2, 50, 50), (4, 3, 50, 50)], [fake_pred(32, 0, 0), fake_pred(62, 1, 1)])
    assert {t.box[0]: t.track_id for t in second} == {4: ids[0], 205: ids[200]}
    third = tr.update([(500, 300, 50, 50)])  # a new face far away: a new id
    assert len({t.track_id for t in third}) == 3


def test_tracker_keeps_box_through_dropouts_then_forgets():
    tr = IoUTracker(max_missed=2)
    (t,) = tr.update([(10, 10, 40, 40)], [fake_pred(30, 1, 2)])
    for _ in range(2):  # missed twice: still there, same box and label
        (kept,) = tr.update([])
        assert kept.track_id == t.track_id and kept.box == (10, 10, 40, 40) and kept.prediction.gender == "female"
    (back,) = tr.update([(12, 11, 40, 40)], [fake_pred(30, 1, 2)])
    assert back.track_id == t.track_id and back.missed == 0
    for _ in range(3):
        tr.update([])
    assert tr.tracks == []  # more than max_missed: dropped


def test_tracker_smooths_predictions():
    tr = IoUTracker(window=10)
    preds = [fake_pred(20, 0, 0, 0.6), fake_pred(30, 1, 3, 0.55), fake_pred(40, 0, 0, 0.7)]
    for p in preds:
        (t,) = tr.update([(0, 0, 50, 50)], [p])
    smooth = t.prediction
    assert smooth.age == pytest.approx(30.0)
    assert smooth.gender == "male" and smooth.race == "white"  # majority by summed probabilities
    assert smooth.gender_confidence == pytest.approx((0.6 + 0.45 + 0.7) / 3)
    tr2 = IoUTracker(window=2)
    for p in preds:
        (t2,) = tr2.update([(0, 0, 50, 50)], [p])
    assert t2.prediction.age == pytest.approx(35.0)  # only the last 2


def test_labels_and_drawing_stay_inside_the_image():
    p = fake_pred(34.4, 1, 0, 0.97)
    assert format_label(p) == "34y female 97% | white 97%"
    img = np.zeros((60, 80, 3), np.uint8)
    put_label(img, "a label much wider than this tiny image", 70, 5)
    assert img.any() and img.shape == (60, 80, 3)
    out = annotate(np.zeros((240, 320, 3), np.uint8), [((300, 0, 20, 20), p)])
    assert out[:, :300].any()  # label moved left into view


# ---------------------------------------------------------------------------------------
# The run command
# ---------------------------------------------------------------------------------------
def test_run_images_folder_with_broken_files(tmp_path, tiny_model_dir, capsys, astronaut):
    folder = tmp_path / "in"
    folder.mkdir()
    good = [folder / "a_astronaut.jpg", folder / "b_small.png"]
    cv2.imwrite(str(good[0]), astronaut)
    cv2.imwrite(str(good[1]), cv2.resize(astronaut, (300, 300)))
    blank = folder / "c_blank.png"
    cv2.imwrite(str(blank), np.full((120, 160, 3), 127, np.uint8))
    bad = make_bad_files(folder)
    out = tmp_path / "res" / "preds.csv"
    cfg = compose_cfg(f"run.img=[{_q(folder)}]", f"model_path={_q(tiny_model_dir)}", "detector=haar",
                      f"run.output={_q(out)}")
    run_dir = tmp_path / "run"
    result = run_inputs(cfg, run_dir)
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == len(bad)
    for path in bad.values():
        assert sum(str(path) in line for line in errors) == 1
    assert f"{blank}: no face found" in captured.out
    with out.open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == COLUMNS
        rows = list(reader)
    assert sorted({r["image"] for r in rows}) == sorted(str(p) for p in good)
    assert all(r["face"] == "0" for r in rows) and len(rows) == 2
    assert result["read"] == 3 and result["faces"] == 2 and len(result["errors"]) == 3
    annotated = sorted(p.name for p in (run_dir / "annotated").iterdir())
    assert annotated == ["a_astronaut.jpg", "b_small.png"]
    assert sorted(p.name for p in folder.iterdir()) == sorted([*(p.name for p in good), blank.name,
                                                              *(p.name for p in bad.values())])  # inputs untouched


def test_run_images_json_output_and_no_silent_overwrite(tmp_path, tiny_model_dir):
    out = tmp_path / "p.json"
    args = [f"run.img=[{_q(ASTRONAUT)}]", f"model_path={_q(tiny_model_dir)}", f"run.output={_q(out)}",
            f"run.annotated_dir={_q(tmp_path / 'ann')}"]
    run_inputs(compose_cfg(*args), tmp_path / "run")
    rows = json.loads(out.read_text())
    assert len(rows) == 1 and tuple(rows[0]) == COLUMNS
    assert rows[0]["image"] == str(ASTRONAUT) and rows[0]["gender"] in GENDERS and rows[0]["race"] in RACES
    with pytest.raises(InputError, match="already exists"):
        run_inputs(compose_cfg(*args), tmp_path / "run2")
    run_inputs(compose_cfg(*args, "run.overwrite=true"), tmp_path / "run3")
    assert sorted(p.name for p in (tmp_path / "ann").iterdir()) == ["astronaut-1.jpg", "astronaut.jpg"]


@pytest.mark.slow
def test_run_images_aligned_column_and_no_annotate(tmp_path, tiny_model_dir, astronaut):
    """MTCNN's landmarks align the astronaut (aligned=True); Haar has none (the box crop,
    aligned=False); --no-annotate writes the predictions and no annotated copies."""
    out = {}
    for det in ("mtcnn", "haar"):
        out[det] = tmp_path / f"{det}.csv"
        run_inputs(compose_cfg(f"run.img=[{_q(ASTRONAUT)}]", f"model_path={_q(tiny_model_dir)}", f"detector={det}",
                                f"run.output={_q(out[det])}", "run.annotate=false"), tmp_path / det)
        assert not (tmp_path / det / "annotated").exists()
    rows = {det: list(csv.DictReader(path.open(newline=""))) for det, path in out.items()}
    assert [r["aligned"] for r in rows["mtcnn"]] == ["True"] and [r["aligned"] for r in rows["haar"]] == ["False"]
    proc = subprocess.run([sys.executable, str(ROOT / "src" / "main.py"), "run", "--img", str(ASTRONAUT),
                           "--no-display", "--no-annotate", "--model_path", str(tiny_model_dir),
                           f"hydra.run.dir={tmp_path / 'cli'}"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Annotated images: none" in proc.stdout and not (tmp_path / "cli" / "annotated").exists()
    assert (tmp_path / "cli" / "predictions.csv").is_file()


def test_run_images_save_faces_writes_what_the_model_saw(tmp_path, tiny_model_dir, astronaut):
    """--save-faces: one PNG per result row, named by image and face, holding the very crop the
    model was given (aligned by MTCNN, at the model's input size); never into an input folder."""
    from faceattr.inference.pipeline import FacePipeline

    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "one.jpg"), astronaut)
    cv2.imwrite(str(folder / "two.png"), np.hstack([astronaut, astronaut]))  # two faces
    cfg = compose_cfg(f"run.img=[{_q(folder)}]", f"model_path={_q(tiny_model_dir)}", "detector=mtcnn",
                      "run.annotate=false", "run.save_faces=true")
    result = run_inputs(cfg, tmp_path / "run")
    with open(result["output"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    faces_dir = tmp_path / "run" / "faces"
    assert result["faces_dir"] == str(faces_dir) and len(rows) == 3
    expected = sorted(f"{Path(r['image']).stem}_face{r['face']}.png" for r in rows)
    assert sorted(p.name for p in faces_dir.iterdir()) == expected == ["one_face0.png", "two_face0.png",
                                                                       "two_face1.png"]
    pipeline = FacePipeline.from_config(cfg)
    crops = pipeline.crops(cv2.imread(str(folder / "two.png")))
    for i, crop in enumerate(crops):
        saved = cv2.cvtColor(cv2.imread(str(faces_dir / f"two_face{i}.png")), cv2.COLOR_BGR2RGB)
        assert crop.aligned and saved.shape == (32, 32, 3) and np.array_equal(saved, crop.image)
    with pytest.raises(ConfigError, match="face crops are never written next to the inputs"):
        run_inputs(compose_cfg(*[f"run.img=[{_q(folder)}]", f"model_path={_q(tiny_model_dir)}",
                                  "run.save_faces=true", f"run.faces_dir={_q(folder)}"]), tmp_path / "run2")
    assert sorted(p.name for p in folder.iterdir()) == ["one.jpg", "two.png"]


def test_run_images_unknown_suffix_and_all_failed(tmp_path, tiny_model_dir):
    with pytest.raises(InputError, match="unknown predictions output type"):
        run_inputs(compose_cfg(f"run.img=[{_q(ASTRONAUT)}]", f"run.output={_q(tmp_path / 'p.xlsx')}",
                                f"model_path={_q(tiny_model_dir)}"), tmp_path / "run")
    bad = make_bad_files(tmp_path)
    with pytest.raises(InputError, match="none of the 3 inputs"):
        run_inputs(compose_cfg(f"run.img=[{','.join(_q(p) for p in bad.values())}]",
                                f"model_path={_q(tiny_model_dir)}"), tmp_path / "run")


@pytest.mark.slow
def test_run_video_file_writes_every_frame(tmp_path, tiny_model_dir):
    clip = tmp_path / "clip.mp4"
    write_clip(clip)
    n_in, shape_in, fps_in = count_frames(clip)
    out = tmp_path / "out.mp4"
    cfg = compose_cfg(f"run.video={_q(clip)}", f"run.output={_q(out)}", f"model_path={_q(tiny_model_dir)}")
    result = run_inputs(cfg, tmp_path / "run")
    n_out, shape_out, fps_out = count_frames(out)
    assert n_in == 30 and n_out == n_in and shape_out == shape_in and fps_out == pytest.approx(fps_in)
    assert result["frames_read"] == result["frames_written"] == 30 and result["frames_processed"] >= 1


def test_run_video_sync_and_max_frames(tmp_path, tiny_model_dir):
    clip = tmp_path / "clip.mp4"
    write_clip(clip, frames=12)
    out = tmp_path / "out.mp4"
    cfg = compose_cfg(f"run.video={_q(clip)}", f"run.output={_q(out)}", f"model_path={_q(tiny_model_dir)}",
                      "run.sync=true", "run.max_frames=8")
    result = run_inputs(cfg, tmp_path / "run")
    assert result["frames_processed"] == result["frames_written"] == 8 and count_frames(out)[0] == 8


def test_tracker_refreshes_a_track_every_k_frames_and_new_faces_at_once():
    tr = IoUTracker(refresh_every=3)
    box, other = (0, 0, 50, 50), (200, 0, 50, 50)
    asked = []
    for frame in range(7):
        dets = [box] if frame < 4 else [box, other]  # a second face appears in frame 4
        need = tr.needs_prediction(dets)
        asked.append(need)
        tracks = tr.update(dets, [fake_pred(20 + frame, 0, 0, 0.9) if n else None for n in need])
        assert all(t.prediction is not None for t in tracks)  # labels stay between refreshes
    # The first face at frames 0, 3, 6; the new face at once (frame 4), then 3 frames later.
    assert asked == [[True], [False], [False], [True], [False, True], [False, False], [True, False]]
    first = next(t for t in tracks if t.box == box)
    assert first.prediction.age == pytest.approx((20 + 23 + 26) / 3)  # only the refreshes were averaged
    with pytest.raises(ValueError, match="refresh_every"):
        IoUTracker(refresh_every=0)


def test_detector_video_settings_override_for_video_only():
    cfg = group_node("detector", "haar")
    assert make_detector(cfg).scale_factor == pytest.approx(cfg.scale_factor)
    assert make_detector(cfg, video=True).scale_factor == pytest.approx(cfg.video.scale_factor)
    assert make_detector(cfg, video=True).min_size == cfg.min_size  # what video doesn't set is kept


@pytest.mark.parametrize("refresh, expected", [(1, 12), (3, 4)])
def test_run_video_model_sees_each_face_every_refresh_frames(tmp_path, tiny_model_dir, refresh, expected):
    clip = tmp_path / "clip.mp4"
    write_clip(clip, frames=12)
    cfg = compose_cfg(f"run.video={_q(clip)}", f"run.output={_q(tmp_path / 'out.mp4')}", "run.sync=true",
                      f"model_path={_q(tiny_model_dir)}", "detector=none", f"run.tracker.refresh_every={refresh}")
    seen: list[FrameStats] = []
    result = run_video(cfg, tmp_path / "run", on_frame=seen.append)
    assert result["frames_processed"] == 12
    assert seen[-1].stages.faces == 12 and seen[-1].stages.predicted == expected  # the warm-up isn't counted


def test_run_video_frame_hook_sees_every_frame_with_stage_times(tmp_path, tiny_model_dir):
    clip = tmp_path / "clip.mp4"
    write_clip(clip, frames=9)
    out = tmp_path / "out.mp4"
    cfg = compose_cfg(f"run.video={_q(clip)}", f"run.output={_q(out)}", "run.sync=true",
                      f"model_path={_q(tiny_model_dir)}", "detector=none", "run.tracker.refresh_every=1")
    seen: list[FrameStats] = []
    result = run_video(cfg, tmp_path / "run", on_frame=seen.append)
    assert [s.frame for s in seen] == list(range(1, 10)) and [s.written for s in seen] == list(range(1, 10))
    # run.sync: the frame in hand went through the model before the hook; detector=none is one face.
    assert [s.stages.frames for s in seen] == [s.model_frames for s in seen] == list(range(1, 10))
    assert [s.stages.faces for s in seen] == [s.stages.predicted for s in seen] == list(range(1, 10))
    assert all(len(s.tracks) == 1 and s.tracks[0].missed == 0 for s in seen)
    last = seen[-1].stages
    assert last.detect_s > 0 and last.predict_s > 0 and last.crop_s > 0
    assert last.detect_s + last.crop_s + last.predict_s < seen[-1].elapsed_s
    assert all(a.elapsed_s <= b.elapsed_s for a, b in zip(seen, seen[1:], strict=False))
    assert result["frames_written"] == count_frames(out)[0] == 9


def test_run_video_frame_hook_error_stops_the_loop_and_closes_the_output(tmp_path, tiny_model_dir):
    clip = tmp_path / "clip.mp4"
    write_clip(clip, frames=9)
    out = tmp_path / "out.mp4"
    cfg = compose_cfg(f"run.video={_q(clip)}", f"run.output={_q(out)}", "run.sync=true",
                      f"model_path={_q(tiny_model_dir)}", "detector=none")

    def stop_at_four(stats: FrameStats) -> None:
        if stats.frame == 4:
            raise RuntimeError("enough")

    with pytest.raises(RuntimeError, match="enough"):
        run_video(cfg, tmp_path / "run", on_frame=stop_at_four)
    assert count_frames(out)[0] == 4  # the writer was released: a playable file of the frames so far


def write_frames(path: Path, frames: list[np.ndarray], fps: float = 15.0) -> None:
    """A real mp4 of the given (H, W, 3) BGR frames, all of the first one's size."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()


def face_grid(rows: int, cols: int, side: int) -> np.ndarray:
    """A frame of ``rows`` x ``cols`` copies of the astronaut's head, each ``side`` pixels."""
    head = cv2.resize(cv2.imread(str(ASTRONAUT))[30:290, 95:355], (side, side), interpolation=cv2.INTER_AREA)
    return np.tile(head, (rows, cols, 1))


class RecordingRunner:
    """The real runner, noting the batch size of every call."""

    def __init__(self, runner) -> None:
        self.runner, self.backend, self.batches = runner, runner.backend, []

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        self.batches.append(len(batch))
        return self.runner(batch)


@pytest.mark.parametrize("video_flip, batch", [(False, 2), (True, 4)])
def test_run_video_faces_of_a_frame_go_through_the_model_once_in_one_batch(tmp_path, tiny_model_dir,
                                                                           video_flip, batch):
    """Two faces, BlazeFace (aligned): each refresh is one model call with both faces, without
    their mirror images unless run.video_tta_flip; photos keep run.tta_flip."""
    from faceattr.inference.pipeline import FacePipeline

    clip = tmp_path / "two.mp4"
    write_frames(clip, [face_grid(1, 2, 240)] * 6)
    cfg = compose_cfg(f"run.video={_q(clip)}", f"run.output={_q(tmp_path / 'out.mp4')}", "run.sync=true",
                      f"model_path={_q(tiny_model_dir)}", "detector=blazeface", "run.tracker.refresh_every=2",
                      f"run.video_tta_flip={str(video_flip).lower()}")
    pipeline = FacePipeline.from_config(cfg, video=True)
    assert pipeline.predictor.tta_flip  # run.tta_flip, the photos' setting, is untouched
    recorder = RecordingRunner(pipeline.predictor.runner)
    pipeline.predictor.runner = recorder
    seen: list[FrameStats] = []
    run_video(cfg, tmp_path / "run", pipeline, on_frame=seen.append)
    stages = seen[-1].stages
    assert stages.frames == 6 and stages.faces == 12 and stages.predicted == 6  # frames 1, 3, 5
    assert stages.model_calls == 3 and stages.aligned == 6 and stages.skipped == 0
    assert recorder.batches[1:] == [batch] * 3  # after the warm-up call


def test_run_video_frame_with_many_faces_keeps_running(tmp_path, tiny_model_dir, caplog):
    """36 faces a frame, run.max_faces=10: the 10 largest are tracked and labelled, the others
    counted; the log says it once, the summary gives the count."""
    clip = tmp_path / "crowd.mp4"
    write_frames(clip, [face_grid(6, 6, 100)] * 3)
    cfg = compose_cfg(f"run.video={_q(clip)}", f"run.output={_q(tmp_path / 'out.mp4')}", "run.sync=true",
                      f"model_path={_q(tiny_model_dir)}", "detector=mtcnn", "detector.video.name=null",
                      "run.max_faces=10")
    seen: list[FrameStats] = []
    with caplog.at_level("WARNING"):
        result = run_video(cfg, tmp_path / "run", on_frame=seen.append)
    stages = seen[-1].stages
    assert result["frames_written"] == 3 and stages.faces == 30
    assert sum(t.missed == 0 for t in seen[-1].tracks) == 10  # detected in this frame (others kept a while)
    assert stages.skipped == result["faces_skipped"] == 3 * 26
    assert sum("run.max_faces" in r.getMessage() for r in caplog.records) == 1


def test_tracking_goes_on_when_frames_change_size(tiny_model_dir):
    """A stream may change its frame size: detection, alignment, the model and the tracker take
    each frame as it comes."""
    from faceattr.inference.pipeline import FacePipeline
    from faceattr.inference.video import tracking_process

    cfg = compose_cfg(f"model_path={_q(tiny_model_dir)}", "detector=blazeface")
    process = tracking_process(FacePipeline.from_config(cfg, video=True), IoUTracker(), max_faces=10)
    big = face_grid(1, 2, 240)
    for frame in (big, cv2.resize(big, (240, 120)), big, np.zeros((48, 64, 3), np.uint8)):
        tracks = process(frame)
        assert all(t.prediction is not None for t in tracks)
    assert process.totals.frames == 4 and process.totals.faces >= 4


def test_run_video_stream_whose_frames_change_size_writes_every_frame(tmp_path, tiny_model_dir):
    """A motion-JPEG stream whose frames change size halfway: every frame is read, labelled and
    written at the first frame's size."""
    stream = tmp_path / "stream.mjpeg"
    big = face_grid(1, 2, 240)
    with stream.open("wb") as fh:
        for frame in [cv2.resize(big, (320, 160))] * 3 + [big] * 3:
            fh.write(cv2.imencode(".jpg", frame)[1].tobytes())
    out = tmp_path / "out.mp4"
    cfg = compose_cfg(f"run.video={_q(stream)}", f"run.output={_q(out)}", "run.sync=true",
                      f"model_path={_q(tiny_model_dir)}", "detector=blazeface")
    result = run_inputs(cfg, tmp_path / "run")
    assert result["frames_read"] == result["frames_written"] == 6
    assert count_frames(out)[:2] == (6, (160, 320))


def test_run_video_bad_tracker_setting_is_a_config_error(tmp_path, tiny_model_dir):
    clip = tmp_path / "clip.mp4"
    write_clip(clip, frames=3)
    with pytest.raises(ConfigError, match="run.tracker.refresh_every=0 is not allowed"):
        run_inputs(compose_cfg(f"run.video={_q(clip)}", f"model_path={_q(tiny_model_dir)}",
                                "run.tracker.refresh_every=0"), tmp_path / "run")


@pytest.mark.slow
def test_run_video_bad_sources(tmp_path, tiny_model_dir):
    with pytest.raises(InputError, match="no such video file"):
        run_inputs(compose_cfg(f"run.video={_q(tmp_path / 'missing.mp4')}", f"model_path={_q(tiny_model_dir)}"),
                    tmp_path / "run")
    fake = tmp_path / "fake.mp4"
    fake.write_text("not a video")
    with pytest.raises(InputError, match="cannot be opened as a video"):
        run_inputs(compose_cfg(f"run.video={_q(fake)}", f"model_path={_q(tiny_model_dir)}"), tmp_path / "run")


# ---------------------------------------------------------------------------------------
# End to end, as a user types it
# ---------------------------------------------------------------------------------------
def main_py(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    return subprocess.run([sys.executable, str(ROOT / "src" / "main.py"), *args], capture_output=True, text=True,
                          timeout=180, cwd=cwd, env=env)


@pytest.mark.slow
def test_cli_run_img_end_to_end(tmp_path, tiny_model_dir):
    out = tmp_path / "p.csv"
    res = main_py("run", "--img", str(ASTRONAUT), "--model_path", str(tiny_model_dir), "--no-display",
                  "--output", str(out), f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    with out.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and rows[0]["image"] == str(ASTRONAUT)
    assert "Traceback" not in res.stderr


@pytest.mark.slow
def test_cli_run_broken_path_is_one_error_line(tmp_path, tiny_model_dir):
    res = main_py("run", "--img", str(tmp_path / "missing.jpg"), "--model_path", str(tiny_model_dir),
                  "--no-display", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert res.returncode != 0
    assert [line for line in res.stderr.splitlines() if "error:" in line] == [f"error: {tmp_path / 'missing.jpg'}: "
                                                                             "no such file"]
    assert "Traceback" not in res.stderr
