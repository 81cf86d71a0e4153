"""Fixtures shared by the test files of ``tests/unit`` and ``tests/integration``.

- fake UTKFace folders of tiny random JPEGs (:func:`make_fake_utkface`, ``fake_utkface``, ``fake_data``);
- :func:`run_command`: a command run in this process, as ``python src/main.py`` runs it (the
  config composed by ``faceattr.config.compose_config``, the handler named in
  ``faceattr.commands.COMMANDS``), so a test pays TensorFlow's import once per test session;
  :func:`main_py` runs the real command line in a subprocess, for the tests of the CLI itself;
- trained models shared by the whole test session (``cnn_run``, ``facenet_run``): one smoke-size
  training each, reused by the evaluate, export, ensemble, promote and run tests;
- under pytest-xdist (``-n 2`` in ``pyproject.toml``) the session's folders and models, and the
  costly module-scoped ones, are built once for all workers (:func:`built_once`);
- ``utkface_subset``: a fixed subset of the real archive (``../shared/data/UTKFace.tar.gz``), real
  members repacked as a small ``.tar.gz`` once and kept in pytest's cache folder, with a feature
  cache of its own, so real-data tests are cheap on a fresh clone; skipped without the archive.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import logging
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MAIN = ROOT / "src" / "main.py"
#: The real dataset, one level above the project (skip tests that need it when absent).
SHARED_TARBALL = ROOT.parent / "shared/data/UTKFace.tar.gz"
#: A CNN small enough to train in seconds on 32 px faces (the CNN family's keys).
TINY_CNN = ("model=cnn", "model.input_size=32", "model.filters=[8,16]", "model.heads.hidden_units=[16]")
#: Hydra's job log format (app.log in every run folder).
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"


def make_fake_utkface(folder: Path, n: int, seed: int = 0, size: int = 32) -> list[Path]:
    """Write ``n`` random-noise JPEGs (``size`` x ``size``) named like UTKFace into ``folder``.

    Labels cycle so every gender, race and age bin occurs: image ``i`` has age
    ``AGES[i % len(AGES)]`` years, gender ``i % 2`` and race ``i % 5``. Every image has
    different bytes. Returns the paths, in order.
    """
    ages = (1, 5, 14, 23, 27, 35, 45, 58, 66, 85)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        path = folder / f"{ages[i % len(ages)]}_{i % 2}_{i % 5}_20170101{i:09d}.jpg.chip.jpg"
        assert cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


@pytest.fixture
def fake_utkface(tmp_path: Path) -> Path:
    """A folder ``UTKFace/`` of 60 fake UTKFace images (see :func:`make_fake_utkface`)."""
    folder = tmp_path / "UTKFace"
    make_fake_utkface(folder, 60)
    return folder


@contextlib.contextmanager
def locked(lock_file: Path) -> Iterator[None]:
    """Hold an ``fcntl`` lock on ``lock_file`` (made with its folder if missing): one worker, or
    one test session, builds at a time."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """A folder ``name`` that ``build(folder)`` fills once per test session, for every worker.

    The folder is ``<basetemp>/<name>``, or under pytest-xdist ``<basetemp>/../<name>``, shared by
    the session's workers: the first caller builds it under a file lock while the others wait,
    later calls (another worker, a module fixture set up again) find it built. A build that
    failed is tried again by the next caller.
    """
    base = tmp_path_factory.getbasetemp()
    root = base.parent if "PYTEST_XDIST_WORKER" in os.environ else base  # above each worker's own folder
    folder, done = root / name, root / name / ".built"
    with locked(root / f"{name}.lock"):  # beside the folder, which a failed build leaves to be redone
        if not done.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def fake_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder ``UTKFace/`` of 80 fake UTKFace images shared by the session (never modify it)."""
    return built_once(tmp_path_factory, "fake", lambda folder: make_fake_utkface(folder / "UTKFace", 80)) / "UTKFace"


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` first, then the rest, each part in collection order: under
    pytest-xdist the workers start on the long work, so no long test is left running alone at
    the end while the other worker idles."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


# ----------------------------------------------------------------------------- commands


def handler(command: str) -> Any:
    """The function ``python src/main.py <command>`` calls, found in the commands table (``faceattr.commands``)."""
    from faceattr.commands import COMMANDS

    return COMMANDS[command].handler


@contextlib.contextmanager
def app_log(run_dir: Path) -> Iterator[Path]:
    """Log INFO and up into ``run_dir/app.log`` as Hydra's job logging does, for one command."""
    root = logging.getLogger()
    file_handler = logging.FileHandler(run_dir / "app.log")
    file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
    file_handler.setLevel(logging.INFO)
    level = root.level
    root.addHandler(file_handler)
    root.setLevel(logging.INFO)
    try:
        yield run_dir / "app.log"
    finally:
        root.removeHandler(file_handler)
        file_handler.close()
        root.setLevel(level)


def run_command(command: str, *overrides: str, run_dir: Path) -> Any:
    """Run ``command`` with ``overrides`` (``key=value``, Hydra's grammar) in this process.

    What ``python src/main.py <command> ... hydra.run.dir=<run_dir>`` does, minus the CLI's
    flag mapping and error printing: compose and check the config, record the overrides in
    ``.hydra/overrides.yaml`` (sweep summaries read them), log into ``app.log``, call the
    command's handler. A typed error propagates (``pytest.raises``); returns the handler's result.
    """
    from faceattr.config import compose_config

    cfg = compose_config([*overrides, f"command={command}"])
    run_dir = Path(run_dir)
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*overrides, f"command={command}"]))
    if "keras" in sys.modules:  # a fresh process starts with no models or layer names in use
        import keras

        keras.backend.clear_session(free_memory=False)  # a forced full gc.collect costs ~0.6 s a command
    with app_log(run_dir):
        return handler(command)(cfg, run_dir)


def main_py(*args: Any, timeout: int = 600, cwd: Path = ROOT, check: bool = False,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python src/main.py ARGS`` in a subprocess (the CLI contract: exit codes, one-line errors).

    ``check``: assert exit code 0, showing the output's tail otherwise.
    """
    res = subprocess.run([sys.executable, str(MAIN), *map(str, args)], capture_output=True, text=True,
                         timeout=timeout, cwd=cwd, env=env)
    if check:
        assert res.returncode == 0, f"{args}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def save_tiny_cnn(model_dir: Path, size: int) -> Path:
    """A real (untrained) two-stage CNN saved as a model folder at ``model_dir`` for ``size`` px faces."""
    from omegaconf import OmegaConf

    from faceattr.models.cnn import build_cnn
    from faceattr.models.info import ModelInfo
    from faceattr.models.io import save_model

    heads_cfg = {"hidden_units": [8], "dropout": 0.0, "age_loss": "huber", "huber_delta": 5.0,
                 "age_mode": "regression", "loss_weights": {"age": 0.1, "gender": 1.0, "race": 1.0}}
    cfg = OmegaConf.create({"name": "cnn", "input_size": size, "filters": [8, 16], "convs_per_stage": 1,
                            "residual": True, "dropout": 0.0, "heads": heads_cfg})
    save_model(model_dir, ModelInfo(model_type="cnn", input_size=size), build_cnn(cfg))
    return model_dir


def default_sigint() -> None:
    """Ctrl-C as a terminal delivers it, for ``subprocess.Popen(preexec_fn=...)``: a pytest-xdist
    worker ignores SIGINT, and a child would inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def one_error_line(res: subprocess.CompletedProcess) -> str:
    """The CLI contract for a command that cannot go on: exit code 2, no traceback, and exactly one
    ``error:`` line, which is returned."""
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert res.returncode == 2, (res.returncode, res.stderr[-3000:])
    lines = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, res.stderr[-3000:]
    return lines[0]


def cli(*args: Any) -> int:
    """``python src/main.py ARGS`` in this process (``faceattr.cli.main``): Hydra's own machinery
    (``-m`` sweeps, sweepers, callbacks) without a new interpreter. Returns the exit code.

    Hydra configures logging for each job; the root logger's handlers and level and ``sys.argv``
    are put back afterwards.
    """
    from faceattr.cli import main

    root = logging.getLogger()
    handlers, level, argv = root.handlers[:], root.level, sys.argv[:]
    absl_logging = sys.modules.get("absl.logging")
    if absl_logging is not None:
        # Hydra's logging setup closes every live handler; absl's closes the stream it was made
        # with unless that is the current sys.stderr, and under capsys that stream is pytest's own.
        absl_logging.get_absl_handler().python_handler.stream = sys.__stderr__
    try:
        return main([str(a) for a in args])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    finally:
        for extra in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(extra)
            extra.close()
        for kept in handlers:
            if kept not in root.handlers:
                root.addHandler(kept)
        root.setLevel(level)
        sys.argv = argv


def smoke(data: Path, cache: Path, *more: str) -> list[str]:
    """Overrides of a smoke-size run (``debug=smoke``) on ``data`` with ``cache`` as ``paths.cache``."""
    return ["debug=smoke", f"data.path={data}", f"paths.cache={cache}", *more]


# ----------------------------------------------------------------------------- caches


def kept_folder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """``.pytest_cache/d/<name>`` (kept between test sessions), or a temporary folder with ``-p no:cacheprovider``."""
    cache = getattr(request.config, "cache", None)
    return Path(cache.mkdir(name)) if cache is not None else tmp_path_factory.mktemp(name)


@pytest.fixture(scope="session")
def facenet_weights(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding FaceNet's weights converted from the packaged graph: converted once, kept in
    pytest's cache folder (the file name carries the graph's hash; a damaged file is rebuilt)."""
    from faceattr.models import facenet_graph as fg

    folder = kept_folder(request, tmp_path_factory, "facenet_weights")
    with locked(folder / ".lock"):  # the first worker converts; the other then finds the file
        fg.load_facenet_weights(folder)
    return folder


def new_cache(folder: Path, facenet_weights: Path) -> Path:
    """A fresh ``paths.cache`` folder that starts with the session's converted FaceNet weights.

    Its feature cache and extracted archives are its own (counts of extracted features are
    exact); only the weights file, identical in every cache, is linked in.
    """
    (folder / "facenet").mkdir(parents=True, exist_ok=True)
    for path in facenet_weights.glob("*.npz"):
        target = folder / "facenet" / path.name
        if target.is_symlink() and not target.exists():  # left by a session whose weights are gone
            target.unlink()
        if not target.exists():
            target.symlink_to(path)
    return folder


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``paths.cache`` of the session's CNN runs (extracted archives, hash caches)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def private_cache(tmp_path: Path, facenet_weights: Path) -> Path:
    """A ``paths.cache`` of this test alone (with the converted weights)."""
    return new_cache(tmp_path / "cache", facenet_weights)


# ----------------------------------------------------------------------------- shared runs


@pytest.fixture(scope="session")
def cnn_run(tmp_path_factory: pytest.TempPathFactory, fake_data: Path, shared_cache: Path) -> Path:
    """A training run folder: the tiny CNN, smoke size (2 epochs) on ``fake_data``, evaluated on its
    test split, exported to TensorFlow Lite (float32). Its steps are traced into a graph, as a real
    training's are (``debug=smoke`` runs them eagerly). Read it, never write into it."""
    return built_once(tmp_path_factory, "cnn_run", lambda run: run_command(
        "train", *TINY_CNN, *smoke(fake_data, shared_cache), "train.eval=true", "export.tflite=true",
        "export.quantization=float32", "train.run_eagerly=false", run_dir=run))


@pytest.fixture(scope="session")
def facenet_run(tmp_path_factory: pytest.TempPathFactory, fake_data: Path, facenet_weights: Path) -> Path:
    """A training run folder: FaceNet heads (frozen backbone, pooled features, the default
    framing), smoke size on ``fake_data``. Its ``paths.cache`` is ``<run>/../cache``, fresh
    before this training: it holds the features of ``fake_data`` for later runs."""
    def train(base: Path) -> None:
        run_command("train", "model=facenet", *smoke(fake_data, new_cache(base / "cache", facenet_weights)),
                    run_dir=base / "run")

    return built_once(tmp_path_factory, "facenet_run", train) / "run"


@pytest.fixture(scope="session")
def facenet_cache(facenet_run: Path) -> Path:
    """The ``paths.cache`` ``facenet_run`` filled: FaceNet features of ``fake_data``."""
    return facenet_run.parent / "cache"


# ----------------------------------------------------------------------------- real data

#: Bump when the subset's recipe changes (the cached copy is then rebuilt).
SUBSET_VERSION = 1
#: Every SUBSET_STRIDE-th image of the archive, plus the release's flaws (see build_subset).
SUBSET_STRIDE = 20
SUBSET_DUPLICATE_GROUPS = 12  # byte-identical groups under the same labels
SUBSET_CONFLICT_GROUPS = 6  # byte-identical groups under conflicting labels


def build_subset(archive: Path, target: Path, stride: int = SUBSET_STRIDE) -> dict[str, int]:
    """Repack a fixed subset of the real UTKFace archive as ``target`` (.tar.gz), members unchanged.

    Kept, in archive order: every ``stride``-th image, every member whose name the release got
    wrong (too few fields, a space), and all copies of the first byte-identical groups, some
    under one set of labels and some under conflicting labels. One pass over the archive (its
    90 MB are held in memory meanwhile). Returns counts of what was kept.
    """
    from faceattr.data.utkface import Labels, parse_name

    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    groups: dict[str, list[str]] = {}
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            data = tar.extractfile(member).read() if member.isfile() else None
            members.append((member, data))
            if data is not None:
                groups.setdefault(hashlib.sha1(data).hexdigest(), []).append(member.name)
    same, conflicting = [], []
    for names in groups.values():
        labels = {parse_name(Path(n).name) for n in names}
        if len(names) > 1 and all(isinstance(x, Labels) for x in labels):
            (same if len(labels) == 1 else conflicting).append(names)
    copies = {n for names in same[:SUBSET_DUPLICATE_GROUPS] + conflicting[:SUBSET_CONFLICT_GROUPS] for n in names}
    counts = {"stride": 0, "flawed_names": 0, "copies": len(copies)}
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)  # another test session may be building it at the same time: each writes its own file
    with tarfile.open(tmp, "w:gz", compresslevel=1) as out:
        index = 0
        for member, data in members:
            if data is None:
                if member.isdir():
                    out.addfile(member)
                continue
            name = Path(member.name).name
            flawed = not isinstance(parse_name(name), Labels) or " " in name
            chosen = index % stride == 0
            index += 1
            if chosen or flawed or member.name in copies:
                counts["stride"] += chosen
                counts["flawed_names"] += flawed
                out.addfile(member, io.BytesIO(data))
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
    return counts


@pytest.fixture(scope="session")
def utkface_subset(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``UTKFace-subset.tar.gz``: about 1,050 real members of the shared archive (:func:`build_subset`).

    Built once and kept in pytest's cache folder (``.pytest_cache/d/utkface_subset``), keyed by
    the archive's size and time and the recipe; beside it, ``cache/`` serves as the
    ``paths.cache`` of real-data runs (extraction and FaceNet features of the subset only).
    Skips the test when the archive is absent.
    """
    if not SHARED_TARBALL.is_file():
        pytest.skip(f"real dataset absent: {SHARED_TARBALL}")
    stat = SHARED_TARBALL.stat()
    key = f"v{SUBSET_VERSION}-{stat.st_size}-{stat.st_mtime_ns}"
    folder = kept_folder(request, tmp_path_factory, "utkface_subset") / key
    target = folder / "UTKFace-subset.tar.gz"
    with locked(folder / ".lock"):  # the first worker repacks it; the other then finds it
        if not target.is_file():
            build_subset(SHARED_TARBALL, target)
    return target


@pytest.fixture(scope="session")
def subset_cache(utkface_subset: Path, facenet_weights: Path) -> Path:
    """The ``paths.cache`` of real-data runs, kept with the subset (features computed once)."""
    return new_cache(utkface_subset.parent / "cache", facenet_weights)
