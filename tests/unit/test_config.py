"""The configuration schema (faceattr.config): one place for every key's type, default and range.

A bad value is one line naming the key, the value and what is allowed, exit code 2, before any
data is touched; library code fills partial settings from the schema, never from a default of
its own.
"""

from __future__ import annotations

import re

import pytest
from omegaconf import OmegaConf

from conftest import ROOT, cli
from faceattr.config import (
    AugmentConfig,
    DetectorConfig,
    compose_config,
    settings,
    validate,
)
from faceattr.errors import ConfigError


@pytest.mark.parametrize("command,override,expected", [
    ("train", "train.epochs=abc", ["train.epochs", "abc", "whole number"]),
    ("train", "train.epochs=-1", ["train.epochs", "-1", ">= 1"]),
    ("train", "train.batch_size=0", ["train.batch_size", "0", ">= 1"]),
    ("train", "train.schedule=linear", ["train.schedule", "linear", "plateau, cosine"]),
    ("train", "data.split.train=0.9", ["data.split", "1.2"]),
    ("run", "run.batch_size=abc", ["run.batch_size", "abc", "whole number"]),
    ("run", "detector=foo", ["detector=foo", "haar, mtcnn, none"]),
    ("run", "detector.min_confidence=1.5", ["detector.min_confidence", "1.5", "<= 1"]),
    ("run", "run.tracker.window=0", ["run.tracker.window", "0", ">= 1"]),
    ("evaluate", "evaluation.split=train", ["evaluation.split", "train", "test, val"]),
    ("train", "model.heads.age_loss=l1", ["model.heads.age_loss", "l1", "mae, huber, mse"]),
])
def test_bad_values_are_one_line_before_any_data_is_touched(tmp_path, monkeypatch, capsys, command, override,
                                                           expected):
    """The CLI's entry point in this process (conftest's ``cli``); test_cli runs the same kind of
    error through a real subprocess."""
    archive = tmp_path / "never-read.tar.gz"
    archive.write_bytes(b"not an archive")  # reading it would fail with another message
    extract = tmp_path / "extract"
    args = [command, override, f"data.path={archive}", f"data.extract_dir={extract}"]
    if command == "run":
        args[1:1] = ["--img", str(ROOT / "examples" / "astronaut.jpg"), "--no-display"]
    monkeypatch.chdir(tmp_path)  # where Hydra would create outputs/
    assert cli(*args) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: configuration:"), err
    assert all(word in lines[0] for word in expected), lines[0]
    assert "Traceback" not in err
    assert not extract.exists() and not (tmp_path / "outputs").exists()


def test_every_composed_key_is_in_the_schema_and_checked():
    cfg = compose_config(["command=train", "model=cnn"])
    assert OmegaConf.is_config(cfg) and OmegaConf.get_type(cfg.train).__name__ == "TrainConfig"
    assert OmegaConf.get_type(cfg.model).__name__ == "CNNConfig"
    with pytest.raises(ConfigError, match="train.epochz"):
        compose_config(["command=train", "train.epochz=3"])
    cfg.train.epochs = 0  # a value set in code after composing is caught by validate too
    with pytest.raises(ConfigError, match=r"train.epochs=0 is not allowed"):
        validate(cfg)


def test_model_family_keys_belong_to_their_family():
    with pytest.raises(ConfigError, match="zoom_out"):
        compose_config(["command=train", "model=cnn", "model.zoom_out=1.1"])
    with pytest.raises(ConfigError, match="convs_per_stage"):
        compose_config(["command=train", "model=cnn", "model.convs_per_stage=[1,2]"])  # 4 stages


def test_the_cnn_familys_former_name_composes_as_cnn():
    """``model=normal`` (conf/model/normal.yaml, the alias) is ``model=cnn``: same node, name cnn;
    experiment names that say normal keep theirs."""
    from faceattr.config import model_settings

    old = compose_config(["command=train", "model=normal", "model.input_size=32"])
    new = compose_config(["command=train", "model=cnn", "model.input_size=32"])
    assert old.model.name == "cnn" and OmegaConf.get_type(old.model).__name__ == "CNNConfig"
    assert OmegaConf.to_container(old.model) == OmegaConf.to_container(new.model)
    assert compose_config(["command=train", "experiment=normal_deep"]).model.name == "cnn"
    # A model config stored under the old name (model_info.json's trained_with) is the CNN's.
    assert model_settings({"name": "normal", "filters": [8, 16]}).name == "cnn"
    with pytest.raises(ConfigError, match=r"model.name='resnet' is not allowed: expected one of facenet, cnn"):
        model_settings({"name": "resnet"})


def test_partial_settings_are_filled_from_the_schema_and_checked():
    augment = settings(AugmentConfig, {"noise": 0.1})
    assert augment.noise == 0.1 and augment.rotation_deg == 0.0 and augment.flip is False
    detector = settings(DetectorConfig, {"name": "haar"})
    assert detector.scale_factor == 1.1 and detector.video.name is None
    with pytest.raises(ConfigError, match=r"detector.name='dlib'"):
        settings(DetectorConfig, {"name": "dlib"}, "detector.")
    with pytest.raises(ConfigError, match="blurr"):
        settings(AugmentConfig, {"blurr": 0.1})


def test_the_video_block_overrides_only_what_it_sets():
    from faceattr.inference.detectors import detector_settings

    cfg = compose_config(["command=run"])
    still, video = detector_settings(cfg.detector), detector_settings(cfg.detector, video=True)
    assert still["name"] == "mtcnn" and still["align"] is True
    assert video["name"] == "blazeface" and video["min_confidence"] == 0.5 and video["margin"] == 0.02
    assert video["align"] is True and still["min_confidence"] == 0.8
    assert video["max_side"] == still["max_side"]  # not set in the video block: the detector's own


def test_code_reads_config_values_without_defaults_of_its_own():
    """No ``cfg.<node>.get(key, default)`` (or ``_cfg(..., default)`` helper) outside the schema."""
    pattern = re.compile(r"cfg(\.\w+)*\.get\(\s*[\"']\w+[\"']\s*,")
    offenders = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
                 for path in sorted((ROOT / "src" / "faceattr").rglob("*.py")) if path.name != "config.py"
                 for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert not offenders, "\n".join(offenders)
