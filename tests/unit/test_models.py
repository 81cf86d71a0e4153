"""Model builders: the from-scratch CNN's shape settings; the CNN family saved, loaded and
averaged through the model-family registry."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from faceattr.errors import ConfigError
from faceattr.models.cnn import build_cnn

HEADS = {"hidden_units": [8], "dropout": 0.0, "age_loss": "huber", "huber_delta": 5.0, "age_mode": "regression",
         "loss_weights": {"age": 0.1, "gender": 1.0, "race": 1.0}}


def cnn_cfg(**overrides):
    return OmegaConf.create({"name": "cnn", "input_size": 32, "filters": [4, 8, 16], "convs_per_stage": 1,
                             "residual": True, "dropout": 0.0, "heads": HEADS, **overrides})


def conv_names(model) -> list[str]:
    return [layer.name for layer in model.layers if layer.name.split("_")[-1].startswith("conv")]


@pytest.mark.parametrize("convs, expected", [
    (1, ["stage0_conv0", "stage1_conv0", "stage2_conv0"]),
    (2, ["stage0_conv0", "stage0_conv1", "stage1_conv0", "stage1_conv1", "stage2_conv0", "stage2_conv1"]),
    ([1, 3, 2], ["stage0_conv0", "stage1_conv0", "stage1_conv1", "stage1_conv2", "stage2_conv0", "stage2_conv1"]),
])
def test_convs_per_stage_is_one_count_or_one_per_stage(convs, expected):
    model = build_cnn(cnn_cfg(convs_per_stage=convs))
    assert conv_names(model) == expected
    out = model.predict(np.zeros((2, 32, 32, 3), np.float32), verbose=0)
    assert out["age"].shape == (2, 1) and out["race"].shape == (2, 5)
    # three stages halve 32 px three times: the last stage works on 4x4 maps
    assert model.get_layer("stage2_pool").output.shape[1:3] == (4, 4)


@pytest.mark.parametrize("convs", [[1, 2], [1, 0, 1]])
def test_convs_per_stage_list_must_match_the_stages(convs):
    with pytest.raises(ConfigError, match="convs_per_stage"):
        build_cnn(cnn_cfg(convs_per_stage=convs))


@pytest.mark.parametrize(("size_in", "size_out"), [(160, 64), (200, 64), (64, 32), (64, 64)])
def test_area_resize_matches_opencv_inter_area(size_in, size_out, tmp_path):
    import cv2
    import keras

    from faceattr.models.layers import AreaResize

    faces = np.random.default_rng(0).uniform(0, 255, (2, size_in, size_in, 3)).astype(np.float32)
    expected = np.stack([cv2.resize(face, (size_out, size_out), interpolation=cv2.INTER_AREA) for face in faces])
    np.testing.assert_allclose(np.asarray(AreaResize(size_out)(faces)), expected, atol=1e-3)
    # It survives a safe-mode save and load inside a model.
    inputs = keras.Input((size_in, size_in, 3))
    model = keras.Model(inputs, AreaResize(size_out)(inputs))
    path = tmp_path / "resize.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True, compile=False)
    np.testing.assert_allclose(loaded.predict_on_batch(faces), expected, atol=1e-3)


def test_area_resize_refuses_to_enlarge():
    from faceattr.models.layers import area_weights

    with pytest.raises(ValueError, match="downscales only"):
        area_weights(32, 64)


def save_cnn_member(model_dir, seed: int, split_csv: str) -> np.ndarray:
    """A tiny CNN saved through its family's trainer into ``model_dir``; returns its outputs on
    ``FACES`` (as stored: int8 kernels, float16 vectors)."""
    import keras

    from faceattr.models.families import family

    keras.utils.set_random_seed(seed)
    trainer = family("cnn").trainer(OmegaConf.create({"model": cnn_cfg()}))
    trainer.save(model_dir, trained_with={"model": OmegaConf.to_container(cnn_cfg())})
    (model_dir / "split.csv").write_text(split_csv)
    return trainer.model.predict_on_batch(FACES)


FACES = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)).astype(np.float32)


def test_the_cnn_family_saves_loads_and_averages_through_the_registry(tmp_path):
    from faceattr.models import io
    from faceattr.models.ensemble import build_ensemble
    from faceattr.models.families import family
    from faceattr.models.info import ModelInfo

    cnn = family("cnn")
    assert (cnn.trainable_file, cnn.input_spec(32).size, cnn.shares_trunk) == ("model.keras", 32, False)
    split = "image,split\na.jpg,train\nb.jpg,test\n"
    outs = [save_cnn_member(tmp_path / f"m{i}", seed=i, split_csv=split) for i in range(2)]
    assert (tmp_path / "m0" / "model.keras").is_file() and ModelInfo.read(tmp_path / "m0").model_type == "cnn"
    loaded = io.load_model(tmp_path / "m0")  # the family's end-to-end model: the CNN itself
    np.testing.assert_allclose(loaded.model.predict_on_batch(FACES)["race"], outs[0]["race"], atol=1e-5)

    cfg = OmegaConf.create({"ensemble": {"members": [str(tmp_path / "m0"), str(tmp_path / "m1")]},
                            "paths": {"cache": str(tmp_path / "cache"), "saved_models": str(tmp_path / "saved")},
                            "export": {"tflite": False}, "promote": False})
    build_ensemble(cfg, tmp_path / "ens")
    mean = io.load_model(tmp_path / "ens" / "model").model.predict_on_batch(FACES)
    for task in ("age", "gender", "race"):
        np.testing.assert_allclose(mean[task], (outs[0][task] + outs[1][task]) / 2, atol=1e-4)
    info = ModelInfo.read(tmp_path / "ens" / "model")
    assert info.model_type == "cnn" and info.ensemble["member_types"] == ["cnn", "cnn"]


def test_a_mean_of_weights_is_one_model_of_the_members_weights_weighted(tmp_path):
    """``ensemble.combine=weights``: one model of the members' architecture whose every weight is
    their weighted mean; per-task weights and members of another architecture are refused."""
    from faceattr.models import io
    from faceattr.models.ensemble import build_ensemble
    from faceattr.models.families import family
    from faceattr.models.info import ModelInfo

    split = "image,split\na.jpg,train\nb.jpg,test\n"
    for i in range(2):
        save_cnn_member(tmp_path / f"m{i}", seed=i, split_csv=split)
    members = [io.load_trainable(tmp_path / d, ModelInfo.read(tmp_path / d)).get_weights() for d in ("m0", "m1")]

    def cfg(*dirs, **ensemble):
        return OmegaConf.create({"ensemble": {"members": [str(tmp_path / d) for d in dirs], "combine": "weights",
                                              **ensemble},
                                 "paths": {"cache": str(tmp_path / "cache"), "saved_models": str(tmp_path / "saved")},
                                 "export": {"tflite": False}, "promote": False})

    build_ensemble(cfg("m0", "m1", weights=[1, 3]), tmp_path / "soup")
    info = ModelInfo.read(tmp_path / "soup" / "model")
    assert info.ensemble["combine"] == "weights" and info.ensemble["weights"] == [0.25, 0.75]
    soup = io.load_trainable(tmp_path / "soup" / "model", info)
    assert len(soup.get_weights()) == len(members[0])  # one model, not two side by side
    for got, a, b in zip(soup.get_weights(), members[0], members[1], strict=True):
        mean = 0.25 * a + 0.75 * b  # stored again: within one int8 step of each channel's largest value
        np.testing.assert_allclose(got, mean, rtol=2e-3, atol=np.abs(mean).max() / 127 + 1e-6)
    assert io.load_model(tmp_path / "soup" / "model").model.predict_on_batch(FACES)["race"].shape == (3, 5)

    with pytest.raises(ConfigError, match="give one list"):
        build_ensemble(cfg("m0", "m1", weights={"race": [1, 3]}), tmp_path / "per_task")
    trainer = family("cnn").trainer(OmegaConf.create({"model": cnn_cfg(filters=[4, 8, 32])}))
    trainer.save(tmp_path / "wide", trained_with={"model": OmegaConf.to_container(cnn_cfg(filters=[4, 8, 32]))})
    (tmp_path / "wide" / "split.csv").write_text(split)
    with pytest.raises(ConfigError, match="wide has another architecture"):
        build_ensemble(cfg("m0", "wide"), tmp_path / "mixed")


def test_a_members_view_is_the_ensemble_with_that_members_outputs_alone(tmp_path):
    """``ensemble.view=K``: the ensemble built with member K's outputs alone (for ``weigh``); its
    model_info says so, ``promote`` refuses it, ``weigh`` names member K's folder for it, and a view
    out of range, with weights or of a mean of weights is refused."""
    from faceattr.errors import ModelError
    from faceattr.evaluation.ensemble_weights import member_model
    from faceattr.models import io
    from faceattr.models.ensemble import build_ensemble
    from faceattr.models.info import ModelInfo
    from faceattr.training.promote import promote

    split = "image,split\na.jpg,train\nb.jpg,test\n"
    outs = [save_cnn_member(tmp_path / f"m{i}", seed=i, split_csv=split) for i in range(2)]

    def cfg(**ensemble):
        return OmegaConf.create({"ensemble": {"members": [str(tmp_path / "m0"), str(tmp_path / "m1")], **ensemble},
                                 "paths": {"cache": str(tmp_path / "cache"), "saved_models": str(tmp_path / "saved")},
                                 "export": {"tflite": False}, "promote": False})

    build_ensemble(cfg(view=1), tmp_path / "view1")
    got = io.load_model(tmp_path / "view1" / "model").model.predict_on_batch(FACES)
    for task in ("age", "gender", "race"):
        np.testing.assert_allclose(got[task], outs[1][task], atol=1e-4)
        assert not np.allclose(got[task], outs[0][task], atol=1e-4)  # the other member's outputs are left out
    info = ModelInfo.read(tmp_path / "view1" / "model")
    assert info.ensemble["view"] == 1 and info.ensemble["weights"] == [0.0, 1.0]
    with pytest.raises(ModelError, match="view of ensemble member 1"):
        promote(tmp_path / "view1" / "model", tmp_path / "saved")
    assert not (tmp_path / "saved").exists()

    evaluated = tmp_path / "eval_view1" / ".hydra"  # an `evaluate` run of the view, as weigh reads it
    evaluated.mkdir(parents=True)
    (evaluated / "config.yaml").write_text(f"model_path: {tmp_path / 'view1' / 'model'}\n")
    assert member_model(tmp_path / "eval_view1") == str(tmp_path / "m1")

    from faceattr.commands.ensemble import handle

    with pytest.raises(ConfigError, match="leave out promote=true"):  # refused before anything is built
        handle(OmegaConf.merge(cfg(view=0), {"promote": True}), tmp_path / "view0")
    assert not (tmp_path / "view0").exists()
    for bad, message in (({"view": 2}, "0 to 1"), ({"view": 0, "weights": [1, 0]}, "leave ensemble.weights out"),
                         ({"view": 0, "combine": "weights"}, "no members to look at")):
        with pytest.raises(ConfigError, match=message):
            build_ensemble(cfg(**bad), tmp_path / "bad")


@pytest.mark.slow
def test_a_folder_saved_as_normal_loads_evaluates_and_averages_as_cnn(tmp_path):
    """A model folder written before the CNN family was named ``cnn`` (``model_type: normal``,
    ``trained_with.model.name: normal``) is a cnn model to every reader; rewriting its
    model_info.json (ensemble, calibrate, export) writes ``cnn``."""
    import json

    from faceattr.config import model_settings
    from faceattr.models import io
    from faceattr.models.ensemble import build_ensemble
    from faceattr.models.info import MODEL_INFO, ModelInfo

    split = "image,split\na.jpg,train\nb.jpg,test\n"
    outs = [save_cnn_member(tmp_path / f"m{i}", seed=i, split_csv=split) for i in range(2)]
    for i in range(2):  # as an older faceattr wrote them
        path = tmp_path / f"m{i}" / MODEL_INFO
        raw = json.loads(path.read_text())
        raw["model_type"], raw["trained_with"]["model"]["name"] = "normal", "normal"
        path.write_text(json.dumps(raw))
    info = ModelInfo.read(tmp_path / "m0")
    assert info.model_type == "cnn" and info.trained_with["model"]["name"] == "normal"  # the record as written
    assert model_settings(info.trained_with["model"]).name == info.model_type  # what evaluate checks
    loaded = io.load_model(tmp_path / "m0")
    np.testing.assert_allclose(loaded.model.predict_on_batch(FACES)["race"], outs[0]["race"], atol=1e-5)

    cfg = OmegaConf.create({"ensemble": {"members": [str(tmp_path / "m0"), str(tmp_path / "m1")]},
                            "paths": {"cache": str(tmp_path / "cache"), "saved_models": str(tmp_path / "saved")},
                            "export": {"tflite": False}, "promote": False})
    build_ensemble(cfg, tmp_path / "ens")
    written = json.loads((tmp_path / "ens" / "model" / MODEL_INFO).read_text())
    assert written["model_type"] == "cnn" and written["ensemble"]["member_types"] == ["cnn", "cnn"]


def test_the_default_model_folder_is_the_familys_or_its_alias_folder(tmp_path):
    """``model_path`` unset: ``saved_model/<model.name>``; a ``saved_model/normal`` promoted
    before the rename is used while no ``saved_model/cnn`` is there."""
    from faceattr.models import io

    cfg = OmegaConf.create({"model_path": None, "model": {"name": "cnn"}, "paths": {"saved_models": str(tmp_path)}})
    assert io.resolve_model_dir(cfg) == tmp_path / "cnn"  # neither there: the family's own name
    (tmp_path / "normal").mkdir()
    assert io.resolve_model_dir(cfg) == tmp_path / "normal"
    (tmp_path / "cnn").mkdir()
    assert io.resolve_model_dir(cfg) == tmp_path / "cnn"
    cfg.model.name = "facenet"
    assert io.resolve_model_dir(cfg) == tmp_path / "facenet"



def test_every_facenet_stack_of_an_ensemble_is_found():
    """FaceNet's trainer freezes and unfreezes the fine-tuned stages of each FaceNet member."""
    import keras

    from faceattr.models.families.facenet import nested_layers

    def member(i: int) -> keras.Model:
        x = keras.Input((4,))
        return keras.Model(x, keras.layers.Dense(2, name="facenet_top")(x), name=f"member_{i}")

    x = keras.Input((4,))
    pair = keras.Model(x, keras.layers.Average()([member(0)(x), member(1)(x)]))
    found = nested_layers(pair, "facenet_top")
    assert len(found) == 2 and found[0] is not found[1]
    assert nested_layers(pair, "block8_1") == []


