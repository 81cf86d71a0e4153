"""The command-line contract: flags map onto Hydra overrides, Hydra's own features work, and
user errors are one line with a non-zero exit. These run ``python src/main.py`` in a subprocess
(conftest's ``main_py``), as a user does; all of them stop before any command's work."""

from __future__ import annotations

import pytest

from conftest import ROOT, main_py
from faceattr.cli import _flag_parser, flags_to_overrides
from faceattr.commands import COMMANDS
from faceattr.commands.spec import UsageError


def test_flags_map_to_overrides():
    assert flags_to_overrides("train", ["--model_type", "cnn", "--eval", "--data_path", "d/x.tar.gz"]) == [
        "model=cnn", "data.path='d/x.tar.gz'", "train.eval=true"]
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


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_help_shows_its_flags_examples_and_the_config_groups(command):
    """``COMMAND --help`` exits 0 even where the command's own arguments are missing (``run`` needs
    --img or --video, ``promote`` a folder), and shows that command's flags and examples, then the
    config groups in one line each; the composed config and Hydra's generic page are not printed."""
    res = main_py(command, "--help")
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    text = res.stdout
    assert text.startswith(f"usage: python src/main.py {command} ")
    for flag in (opt for action in _flag_parser(command)._actions for opt in action.option_strings):
        assert flag in text, flag
    examples = [line.strip() for line in text.split("examples:\n", 1)[1].split("\n\n", 1)[0].splitlines()]
    commands = [line for line in examples if not line.startswith("#")]
    assert commands and all(line.startswith(f"python src/main.py {command}") for line in commands), examples
    assert text.index("examples:") < text.index("flags:") < text.index("config groups")
    assert "model: cnn, facenet, normal" in text and "rebalance: none, oversample, weights" in text
    assert "hydra/launcher: parallel, slurm" in text
    assert f"{command} --cfg job" in text  # the full config, one flag away
    assert "powered by Hydra" not in text and "== Config ==" not in text
    assert len(text.splitlines()) < 70


@pytest.mark.slow
def test_help_goes_before_the_checks_of_a_command_line():
    """A flag without its value or a bad override does not stop --help."""
    for args in (["run", "--img", "--help"], ["run", "--help", "no_such_key=1"], ["ensemble", "only/one", "-h"]):
        res = main_py(*args)
        assert res.returncode == 0 and "examples:" in res.stdout, (args, res.stderr)


@pytest.mark.slow
def test_cfg_job_shows_composed_config_with_flag_overrides():
    res = main_py("train", "--model_type", "cnn", "--cfg", "job", "train.epochs=3", "data.limit=50")
    assert res.returncode == 0, res.stderr
    assert "name: cnn" in res.stdout and "epochs: 3" in res.stdout and "limit: 50" in res.stdout
    assert "command: train" in res.stdout


@pytest.mark.slow
def test_the_cnn_familys_former_name_is_still_a_model_type():
    """``--model-type normal`` / ``--model_type normal`` (the CNN family's name before ``cnn``) is
    accepted and composes the CNN."""
    assert flags_to_overrides("evaluate", ["--model-type", "normal"]) == ["model=normal"]
    assert flags_to_overrides("evaluate", ["--model_type", "normal"]) == ["model=normal"]
    assert flags_to_overrides("distill", []) == ["model=cnn"]  # the default student
    res = main_py("train", "--model_type", "normal", "--cfg", "job", "train.epochs=3")
    assert res.returncode == 0, res.stderr
    assert "name: cnn" in res.stdout and "convs_per_stage" in res.stdout


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

    from faceattr.config import canonical_family, compose_config

    cfg = compose_config(["command=train", f"experiment={experiment}"])
    assert cfg.model.name == canonical_family(experiment.split("_")[0])  # normal_deep: the CNN's former name
    assert cfg.train.eval is True and cfg.data.limit is None  # shipped runs use all data and report test
    OmegaConf.to_container(cfg.train, resolve=True, throw_on_missing=False)


# ------------------------------------------------------------------ flag spelling, quoting, the table

SPELLINGS = [
    ("train", ["--model-type", "normal", "--eval", "--data-path", "d/x.tar.gz"],
     ["--model_type", "normal", "--eval", "--data_path", "d/x.tar.gz"]),
    ("evaluate", ["--model-path=a b", "--data-path", "d", "--labels", "l"],
     ["--model_path=a b", "--data_path", "d", "--labels", "l"]),
    ("run", ["--img", "a.jpg", "--model-type", "facenet", "--model-path", "m_1", "--save-faces"],
     ["--img", "a.jpg", "--model_type", "facenet", "--model_path", "m_1", "--save_faces"]),
    ("calibrate", ["--model-path", "m", "--data-path", "d"], ["--model_path", "m", "--data_path", "d"]),
    ("serve", ["--model-type", "normal"], ["--model_type", "normal"]),
    ("distill", ["--model-type", "facenet", "--teacher", "t"], ["--model_type", "facenet", "--teacher", "t"]),
    ("export", ["m", "--model-type", "normal"], ["m", "--model_type", "normal"]),
    ("stats", ["--data-path", "x_y"], ["--data_path", "x_y"]),
]


