"""Quiet by default: a training raises no library warnings, ``run`` says what it did in plain words
and where (absolute paths) without LiteRT's or TensorFlow's start-up lines, and ``-v`` lets the
libraries speak."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest

from conftest import ROOT, TINY_CNN, main_py, make_fake_utkface, run_command


@pytest.mark.slow
def test_a_training_raises_no_library_warnings(tmp_path):
    """Keras warned on every ``train``: "shuffle=True ... will be ignored" (fit's default shuffle
    with a tf.data.Dataset, which shuffles itself) and "Your input ran out of data" (an epoch of
    unknown length, learned by running the first one dry). Both causes are gone."""
    make_fake_utkface(tmp_path / "UTKFace", 40)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_command("train", "debug=smoke", *TINY_CNN, f"data.path={tmp_path / 'UTKFace'}", "data.limit=40",
                    f"paths.cache={tmp_path / 'cache'}", "train.epochs=2", "train.batch_size=16",
                    run_dir=tmp_path / "run")
    shown = [f"{w.category.__name__}: {w.message} ({w.filename})" for w in caught
             if not issubclass(w.category, DeprecationWarning)]  # Python shows these only with -v
    assert shown == []


@pytest.mark.slow
def test_run_counts_in_words_and_prints_a_relative_output_in_full(tmp_path):
    res = main_py("run", "--img", ROOT / "examples" / "astronaut.jpg", "--no-display", "--output", "preds.json",
                  "--no-annotate", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, check=True)
    lines = res.stdout.splitlines()
    assert "1 image: 1 face" in lines
    assert f"Predictions: {tmp_path / 'preds.json'}" in lines and (tmp_path / "preds.json").is_file()
    log = (tmp_path / "run" / "app.log").read_text()
    assert "summary: images=1 read=1 faces=1" in log and "=None" not in log
    assert "Warning" not in res.stderr and "XNNPACK" not in res.stderr, res.stderr
    verbose = main_py("run", "--img", ROOT / "examples" / "astronaut.jpg", "--no-display", "--no-annotate", "-v",
                      f"hydra.run.dir={tmp_path / 'run_v'}", cwd=tmp_path, check=True)
    assert "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." in verbose.stderr  # LiteRT's own line


def test_only_the_known_native_startup_line_is_dropped():
    """What native code writes to stderr meanwhile is passed on; the line is dropped once only."""
    code = ("import os; from faceattr.verbosity import native_startup_lines_dropped as quiet\n"
            "line = b'INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n'\n"
            "with quiet('lib'): os.write(2, line + b'E0001 a real problem\\n')\n"
            "with quiet('lib'): os.write(2, line)\n")
    env = {k: v for k, v in os.environ.items() if k != "FACEATTR_VERBOSE"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT / "src", env=env)
    assert res.stderr == "E0001 a real problem\nINFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"


def test_counts_are_said_in_the_singular_or_the_plural():
    from faceattr.inference.outputs import counted

    assert [counted(n, "frame") for n in (0, 1, 2)] == ["0 frames", "1 frame", "2 frames"]
    assert counted(1, "person", "people") == "1 person" and counted(3, "person", "people") == "3 people"


def _warn_from_a_library(verbose: bool) -> subprocess.CompletedProcess:
    """A process set quiet or verbose that then gets a DeprecationWarning raised inside a library."""
    code = ("import warnings; from faceattr.verbosity import set_verbosity; "
            f"set_verbosity({verbose}); import os; print(os.environ['TF_CPP_MIN_LOG_LEVEL']); "
            "warnings.warn_explicit('old API', DeprecationWarning, 'lib.py', 1, module='somelib')")
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS")}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=ROOT / "src", env=env)


def test_verbose_shows_what_the_libraries_say():
    quiet, verbose = _warn_from_a_library(False), _warn_from_a_library(True)
    assert quiet.stdout.strip() == "2" and "old API" not in quiet.stderr
    assert verbose.stdout.strip() == "0" and "DeprecationWarning: old API" in verbose.stderr


def _import_tensorflow(verbose: bool) -> str:
    """stderr of a process set quiet or verbose that then imports TensorFlow."""
    code = f"from faceattr.verbosity import set_verbosity; set_verbosity({verbose}); import keras, tensorflow"
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "FACEATTR_VERBOSE")}
    # TensorFlow turns oneDNN on (and says so) by default only on some CPUs (AVX-512 and newer);
    # asked for, it does on any x86 CPU, so the notice is there to be dropped on every machine.
    env["TF_ENABLE_ONEDNN_OPTS"] = "1"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=ROOT / "src", env=env).stderr


@pytest.mark.slow
def test_tensorflow_starts_without_its_native_notices_unless_verbose():
    """TensorFlow's oneDNN notice and absl's preamble ignore TF_CPP_MIN_LOG_LEVEL; they are
    dropped as TensorFlow is first imported, and shown with -v."""
    quiet, verbose = _import_tensorflow(False), _import_tensorflow(True)
    assert "oneDNN custom operations are on" in verbose and "absl::InitializeLog" in verbose
    assert "oneDNN" not in quiet and "absl::InitializeLog" not in quiet, quiet
