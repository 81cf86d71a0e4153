"""The real training loop, end to end, on synthetic faces (everywhere) and on a fixed subset of
the shared UTKFace archive (skipped when absent).

Commands run in this process exactly as ``python src/main.py`` runs them (conftest's
``run_command``: the composed config and the command's handler); sweeps go through the CLI's
own ``main`` (conftest's ``cli``). The CNN and FaceNet runs the tests build on are trained once
per session (conftest's ``cnn_run``, ``facenet_run``); a private ``paths.cache`` keeps counts of
extracted features exact and the developer's own caches untouched.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from conftest import (
    ROOT,
    TINY_CNN,
    cli,
    make_fake_utkface,
    run_command,
    smoke,
)
from faceattr.config import group_node
from faceattr.errors import ConfigError
from faceattr.models.info import load_keras_file

ASTRONAUT = ROOT / "examples" / "astronaut.jpg"


def members(*dirs: Path) -> str:
    """``ensemble.members=[...]`` for model or run folders."""
    return "ensemble.members=[" + ",".join(f"'{d}'" for d in dirs) + "]"


def metrics_of(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.mark.slow
def test_normal_trains_saves_and_evaluates(cnn_run, fake_data, shared_cache, tmp_path):
    run = cnn_run  # train --eval, export.tflite=true, export.quantization=float32
    for name in ("split.csv", "history.csv", "metrics.json", "train_summary.json", "model/model.keras",
                 "model/model.tflite", "model/model_info.json", "model/split.csv", "statistics/data_summary.json",
                 "app.log"):
        assert (run / name).is_file(), name
    metrics = metrics_of(run)
    assert metrics.pop("split") == "test"  # the rest are numbers
    split = pd.read_csv(run / "split.csv")
    assert metrics["n"] == (split.split == "test").sum()
    assert list(pd.read_csv(run / "history.csv")["epoch"]) == [0, 1]
    assert "resumed" not in json.loads((run / "train_summary.json").read_text())  # one command trained it all
    assert not list((run / "statistics").glob("*.png"))  # debug=smoke: train.data_plots=false
    assert not list(run.glob("*.png")) and (run / "fairness.csv").is_file()  # and evaluation.plots=false
    assert any((run / "tensorboard").rglob("events.out.tfevents*"))
    assert "train.run_eagerly" not in (run / "app.log").read_text()  # traced, as real trainings are
    # The saved model loads in safe mode and evaluates to the same numbers on the same split.
    again = tmp_path / "eval"
    run_command("evaluate", f"model_path={run / 'model'}", *smoke(fake_data, shared_cache), run_dir=again)
    again_metrics = metrics_of(again)
    assert again_metrics.pop("split") == "test" and again_metrics == pytest.approx(metrics, rel=1e-4)
    # Choosing between models uses the validation split, and says so.
    on_val = tmp_path / "eval_val"
    run_command("evaluate", f"model_path={run / 'model'}", *smoke(fake_data, shared_cache), "evaluation.split=val",
                run_dir=on_val)
    val_metrics = metrics_of(on_val)
    assert val_metrics["split"] == "val" and val_metrics["n"] == (split.split == "val").sum()
    # The exported file `run` serves, fed whole images through OpenCV (not tf.data) scores the
    # same, up to the two JPEG decoders' pixel differences.
    served = tmp_path / "eval_tflite"
    run_command("evaluate", f"model_path={run / 'model'}", *smoke(fake_data, shared_cache),
                "evaluation.backend=tflite", run_dir=served)
    served_metrics = metrics_of(served)
    assert served_metrics.pop("split") == "test" and served_metrics == pytest.approx(metrics, rel=0.02, abs=0.01)


@pytest.mark.slow
def test_continue_training_from_a_model_but_never_from_one_that_saw_the_test_split(cnn_run, fake_data,
                                                                                   shared_cache, tmp_path):
    import numpy as np
    from omegaconf import OmegaConf

    from faceattr.training.command import make_trainer

    first = cnn_run  # two epochs
    # The trainer starts from exactly the saved weights...
    cfg = OmegaConf.create({"model": {"name": "cnn", "input_size": 32}, "paths": {"cache": str(shared_cache)},
                            "train": {"init_from": str(first / "model")}})
    split = pd.read_csv(first / "split.csv")
    trainer = make_trainer(cfg, split)
    saved = load_keras_file(first / "model" / "model.keras")
    for mine, theirs in zip(trainer.model.get_weights(), saved.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    # ...unless one of its training images is held out in this run.
    leaky = split.copy()
    leaky.loc[leaky.index[leaky.split == "train"][0], "split"] = "test"
    with pytest.raises(ConfigError, match="was trained on 1 image"):
        make_trainer(cfg, leaky)
    with pytest.raises(ConfigError, match="holds a cnn model at 32px"):
        make_trainer(OmegaConf.merge(cfg, {"model": {"input_size": 64}}), split)

    # The command: same data and split -> trains on; another split seed -> one clear refusal.
    second = tmp_path / "second"
    args = [*TINY_CNN, *smoke(fake_data, shared_cache), "train.epochs=1"]
    run_command("train", *args, f"train.init_from={first / 'model'}", run_dir=second)
    assert "Starting from the weights of" in (second / "app.log").read_text()
    assert (second / "model" / "model.keras").is_file()
    # The continued model's curves hold both runs' epochs, numbered on.
    assert list(pd.read_csv(second / "model" / "history.csv")["epoch"]) == [0, 1, 2]
    assert json.loads((second / "train_summary.json").read_text())["init_from"] == str(first / "model")
    with pytest.raises(ConfigError) as refused:
        run_command("train", *args, "data.split.seed=7", f"train.init_from={first / 'model'}",
                    run_dir=tmp_path / "third")
    assert str(refused.value).startswith("train.init_from:") and "val/test split" in str(refused.value)
    assert "\n" not in str(refused.value)
    # An experiment that continues a model refuses to start without one, before touching the data.
    with pytest.raises(ConfigError, match="continues a trained model"):
        run_command("train", "experiment=normal_full_cosine", *smoke(fake_data, shared_cache),
                    run_dir=tmp_path / "fourth")
    assert not (tmp_path / "fourth" / "split.csv").exists()


@pytest.mark.slow
def test_facenet_second_run_reuses_cached_features(facenet_run, facenet_cache, fake_data, tmp_path):
    import keras
    import numpy as np

    # facenet_run was the first run on its cache; this one finds every feature there.
    second = tmp_path / "second"
    run_command("train", "model=facenet", *smoke(fake_data, facenet_cache), run_dir=second)
    first, again = (json.loads((d / "train_summary.json").read_text()) for d in (facenet_run, second))
    n_images = len(pd.read_csv(facenet_run / "split.csv").query("split != 'test'"))
    assert first["feature_images_extracted"] >= n_images  # image and mirror of train, val
    assert again["feature_images_extracted"] == 0
    info = json.loads((second / "model" / "model_info.json").read_text())
    assert info["model_type"] == "facenet" and info["facenet"]["cut_stage"] is None
    # Only the trained top ships: far smaller than the 90 MB frozen graph.
    assert (second / "model" / "top.keras").stat().st_size < 20e6
    # Continuing that top with the last block trained too (an earlier cut) copies its heads and
    # starts block8_6 from FaceNet's weights: with learning rates of 0 the heads come out as they went in.
    deeper = tmp_path / "deeper"
    args = ["model=facenet", *smoke(fake_data, facenet_cache)]
    run_command("train", *args, "model.finetune_blocks=1", "model.heads_epochs=0", "train.epochs=1",
                "model.finetune_learning_rate=0", f"train.init_from={second / 'model'}", run_dir=deeper)
    assert "stages before its cut from FaceNet" in (deeper / "app.log").read_text()
    before, after = (load_keras_file(d / "model" / "top.keras") for d in (second, deeper))
    for name in ("race", "gender", "age", "race_dense0"):
        for w0, w1 in zip(before.get_layer(name).get_weights(), after.get_layer(name).get_weights(), strict=True):
            np.testing.assert_array_equal(w0, w1)
    keras.backend.clear_session()
    # The other way, dropping the trained block to go back to frozen features, is one clear line.
    with pytest.raises(ConfigError) as refused:
        run_command("train", *args, f"train.init_from={deeper / 'model'}", run_dir=tmp_path / "bad")
    message = str(refused.value)
    assert message.startswith("train.init_from:") and "finetune_blocks" in message and "\n" not in message
    # So is continuing it on zoomed-out faces: its features would come from another framing.
    with pytest.raises(ConfigError, match="zoom_out"):
        run_command("train", *args, "model.zoom_out=1.4", f"train.init_from={second / 'model'}",
                    run_dir=tmp_path / "bad2")


@pytest.mark.slow
def test_sweep_writes_a_two_row_summary(fake_data, shared_cache, tmp_path):
    """``train -m`` through the CLI's own entry point: Hydra's sweep, and its summary callback."""
    sweep = tmp_path / "sweep"
    code = cli("train", "-m", "--eval", *TINY_CNN, *smoke(fake_data, shared_cache), "train.epochs=1",
               "model.heads.dropout=0.1,0.5", f"hydra.sweep.dir={sweep}")
    assert code == 0
    summary = pd.read_csv(sweep / "sweep_summary.csv")
    assert len(summary) == 2
    assert sorted(summary["model.heads.dropout"]) == [0.1, 0.5]
    assert summary["age_mae"].notna().all()  # each job evaluated (--eval) and reported
    assert (sweep / "sweep_comparison.png").is_file()


@pytest.mark.slow
def test_promote_moves_the_previous_model_aside(cnn_run, tmp_path):
    shipped = tmp_path / "saved_model"
    (shipped / "cnn").mkdir(parents=True)
    (shipped / "cnn" / "mine.txt").write_text("a user's file")
    run_command("promote", f"model_path={cnn_run}", f"paths.saved_models={shipped}", run_dir=tmp_path / "p")
    assert (shipped / "cnn" / "model.keras").is_file()
    assert (shipped / "cnn" / "model.keras").read_bytes() == (cnn_run / "model" / "model.keras").read_bytes()
    kept = list((shipped / ".previous").glob("cnn-*/mine.txt"))
    assert len(kept) == 1 and kept[0].read_text() == "a user's file"


@pytest.mark.slow
def test_ensemble_averages_members_of_one_split_and_refuses_another(cnn_run, fake_data, shared_cache, tmp_path):
    import numpy as np

    # Two members from different seeds on one split (data.split.seed fixed), one on another split:
    # the first one's model with one of its training faces held out as a test face.
    runs = [cnn_run, tmp_path / "member2"]
    run_command("train", *TINY_CNN, *smoke(fake_data, shared_cache), "train.epochs=1", "seed=2",
                "data.split.seed=42", run_dir=runs[1])
    other = tmp_path / "other_split"
    shutil.copytree(cnn_run / "model", other / "model")
    split = pd.read_csv(other / "model" / "split.csv")
    split.loc[split.index[split.split == "train"][0], "split"] = "test"
    split.to_csv(other / "model" / "split.csv", index=False)
    runs.append(other)
    out = tmp_path / "ens"
    run_command("ensemble", members(runs[0], runs[1] / "model"), f"paths.cache={shared_cache}",
                "export.tflite=true", run_dir=out)
    info = json.loads((out / "model" / "model_info.json").read_text())
    assert info["model_type"] == "cnn" and len(info["ensemble"]["members"]) == 2
    # Its outputs are the members' mean (a real forward pass through all three saved models).
    load = lambda d: load_keras_file(d / "model" / "model.keras")  # noqa: E731
    faces = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    got, one, two = (load(d).predict_on_batch(faces) for d in (out, runs[0], runs[1]))
    for key in ("age", "gender", "race"):
        np.testing.assert_allclose(got[key], (np.asarray(one[key]) + np.asarray(two[key])) / 2, atol=1e-5)
    assert (out / "model" / "model.tflite").is_file()
    # Weighted (ensemble.weights, scaled to sum to 1): the outputs are the weighted mean, and the
    # export serves it.
    weighted = tmp_path / "weighted"
    run_command("ensemble", members(runs[0], runs[1] / "model"), "ensemble.weights=[3,1]",
                f"paths.cache={shared_cache}", "export.tflite=true", run_dir=weighted)
    assert json.loads((weighted / "model" / "model_info.json").read_text())["ensemble"]["weights"] == [0.75, 0.25]
    got = load(weighted).predict_on_batch(faces)
    for key in ("age", "gender", "race"):
        np.testing.assert_allclose(got[key], 0.75 * np.asarray(one[key]) + 0.25 * np.asarray(two[key]), atol=1e-5)
    from faceattr.inference.runtime import open_runner

    runner, _ = open_runner(weighted / "model", "tflite", shared_cache)
    np.testing.assert_allclose(runner(faces)["race"], got["race"], atol=0.02)  # int8 weights
    # Per task (ensemble.weights.<task>): gender from the first member alone, race weighted,
    # age the plain mean; the record says which.
    per_task = tmp_path / "per_task"
    run_command("ensemble", members(runs[0], runs[1] / "model"), "ensemble.weights={gender:[1,0],race:[1,3]}",
                f"paths.cache={shared_cache}", run_dir=per_task)
    assert json.loads((per_task / "model" / "model_info.json").read_text())["ensemble"]["weights"] == {
        "gender": [1.0, 0.0], "race": [0.25, 0.75]}
    got = load(per_task).predict_on_batch(faces)
    np.testing.assert_allclose(got["gender"], one["gender"], atol=1e-5)
    np.testing.assert_allclose(got["race"], 0.25 * np.asarray(one["race"]) + 0.75 * np.asarray(two["race"]), atol=1e-5)
    np.testing.assert_allclose(got["age"], (np.asarray(one["age"]) + np.asarray(two["age"])) / 2, atol=1e-5)
    with pytest.raises(ConfigError, match="one weight >= 0 per member"):
        run_command("ensemble", members(runs[0], runs[1] / "model"), "ensemble.weights=[1]",
                    f"paths.cache={shared_cache}", run_dir=tmp_path / "bad_weights")
    # It evaluates on the members' test split, as any model folder.
    ev = tmp_path / "ev"
    ev.mkdir()
    (ev / "training_curves_member5.png").write_bytes(b"a model evaluated here before had six members")
    run_command("evaluate", f"model_path={out / 'model'}", *smoke(fake_data, shared_cache), "evaluation.plots=true",
                run_dir=ev)
    split = pd.read_csv(runs[0] / "split.csv")
    assert metrics_of(ev)["n"] == (split.split == "test").sum()
    # The members' training curves come along: their histories in the folder, one plot each.
    for i, member in enumerate(runs[:2]):
        kept = pd.read_csv(out / "model" / f"history_member{i}.csv")
        pd.testing.assert_frame_equal(kept, pd.read_csv(member / "history.csv"))
        assert (ev / f"training_curves_member{i}.png").stat().st_size > 0
    assert sorted(p.name for p in ev.glob("training_curves_member*")) == [f"training_curves_member{i}.png"
                                                                          for i in range(2)]  # no stale curves
    # A member trained on another split may have trained on this one's test faces: refused in one line.
    with pytest.raises(ConfigError, match="split.csv puts 1 face.s. in another split than"):
        run_command("ensemble", members(runs[0], runs[2]), f"paths.cache={shared_cache}", run_dir=tmp_path / "bad")
    assert not (tmp_path / "bad" / "model").exists()
    # A member that also lists faces the others never saw (trained on a second source) agrees on the
    # shared ones: the ensemble's split is the union.
    from faceattr.models.ensemble import merged_split

    wider = tmp_path / "wider" / "model"
    shutil.copytree(cnn_run / "model", wider)
    own = pd.read_csv(wider / "split.csv")
    more = pd.DataFrame({"image": ["lab/a.jpg", "lab/b.jpg"], "split": ["train", "val"], "copies": [1, 1]})
    pd.concat([own, more]).to_csv(wider / "split.csv", index=False)
    (wider / "train_summary.json").unlink()  # its record of the split's length is the narrower split's
    union = merged_split([cnn_run / "model", wider])
    assert len(union) == len(own) + 2 and union.set_index("image").loc["lab/b.jpg", "split"] == "val"


@pytest.mark.slow
def test_ensemble_of_facenet_and_cnn_feeds_the_cnn_the_shrunk_face(cnn_run, facenet_run, facenet_cache, fake_data,
                                                                  tmp_path):
    import cv2
    import keras
    import numpy as np

    from faceattr.models.io import load_model

    net, cnn, ens = facenet_run, cnn_run, tmp_path / "ens"
    # Listed CNN first, it is still a FaceNet model at 160 px: the trunk runs once per face.
    run_command("ensemble", members(cnn, net), f"paths.cache={facenet_cache}", "export.tflite=true", run_dir=ens)
    info = json.loads((ens / "model" / "model_info.json").read_text())
    assert (info["model_type"], info["input_size"]) == ("facenet", 160)
    assert info["ensemble"]["member_types"] == ["cnn", "facenet"]
    # End to end it is the mean of FaceNet on the face and the CNN on the face shrunk to its
    # 32 px with OpenCV's area filter, as the CNN's training images were.
    faces = np.random.default_rng(2).integers(0, 256, (3, 160, 160, 3)).astype(np.float32)
    small = np.stack([cv2.resize(face, (32, 32), interpolation=cv2.INTER_AREA) for face in faces])
    got = load_model(ens / "model", facenet_cache).model.predict_on_batch(faces)
    facenet_out = load_model(net / "model", facenet_cache).model.predict_on_batch(faces)
    cnn_out = load_model(cnn / "model", facenet_cache).model.predict_on_batch(small)
    for key in ("age", "gender", "race"):
        np.testing.assert_allclose(got[key], (np.asarray(facenet_out[key]) + np.asarray(cnn_out[key])) / 2,
                                   atol=1e-3)
    keras.backend.clear_session()
    # evaluate scores it from the cached features plus the faces, and as run serves it (TFLite).
    metrics = {}
    for backend in ("keras", "tflite"):
        plots = str(backend == "keras").lower()  # the members' curves: drawn once
        run_command("evaluate", f"model_path={ens / 'model'}", *smoke(fake_data, facenet_cache),
                    f"evaluation.backend={backend}", f"evaluation.plots={plots}", run_dir=tmp_path / backend)
        metrics[backend] = metrics_of(tmp_path / backend)
    assert metrics["keras"]["n"] == metrics["tflite"]["n"] > 0
    assert abs(metrics["keras"]["age_mae"] - metrics["tflite"]["age_mae"]) < 1.0
    assert (tmp_path / "keras" / "training_curves_member0.png").stat().st_size > 0
    # The pair trains on as one model (what serve's retrain does with the shipped FaceNet model):
    # the FaceNet member from its cached features, the CNN from the faces.
    again = tmp_path / "again"
    run_command("train", "model=facenet", *smoke(fake_data, facenet_cache), "train.epochs=1",
                f"train.init_from={ens / 'model'}", run_dir=again)
    assert list(pd.read_csv(again / "history.csv")["epoch"]) == [0]
    continued = load_model(again / "model", facenet_cache).model.predict_on_batch(faces)
    assert np.isfinite(continued["age"]).all() and not np.allclose(continued["age"], got["age"])
    keras.backend.clear_session()
    # A CNN that needs a larger face than FaceNet's 160 px would get an enlarged one: refused.
    big = tmp_path / "big"
    shutil.copytree(cnn / "model", big)
    big_info = json.loads((big / "model_info.json").read_text())
    (big / "model_info.json").write_text(json.dumps({**big_info, "input_size": 200}))
    with pytest.raises(ConfigError, match="can only be shrunk"):
        run_command("ensemble", members(net, big), f"paths.cache={facenet_cache}", run_dir=tmp_path / "bad")


@pytest.mark.slow
@pytest.mark.shared_data
def test_facenet_on_real_faces(utkface_subset, subset_cache, tmp_path):
    """FaceNet's heads on 600 real UTKFace faces (chosen by ``data.limit`` from conftest's fixed
    subset of the archive) learn gender and race far above chance (about 0.52 and 0.43 for the
    majority class). One view per face (no mirror images), so a fresh clone extracts 600 FaceNet
    features; they are cached with the subset. On this split: gender 0.90, race 0.83."""
    run = tmp_path / "run"
    summary = run_command("train", "model=facenet", "train.eval=true", f"data.path={utkface_subset}",
                          "data.limit=600", f"paths.cache={subset_cache}", "train.epochs=25",
                          "data.augment.flip=false", "train.tta_flip=false", "export.tflite=false",
                          "evaluation.plots=false", "train.data_plots=false", run_dir=run)
    metrics = metrics_of(run)
    assert metrics["gender_accuracy"] >= 0.80 and metrics["race_accuracy"] >= 0.65, metrics
    assert metrics["n"] >= 80 and summary["epochs_run"] >= 5


@pytest.mark.slow
def test_facenet_augmented_copies_are_cached_once_per_setting(private_cache, tmp_path):
    import numpy as np
    from omegaconf import OmegaConf

    from faceattr.models.facenet import FeatureCache

    data = tmp_path / "UTKFace"
    make_fake_utkface(data, 40)
    cache = private_cache  # so that the extraction counts are exact
    args = ["model=facenet", *smoke(data, cache), "train.epochs=1", "data.augment.scale=0.1"]

    def extracted(name: str, *extra: str) -> int:
        return run_command("train", *args, *extra, run_dir=tmp_path / name)["feature_images_extracted"]

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
    paths = [str(data / name) for name in train["image"][:5]]
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
    # The process builds the trunk once per setting: another cache of this key extracts with the same one.
    assert FeatureCache(tmp_path / "other", model_cfg, weights_cache=cache).trunk() is features.trunk()


@pytest.mark.slow
def test_facenet_finetuning_last_block_on_embeddings(facenet_run, facenet_cache, fake_data, tmp_path):
    from faceattr.models.facenet_graph import STAGES

    run = tmp_path / "run"
    run_command("train", "model=facenet", *smoke(fake_data, facenet_cache), "train.epochs=2",
                "model.heads_epochs=1", "model.finetune_blocks=1", "model.features=embedding", "model.zoom_out=1.2",
                "train.run_eagerly=false", run_dir=run)  # the fine-tuning steps traced, as in a real run
    info = json.loads((run / "model" / "model_info.json").read_text())
    assert info["facenet"]["cut_stage"] == len(STAGES) - 1 and info["facenet"]["features"] == "embedding"
    assert info["facenet"]["zoom_out"] == 1.2  # the trunk that run assembles (and exports) zooms out too
    # model.heads_epochs sets the heads-only phase apart from the fine-tuning phase (train.epochs);
    # the model's history holds both, numbered on.
    assert len(pd.read_csv(run / "history_heads.csv")) == 1 and len(pd.read_csv(run / "history_finetune.csv")) == 2
    assert list(pd.read_csv(run / "model" / "history.csv")["epoch"]) == [0, 1, 2]
    # The saved top (fine-tuned block8_6 + heads) assembles with the packaged trunk and labels a
    # photo. (Its TensorFlow Lite export, trunk included, is checked on the FaceNet + CNN ensemble.)
    out = tmp_path / "preds.csv"
    run_command("run", f"run.img=['{ASTRONAUT}']", f"model_path={run / 'model'}", "run.display=false",
                f"run.output={out}", f"paths.cache={facenet_cache}", run_dir=tmp_path / "keras")
    row = pd.read_csv(out)
    assert "input 160px, keras" in (tmp_path / "keras" / "app.log").read_text()
    assert len(row) == 1 and row.loc[0, "gender"] in ("male", "female") and 0 <= row.loc[0, "age"] <= 116

    # An ensemble of this fine-tuned top and a frozen-backbone one (pooled features, the same
    # framing) is fed from the earlier cut: the frozen member gets the packaged block8_6 and
    # pooling in front, and the end-to-end ensemble equals the mean of the two end-to-end members.
    import keras
    import numpy as np

    from faceattr.models.io import load_model

    frozen = facenet_run
    assert json.loads((frozen / "model" / "model_info.json").read_text())["facenet"]["zoom_out"] == 1.2
    run_command("ensemble", members(run, frozen), f"paths.cache={facenet_cache}", "export.tflite=false",
                run_dir=tmp_path / "ens")
    ens_info = json.loads((tmp_path / "ens" / "model" / "model_info.json").read_text())
    assert ens_info["facenet"]["cut_stage"] == len(STAGES) - 1
    faces = np.random.default_rng(1).uniform(0, 255, (3, 160, 160, 3)).astype(np.float32)
    got, tuned, plain = (load_model(d / "model", facenet_cache).model.predict_on_batch(faces)
                         for d in (tmp_path / "ens", run, frozen))
    for key in ("age", "gender", "race"):
        np.testing.assert_allclose(got[key], (np.asarray(tuned[key]) + np.asarray(plain[key])) / 2, atol=1e-3)
    keras.backend.clear_session()
    # Another framing would need another trunk: refused in one line. (The member is the frozen
    # run's folder with its framing recorded as 1.0, as a run with model.zoom_out=1.0 writes it.)
    other = tmp_path / "other"
    shutil.copytree(frozen / "model", other)
    other_info = json.loads((other / "model_info.json").read_text())
    other_info["facenet"]["zoom_out"] = 1.0
    other_info["trained_with"]["model"]["zoom_out"] = 1.0
    (other / "model_info.json").write_text(json.dumps(other_info))
    with pytest.raises(ConfigError, match="zoom_out") as refused:
        run_command("ensemble", members(run, other), f"paths.cache={facenet_cache}", run_dir=tmp_path / "bad")
    assert "\n" not in str(refused.value)


@pytest.mark.slow
def test_cosine_schedule_decays_the_learning_rate_every_epoch(fake_data, shared_cache, tmp_path):
    run = tmp_path / "run"
    run_command("train", *TINY_CNN, *smoke(fake_data, shared_cache), "train.epochs=3", "train.batch_size=16",
                "train.schedule=cosine", "train.learning_rate=1e-3", "train.early_stopping_patience=5", run_dir=run)
    rates = pd.read_csv(run / "history.csv")["learning_rate"].tolist()
    assert len(rates) == 3 and rates[0] < 1e-3 and rates[0] > rates[1] > rates[2] >= 1e-5
    # debug=smoke runs the few steps eagerly (no tracing), and the log says so.
    assert "train.run_eagerly: training steps run as plain Python" in (run / "app.log").read_text()
