"""The real training loop, end to end through the CLI, on synthetic faces (everywhere) and on
the shared UTKFace archive (skipped when absent).

Each run is a subprocess of ``python src/main.py`` exactly as a user types it; a private
``paths.cache`` keeps feature caches and extracted data out of the developer's own.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import SHARED_TARBALL, make_fake_utkface
from faceattr.config import group_node

ROOT = Path(__file__).resolve().parents[1]
TINY_CNN = ["model.input_size=32", "model.filters=[8,16]", "model.heads.hidden_units=[16]"]


def main_py(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, str(ROOT / "src" / "main.py"), *map(str, args)], capture_output=True,
                         text=True, timeout=timeout, cwd=ROOT)
    assert res.returncode == 0, f"{args}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fake") / "UTKFace"
    make_fake_utkface(folder, 80)
    return folder


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def common(data: Path, cache: Path) -> list[str]:
    # The TensorFlow Lite export costs seconds per run; the tests that check it turn it back on.
    return [f"data.path={data}", f"paths.cache={cache}", "train.epochs=2", "train.batch_size=16", "export.tflite=false"]


def test_normal_trains_saves_and_evaluates(fake_data, cache, tmp_path):
    run = tmp_path / "run"
    main_py("train", "--model_type", "normal", "--eval", *common(fake_data, cache), *TINY_CNN,
            "export.tflite=true", "export.quantization=float32", f"hydra.run.dir={run}")
    for name in ("split.csv", "history.csv", "metrics.json", "train_summary.json", "model/model.keras",
                 "model/model.tflite", "model/model_info.json", "model/split.csv", "statistics/data_summary.json"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics.pop("split") == "test"  # the rest are numbers
    split = pd.read_csv(run / "split.csv")
    assert metrics["n"] == (split.split == "test").sum()
    assert list(pd.read_csv(run / "history.csv")["epoch"]) == [0, 1]
    assert any((run / "tensorboard").rglob("events.out.tfevents*"))
    # The saved model loads in safe mode and evaluates to the same numbers on the same split.
    again = tmp_path / "eval"
    main_py("evaluate", "--model_path", run / "model", *common(fake_data, cache), f"hydra.run.dir={again}")
    again_metrics = json.loads((again / "metrics.json").read_text())
    assert again_metrics.pop("split") == "test" and again_metrics == pytest.approx(metrics, rel=1e-4)
    # Choosing between models uses the validation split, and says so.
    on_val = tmp_path / "eval_val"
    main_py("evaluate", "--model_path", run / "model", *common(fake_data, cache), "evaluation.split=val",
            f"hydra.run.dir={on_val}")
    val_metrics = json.loads((on_val / "metrics.json").read_text())
    assert val_metrics["split"] == "val" and val_metrics["n"] == (split.split == "val").sum()
    # The exported file `run` serves, fed whole images through OpenCV (not tf.data) scores the
    # same, up to the two JPEG decoders' pixel differences.
    served = tmp_path / "eval_tflite"
    main_py("evaluate", "--model_path", run / "model", *common(fake_data, cache), "evaluation.backend=tflite",
            f"hydra.run.dir={served}")
    served_metrics = json.loads((served / "metrics.json").read_text())
    assert served_metrics.pop("split") == "test" and served_metrics == pytest.approx(metrics, rel=0.02, abs=0.01)


def test_continue_training_from_a_model_but_never_from_one_that_saw_the_test_split(fake_data, cache, tmp_path):
    import keras
    import numpy as np
    from omegaconf import OmegaConf

    from faceattr.errors import ConfigError
    from faceattr.training import make_trainer

    first = tmp_path / "first"
    main_py("train", "--model_type", "normal", *common(fake_data, cache), *TINY_CNN, "train.epochs=1",
            f"hydra.run.dir={first}")
    # In process: the trainer starts from exactly the saved weights...
    cfg = OmegaConf.create({"model": {"name": "normal", "input_size": 32}, "paths": {"cache": str(cache)},
                            "train": {"init_from": str(first / "model")}})
    split = pd.read_csv(first / "split.csv")
    trainer = make_trainer(cfg, split)
    saved = keras.models.load_model(first / "model" / "model.keras", compile=False)
    for mine, theirs in zip(trainer.model.get_weights(), saved.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    # ...unless one of its training images is held out in this run.
    leaky = split.copy()
    leaky.loc[leaky.index[leaky.split == "train"][0], "split"] = "test"
    with pytest.raises(ConfigError, match="was trained on 1 image"):
        make_trainer(cfg, leaky)
    with pytest.raises(ConfigError, match="holds a normal model at 32px"):
        make_trainer(OmegaConf.merge(cfg, {"model": {"input_size": 64}}), split)

    # Through the CLI: same data and split -> trains on; another split seed -> one-line refusal.
    second = tmp_path / "second"
    main_py("train", "--model_type", "normal", *common(fake_data, cache), *TINY_CNN, "train.epochs=1",
            f"train.init_from={first / 'model'}", f"hydra.run.dir={second}")
    assert "Starting from the weights of" in (second / "app.log").read_text()
    assert (second / "model" / "model.keras").is_file()
    # The continued model's curves hold both runs' epochs, numbered on.
    assert list(pd.read_csv(second / "model" / "history.csv")["epoch"]) == [0, 1]
    assert json.loads((second / "train_summary.json").read_text())["init_from"] == str(first / "model")
    res = subprocess.run([sys.executable, str(ROOT / "src" / "main.py"), "train", "--model_type", "normal",
                          *common(fake_data, cache), *TINY_CNN, "data.split.seed=7",
                          f"train.init_from={first / 'model'}", f"hydra.run.dir={tmp_path / 'third'}"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "train.init_from:" in res.stderr and "val/test split" in res.stderr
    # An experiment that continues a model refuses to start without one, before touching the data.
    res = subprocess.run([sys.executable, str(ROOT / "src" / "main.py"), "train", "experiment=normal_full_cosine",
                          *common(fake_data, cache), f"hydra.run.dir={tmp_path / 'fourth'}"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 2 and "Traceback" not in res.stderr and "continues a trained model" in res.stderr
    assert not (tmp_path / "fourth" / "split.csv").exists()


def test_facenet_second_run_reuses_cached_features(fake_data, cache, tmp_path):
    times = []
    for i in range(2):
        start = time.perf_counter()
        main_py("train", "--model_type", "facenet", *common(fake_data, cache), f"hydra.run.dir={tmp_path / str(i)}")
        times.append(time.perf_counter() - start)
    first, second = (json.loads((tmp_path / str(i) / "train_summary.json").read_text()) for i in range(2))
    n_images = len(pd.read_csv(tmp_path / "0" / "split.csv").query("split != 'test'"))
    assert first["feature_images_extracted"] >= n_images  # image and mirror of train, val
    assert second["feature_images_extracted"] == 0
    info = json.loads((tmp_path / "1" / "model" / "model_info.json").read_text())
    assert info["model_type"] == "facenet" and info["facenet"]["cut_stage"] is None
    # Only the trained top ships: far smaller than the 90 MB frozen graph.
    assert (tmp_path / "1" / "model" / "top.keras").stat().st_size < 20e6
    # Continuing that top with the last block trained too (an earlier cut) copies its heads and
    # starts block8_6 from FaceNet's weights: with learning rates of 0 the heads come out as they went in.
    deeper = tmp_path / "deeper"
    main_py("train", "--model_type", "facenet", *common(fake_data, cache), "model.finetune_blocks=1",
            "model.heads_epochs=0", "train.epochs=1", "model.finetune_learning_rate=0",
            f"train.init_from={tmp_path / '1' / 'model'}", f"hydra.run.dir={deeper}")
    assert "stages before its cut from FaceNet" in (deeper / "app.log").read_text()
    import keras
    import numpy as np

    before, after = (keras.saving.load_model(d / "model" / "top.keras", safe_mode=True)
                     for d in (tmp_path / "1", deeper))
    for name in ("race", "gender", "age", "race_dense0"):
        for w0, w1 in zip(before.get_layer(name).get_weights(), after.get_layer(name).get_weights(), strict=True):
            np.testing.assert_array_equal(w0, w1)
    keras.backend.clear_session()
    # The other way, dropping the trained block to go back to frozen features, is one clear line.
    res = subprocess.run([sys.executable, str(ROOT / "src" / "main.py"), "train", "--model_type", "facenet",
                          *common(fake_data, cache), f"train.init_from={deeper / 'model'}",
                          f"hydra.run.dir={tmp_path / 'bad'}"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "train.init_from:" in res.stderr and "finetune_blocks" in res.stderr and "Traceback" not in res.stderr
    # So is continuing it on zoomed-out faces: its features would come from another framing.
    res = subprocess.run([sys.executable, str(ROOT / "src" / "main.py"), "train", "--model_type", "facenet",
                          *common(fake_data, cache), "model.zoom_out=1.4",
                          f"train.init_from={tmp_path / '1' / 'model'}", f"hydra.run.dir={tmp_path / 'bad2'}"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 2 and "zoom_out" in res.stderr and "Traceback" not in res.stderr, res.stderr[-2000:]


def test_sweep_writes_a_two_row_summary(fake_data, cache, tmp_path):
    sweep = tmp_path / "sweep"
    main_py("train", "-m", "--model_type", "normal", "--eval", *common(fake_data, cache), *TINY_CNN,
            "model.heads.dropout=0.1,0.5", f"hydra.sweep.dir={sweep}")
    summary = pd.read_csv(sweep / "sweep_summary.csv")
    assert len(summary) == 2
    assert sorted(summary["model.heads.dropout"]) == [0.1, 0.5]
    assert (sweep / "sweep_comparison.png").is_file()


def test_promote_moves_the_previous_model_aside(fake_data, cache, tmp_path):
    run = tmp_path / "run"
    main_py("train", "--model_type", "normal", *common(fake_data, cache), *TINY_CNN, "train.epochs=1",
            f"hydra.run.dir={run}")
    shipped = tmp_path / "saved_model"
    (shipped / "normal").mkdir(parents=True)
    (shipped / "normal" / "mine.txt").write_text("a user's file")
    main_py("promote", run, f"paths.saved_models={shipped}", f"hydra.run.dir={tmp_path / 'p'}")
    assert (shipped / "normal" / "model.keras").is_file()
    kept = list((shipped / ".previous").glob("normal-*/mine.txt"))
    assert len(kept) == 1 and kept[0].read_text() == "a user's file"


def test_ensemble_averages_members_of_one_split_and_refuses_another(fake_data, cache, tmp_path):
    import keras
    import numpy as np

    # Two members from different seeds on one split (data.split.seed fixed), one on another split.
    members = []
    for seed, split_seed in ((1, 42), (2, 42), (3, 7)):
        run = tmp_path / f"member{seed}"
        main_py("train", "--model_type", "normal", *common(fake_data, cache), *TINY_CNN, "train.epochs=1",
                f"seed={seed}", f"data.split.seed={split_seed}", f"hydra.run.dir={run}")
        members.append(run)
    out = tmp_path / "ens"
    main_py("ensemble", members[0], members[1] / "model", f"paths.cache={cache}", "export.tflite=true",
            f"hydra.run.dir={out}")
    info = json.loads((out / "model" / "model_info.json").read_text())
    assert info["model_type"] == "normal" and len(info["ensemble"]["members"]) == 2
    # Its outputs are the members' mean (a real forward pass through all three saved models).
    load = lambda d: keras.models.load_model(d / "model" / "model.keras", safe_mode=True, compile=False)  # noqa: E731
    faces = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    got, one, two = (load(d).predict_on_batch(faces) for d in (out, members[0], members[1]))
    for key in ("age", "gender", "race"):
        np.testing.assert_allclose(got[key], (np.asarray(one[key]) + np.asarray(two[key])) / 2, atol=1e-5)
    assert (out / "model" / "model.tflite").is_file()
    # It evaluates on the members' test split, as any model folder.
    main_py("evaluate", "--model_path", out / "model", *common(fake_data, cache), f"hydra.run.dir={tmp_path / 'ev'}")
    split = pd.read_csv(members[0] / "split.csv")
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["n"] == (split.split == "test").sum()
    # The members' training curves come along: their histories in the folder, one plot each.
    for i, member in enumerate(members[:2]):
        kept = pd.read_csv(out / "model" / f"history_member{i}.csv")
        pd.testing.assert_frame_equal(kept, pd.read_csv(member / "history.csv"))
        assert (tmp_path / "ev" / f"training_curves_member{i}.png").stat().st_size > 0
    # A member trained on another split may have trained on this one's test faces: refused in one line.
    res = subprocess.run([sys.executable, str(ROOT / "src" / "main.py"), "ensemble", str(members[0]), str(members[2]),
                          f"paths.cache={cache}", f"hydra.run.dir={tmp_path / 'bad'}"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert "split.csv differs" in res.stderr and not (tmp_path / "bad" / "model").exists()


def test_ensemble_of_facenet_and_cnn_feeds_the_cnn_the_shrunk_face(fake_data, cache, tmp_path):
    import shutil

    import cv2
    import keras
    import numpy as np

    from faceattr.models.io import load_model

    net, cnn, ens = tmp_path / "net", tmp_path / "cnn", tmp_path / "ens"
    main_py("train", "--model_type", "facenet", *common(fake_data, cache), "train.epochs=1", f"hydra.run.dir={net}")
    main_py("train", "--model_type", "normal", *common(fake_data, cache), *TINY_CNN, "train.epochs=1",
            f"hydra.run.dir={cnn}")
    # Listed CNN first, it is still a FaceNet model at 160 px: the trunk runs once per face.
    main_py("ensemble", cnn, net, f"paths.cache={cache}", "export.tflite=true", f"hydra.run.dir={ens}")
    info = json.loads((ens / "model" / "model_info.json").read_text())
    assert (info["model_type"], info["input_size"]) == ("facenet", 160)
    assert info["ensemble"]["member_types"] == ["normal", "facenet"]
    # End to end it is the mean of FaceNet on the face and the CNN on the face shrunk to its
    # 32 px with OpenCV's area filter, as the CNN's training images were.
    faces = np.random.default_rng(2).integers(0, 256, (3, 160, 160, 3)).astype(np.float32)
    small = np.stack([cv2.resize(face, (32, 32), interpolation=cv2.INTER_AREA) for face in faces])
    got = load_model(ens / "model", cache).model.predict_on_batch(faces)
    facenet_out = load_model(net / "model", cache).model.predict_on_batch(faces)
    cnn_out = load_model(cnn / "model", cache).model.predict_on_batch(small)
    for key in ("age", "gender", "race"):
        np.testing.assert_allclose(got[key], (np.asarray(facenet_out[key]) + np.asarray(cnn_out[key])) / 2,
                                   atol=1e-3)
    keras.backend.clear_session()
    # evaluate scores it from the cached features plus the faces, and as run serves it (TFLite).
    metrics = {}
    for backend in ("keras", "tflite"):
        main_py("evaluate", "--model_path", ens / "model", *common(fake_data, cache), f"evaluation.backend={backend}",
                f"hydra.run.dir={tmp_path / backend}")
        metrics[backend] = json.loads((tmp_path / backend / "metrics.json").read_text())
    assert metrics["keras"]["n"] == metrics["tflite"]["n"] > 0
    assert abs(metrics["keras"]["age_mae"] - metrics["tflite"]["age_mae"]) < 1.0
    assert (tmp_path / "keras" / "training_curves_member0.png").stat().st_size > 0
    # A CNN that needs a larger face than FaceNet's 160 px would get an enlarged one: refused.
    big = tmp_path / "big"
    shutil.copytree(cnn / "model", big)
    big_info = json.loads((big / "model_info.json").read_text())
    (big / "model_info.json").write_text(json.dumps({**big_info, "input_size": 200}))
    res = subprocess.run([sys.executable, str(ROOT / "src" / "main.py"), "ensemble", str(net), str(big),
                          f"paths.cache={cache}", f"hydra.run.dir={tmp_path / 'bad'}"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 2 and "can only be shrunk" in res.stderr and "Traceback" not in res.stderr, res.stderr


@pytest.mark.slow
@pytest.mark.shared_data
def test_facenet_on_3000_real_faces(tmp_path, cache):
    if not SHARED_TARBALL.is_file():
        pytest.skip(f"UTKFace archive not found at {SHARED_TARBALL}")
    run = tmp_path / "run"
    main_py("train", "--model_type", "facenet", "--eval", f"data.path={SHARED_TARBALL}", "data.limit=3000",
            f"paths.cache={cache}", "train.epochs=25", f"hydra.run.dir={run}", timeout=1800)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["gender_accuracy"] >= 0.85 and metrics["race_accuracy"] >= 0.70, metrics
    assert metrics["n"] >= 400


def test_facenet_augmented_copies_are_cached_once_per_setting(fake_data, tmp_path):
    import numpy as np
    from omegaconf import OmegaConf

    from faceattr.models.facenet import FeatureCache

    cache = tmp_path / "cache"  # private, so that the extraction counts are exact
    args = ["--model_type", "facenet", *common(fake_data, cache), "train.epochs=1", "data.augment.scale=0.1"]

    def extracted(name: str, *extra: str) -> int:
        main_py("train", *args, *extra, f"hydra.run.dir={tmp_path / name}")
        return json.loads((tmp_path / name / "train_summary.json").read_text())["feature_images_extracted"]

    first = extracted("a", "model.augmented_views=2")
    split = pd.read_csv(tmp_path / "a" / "split.csv")
    train = split.query("split == 'train'")
    n_train, n_val = len(train), int((split.split == "val").sum())
    assert first == 4 * n_train + n_val  # training faces: image, mirror, 2 copies; val: image
    # (and sample weights instead of oversampling ride along with the chosen views)
    assert extracted("b", "model.augmented_views=3", "rebalance=weights") == n_train  # copies 1-2 reused, 3 new
    assert extracted("c", "model.augmented_views=2", "data.augment.scale=0.2") == 2 * n_train  # other settings

    # A copy is a function of the image and its number, not of the batch it was made in.
    model_cfg = group_node("model", "facenet")
    augment_cfg = {**OmegaConf.to_container(group_node("data", "utkface").augment),
                   "flip": True, "scale": 0.1}
    features = FeatureCache(cache, model_cfg, weights_cache=cache)
    paths = [str(fake_data / name) for name in train["image"][:5]]
    sha1s = [hashlib.sha1(Path(p).read_bytes()).hexdigest() for p in paths]  # the cache is keyed by content
    copy1 = features.get_augmented(paths, sha1s, 1, augment_cfg)
    assert features.images_extracted == 0  # the training runs cached these
    for path in features.dir.glob(f"*/{sha1s[0]}_aug1-*.npy"):
        path.unlink()
    again = features.get_augmented(paths[:1], sha1s[:1], 1, augment_cfg, batch_size=1)
    assert features.images_extracted == 1
    np.testing.assert_allclose(again[0].astype(np.float32), copy1[0].astype(np.float32), rtol=1e-2, atol=1e-2)
    copy2 = features.get_augmented(paths, sha1s, 2, augment_cfg)
    plain = features.get(paths, sha1s)
    assert not np.allclose(copy1, copy2, atol=1e-2) and not np.allclose(copy1, plain, atol=1e-2)


def test_facenet_finetuning_last_block_on_embeddings(fake_data, cache, tmp_path):
    from faceattr.models.facenet_graph import STAGES

    run = tmp_path / "run"
    main_py("train", "--model_type", "facenet", "--eval", *common(fake_data, cache), "train.epochs=2",
            "model.heads_epochs=1", "model.finetune_blocks=1", "model.features=embedding", "model.zoom_out=1.2",
            "export.tflite=true", f"hydra.run.dir={run}")
    info = json.loads((run / "model" / "model_info.json").read_text())
    assert info["facenet"]["cut_stage"] == len(STAGES) - 1 and info["facenet"]["features"] == "embedding"
    assert info["facenet"]["zoom_out"] == 1.2  # the trunk that run assembles (and exports) zooms out too
    # model.heads_epochs sets the heads-only phase apart from the fine-tuning phase (train.epochs);
    # the model's history holds both, numbered on.
    assert len(pd.read_csv(run / "history_heads.csv")) == 1 and len(pd.read_csv(run / "history_finetune.csv")) == 2
    assert list(pd.read_csv(run / "model" / "history.csv")["epoch"]) == [0, 1, 2]
    # The saved top (fine-tuned block8_6 + heads) assembles with the packaged trunk and labels a
    # photo; its TensorFlow Lite export (trunk included, int8 weights) gives nearly the same labels.
    rows = {}
    for backend in ("keras", "tflite"):
        out = tmp_path / f"preds_{backend}.csv"
        main_py("run", "--img", ROOT / "examples" / "astronaut.jpg", "--model_path", run / "model", "--no-display",
                "--output", out, f"paths.cache={cache}", f"run.backend={backend}",
                f"hydra.run.dir={tmp_path / backend}")
        rows[backend] = pd.read_csv(out)
        assert f"input 160px, {backend}" in (tmp_path / backend / "app.log").read_text()
    keras_row, lite_row = rows["keras"].loc[0], rows["tflite"].loc[0]
    assert len(rows["keras"]) == 1 and keras_row["gender"] in ("male", "female") and 0 <= keras_row["age"] <= 116
    assert abs(lite_row["age"] - keras_row["age"]) < 2.0
    assert abs(lite_row["gender_confidence"] - keras_row["gender_confidence"]) < 0.05

    # An ensemble of this fine-tuned top and a frozen-backbone one (pooled features) is fed from
    # the earlier cut: the frozen member gets the packaged block8_6 and pooling in front, and the
    # end-to-end ensemble equals the mean of the two end-to-end members.
    import keras
    import numpy as np

    from faceattr.models.io import load_model

    frozen = tmp_path / "frozen"
    main_py("train", "--model_type", "facenet", *common(fake_data, cache), "train.epochs=1", "model.zoom_out=1.2",
            f"hydra.run.dir={frozen}")
    main_py("ensemble", run, frozen, f"paths.cache={cache}", f"hydra.run.dir={tmp_path / 'ens'}")
    ens_info = json.loads((tmp_path / "ens" / "model" / "model_info.json").read_text())
    assert ens_info["facenet"]["cut_stage"] == len(STAGES) - 1
    faces = np.random.default_rng(1).uniform(0, 255, (3, 160, 160, 3)).astype(np.float32)
    got, tuned, plain = (load_model(d / "model", cache).model.predict_on_batch(faces)
                         for d in (tmp_path / "ens", run, frozen))
    for key in ("age", "gender", "race"):
        np.testing.assert_allclose(got[key], (np.asarray(tuned[key]) + np.asarray(plain[key])) / 2, atol=1e-3)
    keras.backend.clear_session()
    # Another framing would need another trunk: refused in one line.
    other = tmp_path / "other"
    main_py("train", "--model_type", "facenet", *common(fake_data, cache), "train.epochs=1", "model.zoom_out=1.0",
            f"hydra.run.dir={other}")
    res = subprocess.run([sys.executable, str(ROOT / "src" / "main.py"), "ensemble", str(run), str(other),
                          f"paths.cache={cache}", f"hydra.run.dir={tmp_path / 'bad'}"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 2 and "zoom_out" in res.stderr and "Traceback" not in res.stderr, res.stderr[-2000:]


def test_cosine_schedule_decays_the_learning_rate_every_epoch(fake_data, cache, tmp_path):
    run = tmp_path / "run"
    main_py("train", "--model_type", "normal", *common(fake_data, cache), *TINY_CNN, "train.epochs=3",
            "train.schedule=cosine", "train.learning_rate=1e-3", "train.early_stopping_patience=5",
            f"hydra.run.dir={run}")
    rates = pd.read_csv(run / "history.csv")["learning_rate"].tolist()
    assert len(rates) == 3 and rates[0] < 1e-3 and rates[0] > rates[1] > rates[2] >= 1e-5
