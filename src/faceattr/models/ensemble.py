"""Average trained models into one model: ``python src/main.py ensemble DIR DIR ...``.

Why: models trained alike but from different seeds make partly independent errors, and the
mean of their outputs (ages in years, gender and race probabilities) is a cheap, honest gain.
Models that see the face differently gain more: FaceNet prewhitens each face (removing its
overall brightness and contrast, and with them part of the skin tone), while the from-scratch
CNN sees the raw colours. For FaceNet only the trained tops are averaged: the members share
the frozen trunk, which does most of the work and still runs once per face.

The members must be interchangeable, or the ensemble would be wrong or leak:

- CNN members alone: one input size. FaceNet members: the same input size, framing
  (``zoom_out``) and graph, so one trunk (and one feature cache) feeds them all. FaceNet
  members may differ in their cut point: the ensemble takes the activations at the earliest
  cut among them, and a member cut later (a frozen-backbone top, say, beside a fine-tuned one)
  gets the frozen packaged stages in between put in front of its top. Frozen-backbone members
  alone must share the feature kind (pooled or embedding);
- FaceNet and CNN members together: the result is a FaceNet model (one trunk per face) whose
  CNN members get the face shrunk to their input size, never enlarged;
- the same train/val/test split (identical ``split.csv``), so the ensemble's test split is one
  that none of its members trained on. Train members with another ``seed`` but the same
  ``data.split.seed``.

Each member counts once in the mean: a member that is itself an ensemble (the shipped CNN, say)
weighs as much as any other member.

The result is an ordinary model folder (``run``, ``evaluate``, ``export`` and ``promote`` take
it as any other); ``model_info.json`` lists the members and their types under ``ensemble``, and
each member's ``history.csv`` is kept as ``history_member<i>.csv``.

``ensemble.combine=weights`` averages the members' *weights* instead of their outputs
(:func:`average_weights`, a "model soup"): one model of the members' own size and speed. That is
only meaningful for runs trained on from one start (the same ``train.init_from``, e.g. one run
with two FairFace weights), whose weights stay close enough for their mean to be a good model;
members of one architecture are all it can check, so evaluate the result like any model.

What depends on the members' kind lives in their families (``models.families``): a family
whose models share a frozen trunk (``shares_trunk``, FaceNet) checks the members and builds
the ensemble (``check_ensemble``, ``ensemble``); one whose models take the face image says how
it is fed (``feed_image``). Image models alone are simply averaged here.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from faceattr.data.split_file import RECORD_KEY, SPLIT_FILE, read_split, split_record
from faceattr.errors import ConfigError
from faceattr.labels import TASKS
from faceattr.models.export import export_tflite
from faceattr.models.families import family
from faceattr.models.info import ModelInfo
from faceattr.models.io import history_of, load_trainable, model_folder, save_model
from faceattr.resources import program_name

if TYPE_CHECKING:  # TensorFlow is imported once the members have passed check_members
    import keras

log = logging.getLogger(__name__)

#: ``<prefix><i>.csv``: member i's ``history.csv``, kept in the ensemble's model folder.
MEMBER_HISTORY_PREFIX = "history_member"


#: Per-task member weights, e.g. ``{"age": [0.7, 0.3], "gender": [0.7, 0.3], "race": [0.5, 0.5]}``,
#: each list summing to 1 (:func:`member_weights`).
TaskWeights = dict[str, list[float]]


def average_models(members: list[keras.Model], name: str = "ensemble",
                   weights: TaskWeights | None = None) -> keras.Model:
    """One model whose outputs are the members' mean outputs (weighted by ``weights``, see
    :func:`mean_outputs`).

    The members take the same input (e.g. images (N, S, S, 3), or FaceNet features) and return
    ``age`` (N, 1) years, ``gender`` (N, 2) and ``race`` (N, 5) probabilities; so does the result.
    """
    import keras  # deferred: Keras imports TensorFlow (seconds)

    first = members[0].inputs[0]
    inputs = keras.Input(tuple(first.shape[1:]), name=first.name.split(":")[0] or "inputs")
    # Nested models are saved under their names, so each member gets its own (output: the dict).
    outputs = [keras.Model(m.inputs, m.output, name=f"member_{i}")(inputs) for i, m in enumerate(members)]
    return keras.Model(inputs, mean_outputs(outputs, weights), name=name)


def average_weights(members: list[keras.Model], weights: Sequence[float] | None = None,
                    names: Sequence[str] | None = None) -> keras.Model:
    """The first member, its weights replaced by the members' weighted mean (``weights``: one per
    member summing to 1; None: equal), every array averaged in float64 and stored in its own dtype,
    batch-norm statistics included. Members must share one architecture: the same arrays in the
    same order and shapes; ``names`` (one per member, for the message) say which does not."""
    names = list(names or (f"member {i}" for i in range(len(members))))
    weights = list(weights or [1.0 / len(members)] * len(members))
    arrays = [m.get_weights() for m in members]
    shapes = [a.shape for a in arrays[0]]
    for name, member in zip(names[1:], arrays[1:], strict=True):
        if [a.shape for a in member] != shapes:
            raise ConfigError(f"ensemble: {name} has another architecture than {names[0]} ({len(member)} weight "
                              f"arrays against {len(shapes)}, or other shapes); ensemble.combine=weights needs "
                              "runs of one model trained on from one start")
    mean = [sum(w * np.asarray(a[k], dtype=np.float64) for w, a in zip(weights, arrays, strict=True))
            .astype(arrays[0][k].dtype) for k in range(len(shapes))]
    members[0].set_weights(mean)
    return members[0]


def _load_all(dirs: list[Path], infos: list[ModelInfo]) -> list[keras.Model]:
    return [load_trainable(d, info) for d, info in zip(dirs, infos, strict=True)]


def mean_outputs(outputs: list[dict], weights: TaskWeights | None = None) -> dict:
    """The members' output dicts (``age``, ``gender``, ``race`` tensors) averaged task by task;
    with ``weights`` (per task, one weight per member, summing to 1) each task's weighted mean,
    which keeps the class probabilities summing to 1. A task ``weights`` leaves out is the plain mean."""
    from keras import layers  # deferred: Keras imports TensorFlow (seconds)

    from faceattr.models.layers import WeightedMean  # deferred: models.layers imports Keras (TensorFlow, seconds)

    weights = weights or {}
    return {key: WeightedMean(weights[key], name=key)([out[key] for out in outputs]) if key in weights
            else layers.Average(name=key)([out[key] for out in outputs]) for key in TASKS}


def member_weights(cfg_weights: Sequence[float] | Mapping[str, Sequence[float]] | None, n: int) -> TaskWeights | None:
    """``ensemble.weights`` checked and scaled to sum to 1 per task; None for the plain mean.

    ``cfg_weights`` is one list for every task (``[0.6, 0.4]``) or a mapping from task to list
    (``{gender: [0.7, 0.3], race: [0.5, 0.5]}``; a task left out gets the plain mean), one weight
    per member, each >= 0 and summing above 0. Members often differ by task (a model trained on
    everyday photos judges their gender best, one trained on chips their race), so each task may
    weigh them differently. A member that weighs 0 in every task is refused: leave it out instead.
    """
    if cfg_weights is None:
        return None
    if isinstance(cfg_weights, Mapping):
        unknown = sorted(set(map(str, cfg_weights)) - set(TASKS))
        if unknown:
            raise ConfigError(f"ensemble.weights: {', '.join(unknown)} is not a task; name some of "
                              f"{', '.join(TASKS)}, or give one list for all")
        given = {str(task): _scaled(task, cfg_weights[task], n) for task in cfg_weights}
    else:
        given = {task: _scaled(None, cfg_weights, n) for task in TASKS}
    # A task left out averages every member, so only weights for every task can leave one unused.
    unused = [i for i in range(n) if all(w[i] == 0 for w in given.values())] if len(given) == len(TASKS) else []
    if unused:
        raise ConfigError(f"ensemble.weights: member {unused[0]} weighs 0 in every task; leave it out of the ensemble")
    equal = [1.0 / n] * n
    weights = {task: w for task, w in given.items() if w != equal}  # the plain mean needs no weights
    return weights or None


def view_weights(view: int, n: int, given: Any, combine: str) -> TaskWeights:
    """``ensemble.view``: every task one-hot on member ``view`` (0-based, of ``n``), the weights
    that make the ensemble member ``view``'s *view*: its outputs alone, computed as the ensemble
    computes them. A CNN inside a FaceNet ensemble sees the FaceNet input shrunk to its size, not
    its own chip, so its predictions there differ from its own by a few faces in a thousand; to
    choose an ensemble's weights (``weigh``), evaluate each member's view. Not with
    ``ensemble.weights`` (a view has its own) or a mean of weights (one network: no members left)."""
    if combine == "weights":
        raise ConfigError("ensemble.view: a mean of weights has no members to look at; use ensemble.combine=outputs")
    if given is not None:
        raise ConfigError("ensemble.view: a view weighs its member 1 and the others 0; leave ensemble.weights out")
    if isinstance(view, bool) or not isinstance(view, int) or not 0 <= view < n:
        raise ConfigError(f"ensemble.view={view!r}: give a member's place, 0 to {n - 1}")
    return {task: [1.0 if i == view else 0.0 for i in range(n)] for task in TASKS}


def _scaled(task: str | None, values: Any, n: int) -> list[float]:
    """One task's weights checked (``n`` numbers, >= 0, sum > 0) and scaled to sum to 1."""
    where = f"ensemble.weights.{task}" if task else "ensemble.weights"
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ConfigError(f"{where}: give a list of {n} weights, one per member, not {values!r}")
    try:
        weights = [float(w) for w in values]
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: weights must be numbers, got {list(values)}") from None
    if len(weights) != n or any(not w >= 0 for w in weights) or not sum(weights) > 0:
        raise ConfigError(f"{where}: give one weight >= 0 per member ({n}), not all 0, got {weights}")
    if len(set(weights)) == 1:
        return [1.0 / n] * n
    return [w / sum(weights) for w in weights]


