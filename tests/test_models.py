"""Model builders: the from-scratch CNN's shape settings."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf

from faceattr.errors import ConfigError
from faceattr.models.cnn import build_cnn

HEADS = {"hidden_units": [8], "dropout": 0.0, "age_loss": "huber", "huber_delta": 5.0, "age_mode": "regression",
         "loss_weights": {"age": 0.1, "gender": 1.0, "race": 1.0}}


def cnn_cfg(**overrides):
    return OmegaConf.create({"name": "normal", "input_size": 32, "filters": [4, 8, 16], "convs_per_stage": 1,
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