def test_ensemble_weights_for_every_task_or_per_task():
    """``ensemble.weights``: one list for every task, or a list per task (a task left out is the
    plain mean); each scaled to sum to 1, zeros allowed, a member unused everywhere refused."""
    from faceattr.models.ensemble import member_weights, recorded_weights

    assert member_weights(None, 2) is None
    assert member_weights([2, 2], 2) is None  # equal weights are the plain mean
    every = member_weights([3, 1], 2)
    assert every == {"age": [0.75, 0.25], "gender": [0.75, 0.25], "race": [0.75, 0.25]}
    assert recorded_weights(every) == {"weights": [0.75, 0.25]}
    per_task = member_weights({"gender": [1, 0], "race": [1, 3]}, 2)
    assert per_task == {"gender": [1.0, 0.0], "race": [0.25, 0.75]}
    assert recorded_weights(per_task) == {"weights": {"gender": [1.0, 0.0], "race": [0.25, 0.75]}}
    assert member_weights({"age": [1, 1, 1], "race": [0, 1, 1]}, 3) == {"race": [0.0, 0.5, 0.5]}
    for bad, message in (([1], "one weight >= 0 per member"), ([1, -1], "one weight >= 0"),
                         ([0, 0], "not all 0"), ({"gender": "1,0"}, "give a list of 2 weights"),
                         ({"ethnicity": [1, 0]}, "ethnicity is not a task"),
                         ({"gender": ["a", 1]}, "must be numbers"),
                         ({"age": [1, 0], "gender": [1, 0], "race": [1, 0]}, "member 1 weighs 0 in every task")):
        with pytest.raises(ConfigError, match=message):
            member_weights(bad, 2)