def recorded_weights(weights: TaskWeights | None) -> dict:
    """``model_info.json``'s record of the weights: ``{"weights": [...]}`` when every task weighs the
    members alike, ``{"weights": {task: [...]}}`` when they differ, ``{}`` for the plain mean."""
    if not weights:
        return {}
    rounded = {task: [round(w, 6) for w in weights.get(task, [])] for task in TASKS if task in weights}
    lists = list(rounded.values())
    if len(rounded) == len(TASKS) and all(w == lists[0] for w in lists):
        return {"weights": lists[0]}
    return {"weights": rounded}


def trunk_member(infos: list[ModelInfo]) -> int | None:
    """The first member whose family feeds its models from a shared trunk (``shares_trunk``), or None."""
    return next((i for i, info in enumerate(infos) if family(info.model_type).shares_trunk), None)


def check_members(dirs: list[Path]) -> list[ModelInfo]:
    """Read the members' ``model_info.json`` and refuse any that can't share one input and split,
    or that is given twice (compared by resolved path: a member counts once in the mean)."""
    if len(dirs) < 2:
        raise ConfigError(f"ensemble: give two or more model folders, not {len(dirs)}")
    seen: dict[Path, Path] = {}
    for folder in dirs:  # one folder twice would silently weigh double
        first = seen.setdefault(Path(os.path.realpath(folder)), folder)
        if first is not folder:
            same = "given twice" if str(first) == str(folder) else f"the same model folder as {first}"
            raise ConfigError(f"ensemble: {folder}: {same}; give each member once")
    infos = [ModelInfo.read(d) for d in dirs]
    merged_split(dirs)  # before any model loads: members that disagree on a face's split are refused
    lead = trunk_member(infos)
    if lead is None:  # models that take the image alone: one image size
        for folder, info in zip(dirs[1:], infos[1:], strict=True):
            if info.input_size != infos[0].input_size:
                raise ConfigError(f"ensemble: {folder} takes {info.input_size}px faces, {dirs[0]} "
                                  f"{infos[0].input_size}px")
        return infos
    family(infos[lead].model_type).check_ensemble(dirs, infos)
    return infos


