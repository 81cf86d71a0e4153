"""What a model folder holds, written and read without knowing its family.

``model_info.json`` (:class:`ModelInfo`, checked against ``INFO_SCHEMA`` when read) and Keras
files loaded with ``safe_mode=True``, their kernels stored as int8 and other weights as float16
(``models.weight_storage``: the served export is int8 anyway) and loaded into the model's
float32 variables.
Which file a family's training produces, and how it becomes an end-to-end model, is the
family's business (``models.families``); ``models.io`` puts the two together.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from faceattr import writes
from faceattr.config import canonical_family, family_entry, family_names
from faceattr.errors import ModelError
from faceattr.labels import AGE_UNIT, GENDERS, RACES
from faceattr.landmarks import LANDMARK_NAMES
from faceattr.models.weight_storage import as_stored, dequantized_copy, has_int8_kernels, store_weights

if TYPE_CHECKING:
    import keras

log = logging.getLogger(__name__)

MODEL_INFO = "model_info.json"
#: The layout of ``model_info.json`` this code writes; a folder written with a newer one is refused.
FORMAT_VERSION = 1
MAX_SHOWN = 60  # characters of a bad value quoted in an error message


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _is_numbers(v: Any) -> bool:
    return isinstance(v, list) and all(map(_is_number, v))


def _is_names(v: Any) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(isinstance(n, str) and n for n in v)


def _is_file_name(v: Any) -> bool:
    """A plain file name inside the model folder (no folder part, nothing outside it)."""
    return isinstance(v, str) and v not in ("", ".", "..") and "/" not in v and "\\" not in v


def _is_points(v: Any) -> bool:
    return (isinstance(v, list) and len(v) == len(LANDMARK_NAMES)
            and all(isinstance(p, list) and len(p) == 2 and _is_numbers(p) for p in v))


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


_OBJECT = ("an object or null", _optional(lambda v: isinstance(v, dict)))
#: ``model_info.json``'s schema: key -> (what is expected, check). ``model_type`` and
#: ``input_size`` are required; the others have the defaults of :class:`ModelInfo`.
INFO_SCHEMA: dict[str, tuple[str, Callable[[Any], bool]]] = {
    # A family's name or alias (faceattr.config.MODEL_FAMILIES; one registered at run time too).
    "model_type": (" or ".join(map(repr, family_names())), lambda v: family_entry(v) is not None),
    "input_size": ("a positive whole number of pixels", lambda v: _is_int(v) and v > 0),
    "genders": ("a list of class names", _is_names),
    "races": ("a list of class names", _is_names),
    "age_unit": ("a string", lambda v: isinstance(v, str)),
    "facenet": _OBJECT, "trained_with": _OBJECT, "export": _OBJECT, "ensemble": _OBJECT,
    "chip_template": _OBJECT, "calibration": _OBJECT,
    "format_version": ("a whole number >= 1", lambda v: _is_int(v) and v >= 1),
}
REQUIRED_KEYS = ("model_type", "input_size")
#: Keys inside the objects above that the toolkit reads, checked when present.
NESTED_SCHEMA: dict[str, dict[str, tuple[str, Callable[[Any], bool]]]] = {
    "export": {"tflite": ("a file name inside the model folder", _is_file_name),
               "source_sha256": ("a string or null", _optional(lambda v: isinstance(v, str))),
               "quantization": ("a string or null", _optional(lambda v: isinstance(v, str)))},
    "facenet": {"cut_stage": ("a whole number or null", _optional(_is_int)),
                "features": ("a string", lambda v: isinstance(v, str)),
                "zoom_out": ("a number >= 1", lambda v: _is_number(v) and v >= 1),
                "graph_sha256": ("a string or null", _optional(lambda v: isinstance(v, str)))},
    "calibration": {"race_bias": ("a list of numbers, one per race, or null", _optional(_is_numbers)),
                    "age_map": ("two lists of numbers of one length, or null", _optional(
                        lambda v: isinstance(v, list) and len(v) == 2 and all(map(_is_numbers, v))
                        and len(v[0]) == len(v[1])))},
    "chip_template": {"points": ("one [x, y] pair of numbers per landmark", _is_points),
                      "max_residual": ("a number", _is_number)},
}


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 3] + "..."


def info_problems(raw: Any) -> list[str]:
    """What is wrong with a parsed ``model_info.json`` against ``INFO_SCHEMA``: one entry per
    problem, ``"<key>: expected <what>, got <value>"``; empty when it is sound."""
    if not isinstance(raw, dict):
        return [f"expected a JSON object with {' and '.join(REQUIRED_KEYS)}, got {_shown(raw)}"]
    problems = [f"{key}: missing (expected {INFO_SCHEMA[key][0]})" for key in REQUIRED_KEYS if key not in raw]
    for key, (expected, check) in INFO_SCHEMA.items():
        if key in raw and not check(raw[key]):
            problems.append(f"{key}: expected {expected}, got {_shown(raw[key])}")
        elif isinstance(raw.get(key), dict):
            for sub, (expected, check) in NESTED_SCHEMA.get(key, {}).items():
                if sub in raw[key] and not check(raw[key][sub]):
                    problems.append(f"{key}.{sub}: expected {expected}, got {_shown(raw[key][sub])}")
    return problems


@dataclass
class ModelInfo:
    """What a saved model is; written as ``model_info.json`` beside its weights."""

    model_type: str                      # a family's name: "facenet" | "cnn" (an alias read is its name)
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
            raise ModelError(f"{model_dir}: no such model folder (train one, or check --model-path)")
        path = Path(model_dir) / MODEL_INFO
        if not path.is_file():
            raise ModelError(f"{model_dir}: not a model folder (no {MODEL_INFO})")
        try:
            raw = json.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError:
            raise ModelError(f"{path}: not a text file (binary or corrupt); expected a JSON object") from None
        except json.JSONDecodeError as exc:
            raise ModelError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
        except OSError as exc:
            raise ModelError(f"{path}: cannot be read ({exc.strerror or exc})") from None
        version = raw.get("format_version") if isinstance(raw, dict) else None
        if _is_int(version) and version > FORMAT_VERSION:  # its other keys may mean something else now
            raise ModelError(f"{path}: format_version {version} is newer than this faceattr reads "
                             f"({FORMAT_VERSION}); update faceattr to load this model")
        problems = info_problems(raw)
        if problems:  # all of them in the one line, so a hand edit is fixed in one go
            raise ModelError(f"{path}: " + "; ".join(problems))
        known = {f.name for f in fields(cls)}
        extra = sorted(set(raw) - known)
        if extra:  # written by a newer version: load what we understand
            log.warning("%s: ignoring unknown keys %s", path, ", ".join(extra))
        values = {k: v for k, v in raw.items() if k in known}
        # A folder saved under an older name of its family (model_type "normal") is that family's.
        values["model_type"] = canonical_family(values["model_type"])
        return cls(**values)


def save_keras(model_dir: Path, info: ModelInfo, keras_model: keras.Model, file_name: str) -> Path:
    """Write ``keras_model`` as ``file_name`` (the family's ``trainable_file``: whole CNN, or
    FaceNet's trained top) and ``model_info.json`` into ``model_dir``.

    ``keras_model`` is left holding its weights as stored (``weight_storage.as_stored``), so what
    it predicts afterwards (the evaluation at the end of training) is what the saved model does.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    name = file_name
    keras_model.set_weights([as_stored(w) for w in keras_model.get_weights()])
    # An uncompiled clone carries the weights without the optimizer's state (3x the size).
    clean = keras_model.__class__.from_config(keras_model.get_config())
    clean.set_weights(keras_model.get_weights())
    clean.save(model_dir / name)
    store_weights(model_dir / name)  # a quarter of float32's bytes; the served export is int8 anyway
    write_info(model_dir, info)
    log.info("Saved %s model to %s", info.model_type, model_dir)
    return model_dir


def load_keras_file(path: Path) -> keras.Model:
    if not path.is_file():
        raise ModelError(f"{path}: model weights missing")
    try:  # a .keras file is a zip archive; one cut short has no central directory at its end
        with zipfile.ZipFile(path):
            pass
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise ModelError(f"{path}: damaged or cut short (not a whole .keras archive: {exc}); "
                         "copy or train the model again") from None
    # Refused from the file's config alone, before TensorFlow is imported (no toolkit model has one).
    if lambdas := lambda_layers(path):
        raise ModelError(f"{path}: the model file uses a Lambda layer ({', '.join(lambdas)}), "
                         "which safe loading refuses (it would run Python code stored in the file)")
    import keras  # deferred: Keras imports TensorFlow (seconds); a model folder is read without it

    # Register every custom layer safe mode may meet (a file names them, but loads no module):
    # the heads' AgeExpectation, FaceNet's prewhitening and scaling, the ensemble's AreaResize.
    import faceattr.models.facenet_graph  # deferred: registers custom layers; imports Keras (TensorFlow, seconds)
    import faceattr.models.heads  # deferred: registers custom layers; imports Keras (TensorFlow, seconds)
    import faceattr.models.layers  # deferred: registers custom layers; imports Keras (TensorFlow, seconds)  # noqa: F401

    try:
        if not has_int8_kernels(path):  # float16 or float32 weights: Keras reads them as they are
            return keras.models.load_model(path, safe_mode=True, compile=False)
        with tempfile.TemporaryDirectory(prefix="faceattr-weights-") as folder:
            return keras.models.load_model(dequantized_copy(path, Path(folder)), safe_mode=True, compile=False)
    except Exception as exc:  # corrupt zip, unknown layer, unsafe content
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
        raise ModelError(f"{path}: cannot load model ({type(exc).__name__}: {first[:300]})") from None


def lambda_layers(path: Path) -> list[str]:
    """Names of the ``Lambda`` layers in a ``.keras`` file's config (empty if none or unreadable)."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return []
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("class_name") == "Lambda":
                layer = node.get("config")
                found.append(str(layer.get("name", "?")) if isinstance(layer, dict) else "?")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return found


def write_info(model_dir: Path, info: ModelInfo) -> None:
    """(Re)write ``model_info.json`` (``writes.write_text``: whole or not at all)."""
    writes.write_text(Path(model_dir) / MODEL_INFO, json.dumps(asdict(info), indent=2, default=str))