@pytest.mark.parametrize("command,hyphens,underscores", SPELLINGS)
def test_both_flag_spellings_give_the_same_overrides(command, hyphens, underscores):
    """``--model-path`` is the spelling; ``--model_path`` (the older one) still means the same,
    and a value holding ``_`` is left as it is."""
    overrides = flags_to_overrides(command, hyphens)
    assert overrides and overrides == flags_to_overrides(command, underscores)
    assert not any("-" in o.split("=", 1)[0] for o in overrides)  # config keys, not flags


def test_help_shows_only_the_hyphen_spelling():
    for command in COMMANDS:
        options = [opt for action in _flag_parser(command)._actions for opt in action.option_strings]
        assert not [o for o in options if "_" in o], (command, options)
    res = main_py("evaluate", "--help")
    assert "--model-path" in res.stdout and "--model_path" not in res.stdout and "--data_path" not in res.stdout


QUOTED = ["plain/path.jpg", "a b,c [d].jpg", "it's", "a${x}b", "${oc.env:HOME}", "a\\b", "trailing\\",
          "x\\'y", "\\${z}", "ä ö", "12", "1e3", "true", "null", "nan"]


@pytest.mark.parametrize("value", QUOTED)
def test_one_quoting_reads_back_literally_for_the_cli_the_app_and_the_web_jobs(value):
    """``faceattr.overrides.quote`` is the quoting of all three (the CLI's flags, the command
    lines the app prints, the web app's retraining job): whatever the text, Hydra reads back the
    same text, and a value too plain to need quotes is left bare only where asked."""
    from faceattr.config import compose_config
    from faceattr.overrides import quote

    for quoted in (quote(value), quote(value, bare_when_plain=True)):
        cfg = compose_config([f"model_path={quoted}", "command=run"])
        assert cfg.model_path == value, (value, quoted)
    assert quote(None) == "null" and quote(True) == "true" and quote(3) == "3" and quote(0.5) == "0.5"
    assert quote("outputs/a-b", bare_when_plain=True) == "outputs/a-b" and quote("outputs/a-b") == "'outputs/a-b'"


def _doc_command_module() -> str:
    """The ``where`` command module of docs/commands.md's walk-through, as the page shows it."""
    text = (ROOT / "docs" / "commands.md").read_text()
    after = text.split("`src/faceattr/commands/where.py`", 1)[1]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.fixture
def where_command(tmp_path, monkeypatch):
    """docs/commands.md's ``where`` module written as a module, and its row added to the table."""
    import importlib

    from faceattr import config

    (tmp_path / "where_command.py").write_text(_doc_command_module())
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("where_command")
    monkeypatch.setitem(COMMANDS, "where", module.COMMAND)
    yield module.COMMAND
    config.register(command_names=[n for n in config.COMMAND_NAMES if n != "where"])


@pytest.mark.slow
def test_a_command_added_to_the_table_is_reachable_everywhere(where_command, tmp_path, capsys):
    """One module plus one table row: the CLI parses its flags (either spelling), the overview and
    ``where --help`` show it, the schema accepts ``command=where``, and the Hydra app runs its
    handler in a run folder."""
    from conftest import cli
    from faceattr.cli import main
    from faceattr.config import compose_config
    from faceattr.errors import ConfigError
    from faceattr.models.info import ModelInfo, write_info

    model_dir = tmp_path / "my model"
    model_dir.mkdir()
    write_info(model_dir, ModelInfo("cnn", 32))
    assert flags_to_overrides("where", ["--model_path", str(model_dir)]) == [f"model_path='{model_dir}'"]

    assert main(["--help"]) == 0
    assert "  where " in capsys.readouterr().out
    assert main(["where", "--help"]) == 0
    text = capsys.readouterr().out
    assert where_command.summary in text and "where --model-type cnn" in text and "--model-path" in text

    run_dir = tmp_path / "run"
    assert cli("where", "--model_path", model_dir, f"hydra.run.dir={run_dir}") == 0
    out = capsys.readouterr().out
    assert f"{model_dir}: a cnn model for 32 px faces" in out and f"Results written to {run_dir}" in out
    assert "command: where" in (run_dir / ".hydra" / "config.yaml").read_text()
    assert compose_config(["command=where"]).command == "where"  # the schema's choices come from the table
    with pytest.raises(ConfigError, match=r"command='nope' is not allowed: expected one of run, .*where"):
        compose_config(["command=nope"])
