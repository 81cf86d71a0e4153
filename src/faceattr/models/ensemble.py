"""Average trained models of one kind into one model: ``python src/main.py ensemble DIR DIR ...``.

Why: models trained alike but from different seeds make partly independent errors, and the
mean of their outputs (ages in years, gender and race probabilities) is a cheap, honest gain.
For FaceNet only the trained tops are averaged: the members share the frozen trunk, which does
most of the work and still runs once per face.

The members must be interchangeable, or the ensemble would be wrong or leak:

- the same model type and input size, and for FaceNet the same framing (``zoom_out``) and
  graph, so one trunk (and one feature cache) feeds them all. FaceNet members may differ in
  their cut point: the ensemble takes the activations at the earliest cut among them, and a
  member cut later (a frozen-backbone top, say, beside a fine-tuned one) gets the frozen
  packaged stages in between put in front of its top. Frozen-backbone members alone must share
  the feature kind (pooled or embedding);
- the same train/val/test split (identical ``split.csv``), so the ensemble's test split is one
  that none of its members trained on. Train members with another ``seed`` but the same
  ``data.split.seed``.

The result is an ordinary model folder (``run``, ``evaluate``, ``export`` and ``promote`` take
it as any other); ``model_info.json`` lists the members under ``ensemble``, and each member's
``history.csv`` is kept as ``history_member<i>.csv``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import keras
import pandas as pd
from keras import layers

from faceattr.errors import ConfigError
from faceattr.models import facenet_graph as fg
from faceattr.models.facenet import cut_position, packaged_weights, spec_of
from faceattr.models.io import ModelInfo, history_of, load_trainable, model_folder, promote, save_model

log = logging.getLogger(__name__)

OUTPUTS = ("age", "gender", "race")
#: ``<prefix><i>.csv``: member i's ``history.csv``, kept in the ensemble's model folder.
MEMBER_HISTORY_PREFIX = "history_member"
#: What must agree between FaceNet members for one trunk to feed them all.
FACENET_SHARED = ("zoom_out", "graph_sha256")


def average_models(members: list[keras.Model], name: str = "ensemble") -> keras.Model:
    """One model whose outputs are the members' mean outputs.

    The members take the same input (e.g. images (N, S, S, 3), or FaceNet features) and return
    ``age`` (N, 1) years, ``gender`` (N, 2) and ``race`` (N, 5) probabilities; so does the result.
    """
    first = members[0].inputs[0]
    inputs = keras.Input(tuple(first.shape[1:]), name=first.name.split(":")[0] or "inputs")
    # Nested models are saved under their names, so each member gets its own (output: the dict).
    outputs = [keras.Model(m.inputs, m.output, name=f"member_{i}")(inputs) for i, m in enumerate(members)]
    return keras.Model(inputs, _average(outputs), name=name)


def _load_all(dirs: list[Path], infos: list[ModelInfo]) -> list[keras.Model]:
    return [load_trainable(d, info) for d, info in zip(dirs, infos, strict=True)]


def _average(outputs: list[dict]) -> dict:
    return {key: layers.Average(name=key)([out[key] for out in outputs]) for key in OUTPUTS}


def check_members(dirs: list[Path]) -> list[ModelInfo]:
    """Read the members' ``model_info.json`` and refuse any that can't share one input and split."""
    if len(dirs) < 2:
        raise ConfigError(f"ensemble: give two or more model folders, not {len(dirs)}")
    infos = [ModelInfo.read(d) for d in dirs]
    first, first_dir = infos[0], dirs[0]
    splits = [_split(d) for d in dirs]
    for info, folder, split in zip(infos[1:], dirs[1:], splits[1:], strict=True):
        if (info.model_type, info.input_size) != (first.model_type, first.input_size):
            raise ConfigError(f"ensemble: {folder} holds a {info.model_type} model at {info.input_size}px, "
                              f"{first_dir} a {first.model_type} model at {first.input_size}px")
        if first.model_type == "facenet":
            mine, theirs = _facenet_spec(info), _facenet_spec(first)
            if mine != theirs:
                raise ConfigError(f"ensemble: {folder} has a FaceNet top for {mine}, {first_dir} one for {theirs}")
            if _cut(info) is None and _cut(first) is None and _features(info) != _features(first):
                raise ConfigError(f"ensemble: {folder} takes {_features(info)} features, {first_dir} "
                                  f"{_features(first)}; frozen-backbone members must share the feature kind")
        if not split.equals(splits[0]):
            raise ConfigError(f"ensemble: {folder}/split.csv differs from {first_dir}/split.csv; members must "
                              "share one split (same data and data.split.seed) or a test face may have been trained on")
    return infos


def _split(model_dir: Path) -> pd.Series:
    path = Path(model_dir) / "split.csv"
    if not path.is_file():
        raise ConfigError(f"ensemble: {path} missing; without it the members' test splits can't be compared")
    return pd.read_csv(path).set_index("image")["split"].sort_index()


def _facenet_spec(info: ModelInfo) -> dict:
    return {key: spec_of(info)[key] for key in FACENET_SHARED}


def _cut(info: ModelInfo) -> int | None:
    return spec_of(info)["cut_stage"]


def _features(info: ModelInfo) -> str:
    return spec_of(info)["features"]


def facenet_ensemble(dirs: list[Path], infos: list[ModelInfo], cache_dir: Path | None) -> tuple[keras.Model, int]:
    """The members' FaceNet tops averaged, all fed from the earliest cut among them; returns the
    model and the index of the member whose cut (and so whose trunk and cached features) it takes.

    A frozen-backbone top (cut None) counts as cut after the last stage. Members cut later than
    the earliest get the packaged, frozen stages from the earliest cut to their own in front,
    one copy per distinct cut and feature kind.
    """
    cuts = [cut_position(_cut(info)) for info in infos]
    lead = cuts.index(min(cuts))
    if len(set(cuts)) == 1:
        return average_models(_load_all(dirs, infos)), lead
    weights, size = packaged_weights(cache_dir), infos[lead].input_size
    inputs = keras.Input(fg.cut_shape(cuts[lead], size), name="features")
    bridged: dict[tuple[int | None, str], keras.KerasTensor] = {}
    outputs = []
    for i, (folder, info, cut) in enumerate(zip(dirs, infos, cuts, strict=True)):
        x = inputs
        if cut != cuts[lead]:
            key = (_cut(info), _features(info))
            if key not in bridged:
                stages = fg.build_facenet(weights, cuts[lead], _cut(info), output=_features(info),
                                          input_shape=fg.cut_shape(cuts[lead], size), name=f"frozen_stages_{i}")
                stages.trainable = False
                bridged[key] = stages(inputs)
            x = bridged[key]
        top = load_trainable(folder, info)
        outputs.append(keras.Model(top.inputs, top.output, name=f"member_{i}")(x))
    return keras.Model(inputs, _average(outputs), name="ensemble"), lead


def ensemble_command(cfg, run_dir: Path) -> dict:
    """``python src/main.py ensemble DIR DIR ...``: write ``<run dir>/model``, the members' mean."""
    dirs = [model_folder(Path(str(d))) for d in cfg.ensemble.members]
    infos = check_members(dirs)
    if infos[0].model_type == "facenet":
        model, lead = facenet_ensemble(dirs, infos, Path(cfg.paths.cache))
    else:
        model, lead = average_models(_load_all(dirs, infos)), 0
    first = infos[lead]  # its cut, features and training config describe the ensemble's input
    info = ModelInfo(first.model_type, first.input_size, facenet=first.facenet, trained_with=first.trained_with,
                     ensemble={"members": [str(d) for d in dirs], "combine": "mean"})
    model_dir = Path(run_dir) / "model"
    save_model(model_dir, info, model)
    (model_dir / "split.csv").write_bytes((dirs[0] / "split.csv").read_bytes())
    # The members' training curves stay with the ensemble (``evaluate`` plots them).
    for i, folder in enumerate(dirs):
        history = history_of(folder)
        if history is not None:
            (model_dir / f"{MEMBER_HISTORY_PREFIX}{i}.csv").write_bytes(history.read_bytes())
    summaries = [json.loads(p.read_text()) if p.is_file() else {} for p in (d / "train_summary.json" for d in dirs)]
    summary = {
        "model_dir": str(model_dir),
        "members": [str(d) for d in dirs],
        # The whole cost of the ensemble: every member's training (and feature extraction).
        "train_seconds": round(sum(s.get("train_seconds", 0.0) for s in summaries), 1),
        "feature_seconds": round(sum(s.get("feature_seconds", 0.0) for s in summaries), 1),
        "feature_images_extracted": sum(s.get("feature_images_extracted", 0) for s in summaries),
        "member_summaries": summaries,
    }
    if cfg.export.tflite:
        from faceattr.models.export import export_tflite

        summary["tflite"] = str(export_tflite(model_dir, Path(cfg.paths.cache), str(cfg.export.quantization)))
    for folder in (Path(run_dir), model_dir):
        (folder / "train_summary.json").write_text(json.dumps(summary, indent=2))
    print(f"Ensemble of {len(dirs)} {first.model_type} models saved to {model_dir}")
    print(f"Evaluate it with: python src/main.py evaluate --model_path {model_dir}")
    if cfg.promote:
        promote(model_dir, Path(cfg.paths.saved_models))
    return summary
