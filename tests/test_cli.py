"""The command-line contract: flags map onto Hydra overrides, Hydra's own features work, and
user errors are one line with a non-zero exit. These run ``python src/main.py`` in a subprocess
(conftest's ``main_py``), as a user does; all of them stop before any command's work."""

from __future__ import annotations

import pytest

from conftest import ROOT, main_py
from faceattr.cli import UsageError, flags_to_overrides


def test_flags_map_to_overrides():
    assert flags_to_overrides("train", ["--model_type", "normal", "--eval", "--data_path", "d/x.tar.gz"]) == [
        "model=normal", "data.path='d/x.tar.gz'", "train.eval=true"]
    out = flags_to_overrides("run", ["--img", "a b.jpg", "it's.png", "--output", "p.json", "--no-display"])
    assert out == ["run.img=['a b.jpg','it\\'s.png']", "run.output='p.json'", "run.display=false"]
    assert flags_to_overrides("run", ["--video"]) == ["run.video='0'"]
    assert flags_to_overrides("run", ["--img", "a.jpg", "--save-faces"]) == ["run.img=['a.jpg']",
                                                                             "run.save_faces=true"]
    assert flags_to_overrides("run", ["--video", "clip.mp4"]) == ["run.video='clip.mp4'"]
    assert flags_to_overrides("ensemble", ["a/model", "b c"]) == ["ensemble.members=['a/model','b c']"]


@pytest.mark.parametrize("command,args", [("train", ["--img", "x"]), ("run", []), ("stats", ["--eval"]),
                                          ("compare", []), ("run", ["--model_type", "resnet", "--img", "a"]),
                                          ("ensemble", ["only/one"]), ("run", ["--video", "--save-faces"])])
def test_bad_flags_are_usage_errors(command, args):
    with pytest.raises(UsageError):
        flags_to_overrides(command, args)


def test_help_lists_every_command():
    res = main_py("--help")
    assert res.returncode == 0
    for command in ("run", "train", "evaluate", "stats", "compare", "promote"):
        assert f"  {command}" in res.stdout


def test_command_help_shows_flags_and_config_groups():
    res = main_py("train", "--help")
    assert res.returncode == 0
    assert "--model_type" in res.stdout and "--eval" in res.stdout
    for group in ("model: facenet, normal", "rebalance: none, oversample, weights", "detector: haar, mtcnn, none"):
        assert group in res.stdout


def test_cfg_job_shows_composed_config_with_flag_overrides():
    res = main_py("train", "--model_type", "normal", "--cfg", "job", "train.epochs=3", "data.limit=50")
    assert res.returncode == 0, res.stderr
    assert "name: normal" in res.stdout and "epochs: 3" in res.stdout and "limit: 50" in res.stdout
    assert "command: train" in res.stdout


@pytest.mark.parametrize("args,fragment", [
    (["train", "no_such_key=1"], "no_such_key"),
    (["train", "model=resnet"], "model=resnet"),
    (["train", "--bogus"], "--bogus"),
    (["frobnicate"], "frobnicate"),
    (["run", "--img", "missing.jpg", "train.epochs=[1"], "bad override"),
])
def test_user_errors_are_one_line(args, fragment):
    res = main_py(*args)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], res.stderr
    assert "Traceback" not in res.stderr


# A missing dataset (an error raised by a command's own code, not by the config check) is one
# line and exit code 2: test_faults_training.test_an_error_is_printed_once.


@pytest.mark.parametrize("experiment", sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")))
def test_every_experiment_config_composes(experiment):
    """Each named run in conf/experiment composes with the real config tree, passes the schema's
    checks, and trains its model."""
    from omegaconf import OmegaConf

    from faceattr.config import compose_config

    cfg = compose_config(["command=train", f"experiment={experiment}"])
    assert cfg.model.name == experiment.split("_")[0]
    assert cfg.train.eval is True and cfg.data.limit is None  # shipped runs use all data and report test
    OmegaConf.to_container(cfg.train, resolve=True, throw_on_missing=False)