def check_same_kind(dirs: list[Path], infos: list[ModelInfo]) -> None:
    """For a mean of weights: every member of the first's kind, input size and FaceNet settings
    (cut, features, framing, graph), so the one model that results takes the faces they all took."""
    for folder, info in zip(dirs[1:], infos[1:], strict=True):
        if (info.model_type, info.input_size, info.facenet) != (infos[0].model_type, infos[0].input_size,
                                                                infos[0].facenet):
            raise ConfigError(f"ensemble: {folder} is a {info.model_type} model of other settings than {dirs[0]} "
                              f"({infos[0].model_type}); ensemble.combine=weights needs runs of one model")


def _split(model_dir: Path) -> pd.DataFrame:
    path = Path(model_dir) / "split.csv"
    if not path.is_file():
        raise ConfigError(f"ensemble: {path} missing; without it the members' test splits can't be compared")
    return read_split(Path(model_dir))  # checked: damage is one line


def merged_split(dirs: list[Path]) -> pd.DataFrame:
    """The ensemble's ``split.csv`` rows: every face any member lists, in the split its members agree on.

    Members must put each face they share in the same split (same data and ``data.split.seed``),
    or a face one member was tested on may have been trained on by another. A face only some
    members list is one the others never saw (e.g. a member trained on FairFace beside UTKFace, with
    one trained on UTKFace alone), so it keeps its split.
    """
    merged = _split(dirs[0])
    for folder in dirs[1:]:
        split = _split(folder)
        both = merged.merge(split, on="image", suffixes=("", "_other"))
        clash = both[both["split"] != both["split_other"]]
        if len(clash):
            raise ConfigError(f"ensemble: {folder}/split.csv puts {len(clash)} face(s) in another split than "
                              f"{dirs[0]}/split.csv (e.g. {clash['image'].iloc[0]}: {clash['split_other'].iloc[0]} "
                              f"vs {clash['split'].iloc[0]}); members must share one split (same data and "
                              "data.split.seed) or a test face may have been trained on")
        merged = pd.concat([merged, split[~split["image"].isin(set(merged["image"]))]], ignore_index=True)
    return merged.sort_values("image").reset_index(drop=True)


def _combined(dirs: list[Path], infos: list[ModelInfo], weights: TaskWeights | None, combine: str,
              cache: Path) -> tuple[keras.Model, int]:
    """The combined model and the member whose input it takes: a mean of weights (``combine`` is
    ``weights``), FaceNet tops fed by one trunk, or image models' outputs averaged."""
    if combine == "weights":
        check_same_kind(dirs, infos)
        one_list = weights and weights["age"]  # one list was given: every task holds it
        return average_weights(_load_all(dirs, infos), one_list, [str(d) for d in dirs]), 0
    trunk = trunk_member(infos)
    if trunk is not None:  # one shared trunk feeds the members (e.g. FaceNet tops)
        return family(infos[trunk].model_type).ensemble(dirs, infos, cache, weights)
    return average_models(_load_all(dirs, infos), weights=weights), 0


def build_ensemble(cfg, run_dir: Path) -> dict:
    """The ``ensemble`` command's work: write ``<run dir>/model``, the mean of ``ensemble.members``
    (weighted by ``ensemble.weights`` where set), and its ``train_summary.json``; returns that summary.

    The members are checked (``check_members``) before TensorFlow is imported. Promotion
    (``promote=true``) is the ``ensemble`` command's next step, not done here."""
    dirs = [model_folder(Path(str(d))) for d in cfg.ensemble.members]
    given = OmegaConf.select(cfg, "ensemble.weights")  # absent: the plain mean
    given = OmegaConf.to_container(given) if OmegaConf.is_config(given) else given
    combine = str(OmegaConf.select(cfg, "ensemble.combine", default="outputs"))
    if combine == "weights" and isinstance(given, Mapping):
        raise ConfigError("ensemble.weights: a mean of weights mixes the whole network, not one task's output; "
                          "give one list, e.g. [0.5,0.5]")
    view = OmegaConf.select(cfg, "ensemble.view")
    weights = member_weights(given, len(dirs)) if view is None else view_weights(view, len(dirs), given, combine)
    infos = check_members(dirs)
    model, lead = _combined(dirs, infos, weights, combine, Path(cfg.paths.cache))
    first = infos[lead]  # its cut, features and training config describe the ensemble's input
    info = ModelInfo(first.model_type, first.input_size, facenet=first.facenet, trained_with=first.trained_with,
                     ensemble={"members": [str(d) for d in dirs], "member_types": [i.model_type for i in infos],
                               "combine": "weights" if combine == "weights" else "mean",
                               **recorded_weights(weights), **({"view": view} if view is not None else {})})
    model_dir = Path(run_dir) / "model"
    save_model(model_dir, info, model)
    merged_split(dirs).to_csv(model_dir / "split.csv", index=False)
    # The members' training curves stay with the ensemble (``evaluate`` plots them); a member that
    # is an ensemble itself passes its members' on as ``history_member<i>_<j>.csv``.
    for i, folder in enumerate(dirs):
        history = history_of(folder)
        if history is not None:
            (model_dir / f"{MEMBER_HISTORY_PREFIX}{i}.csv").write_bytes(history.read_bytes())
        for nested in sorted(folder.glob(f"{MEMBER_HISTORY_PREFIX}*.csv")):
            j = nested.stem.removeprefix(MEMBER_HISTORY_PREFIX)
            (model_dir / f"{MEMBER_HISTORY_PREFIX}{i}_{j}.csv").write_bytes(nested.read_bytes())
    summaries = [json.loads(p.read_text()) if p.is_file() else {} for p in (d / "train_summary.json" for d in dirs)]
    summary = {
        "model_dir": str(model_dir),
        "members": [str(d) for d in dirs],
        # The whole cost of the ensemble: every member's training (and feature extraction).
        "train_seconds": round(sum(s.get("train_seconds", 0.0) for s in summaries), 1),
        "feature_seconds": round(sum(s.get("feature_seconds", 0.0) for s in summaries), 1),
        "feature_images_extracted": sum(s.get("feature_images_extracted", 0) for s in summaries),
        "member_summaries": summaries,
        RECORD_KEY: split_record(model_dir / SPLIT_FILE),  # read_split knows a damaged copy by it
    }
    if any(s.get("resumed") for s in summaries):
        summary["resumed"] = True  # a member's train_seconds count its last command only
    if cfg.export.tflite:
        summary["tflite"] = str(export_tflite(model_dir, Path(cfg.paths.cache), str(cfg.export.quantization)))
    for folder in (Path(run_dir), model_dir):
        (folder / "train_summary.json").write_text(json.dumps(summary, indent=2))
    kinds = ", ".join(sorted({info.model_type for info in infos}))
    what = "Mean of the weights" if combine == "weights" else "Ensemble"
    if view is not None:
        what = f"The view of member {view} ({dirs[view]}), for weigh, not for promote: ensemble"
    print(f"{what} of {len(dirs)} models ({kinds}) saved to {model_dir}")
    print(f"Evaluate it with: {program_name()} evaluate --model-path {model_dir}")
    return summary
