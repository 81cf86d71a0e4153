"""The teacher: a trained model folder whose outputs a student learns from, cached by face.

Outputs are cached on disk per (face content, teacher): the key of a face is the sha256 of
its content (a labelled photo's file bytes, or an unlabelled face's aligned chip pixels),
and the cache file is named by the teacher's identity (the sha256 of its ``model_info.json``
and weights, and whether the mirror image is averaged in), like the FaceNet feature cache.
A second ``distill`` with the same teacher labels nothing it has seen.

Labelled photos (the teacher's own training split) go through the same code ``evaluate``
uses for the model (for FaceNet: its cached trunk features); unlabelled faces, already
detected and aligned, go through ``inference.Predictor`` as ``run`` does.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig, open_dict
from tqdm import tqdm

from faceattr.config import model_settings
from faceattr.errors import ConfigError
from faceattr.hashing import file_sha256
from faceattr.inference.predictor import Predictor
from faceattr.labels import GENDERS, RACES
from faceattr.models.calibration import Calibration
from faceattr.models.families import family
from faceattr.models.info import MODEL_INFO, ModelInfo
from faceattr.models.io import load_trainable, trainable_file

log = logging.getLogger(__name__)

#: Columns of a cache file after ``key``: age (years), gender probabilities, race probabilities.
OUTPUT_COLUMNS = ["age", *(f"gender_{g}" for g in GENDERS), *(f"race_{r}" for r in RACES)]
CACHE_VERSION = 1
PHOTO_CHUNK = 2048  # photos per teacher call: bounds the memory its features take


def teacher_identity(model_dir: Path, tta_flip: bool) -> str:
    """sha256 (hex) of what fixes a teacher's outputs: its model_info.json, weights and TTA."""
    model_dir = Path(model_dir)
    info = ModelInfo.read(model_dir)
    digest = hashlib.sha256(f"v{CACHE_VERSION}|tta_flip={bool(tta_flip)}".encode())
    for name in (MODEL_INFO, trainable_file(info.model_type)):
        digest.update(name.encode() + b"=" + file_sha256(model_dir / name).encode())
    return digest.hexdigest()


def chip_key(chip: np.ndarray) -> str:
    """The cache key of a face crop: sha256 of its shape and uint8 pixels."""
    arr = np.ascontiguousarray(chip, dtype=np.uint8)
    return hashlib.sha256(str(arr.shape).encode() + arr.tobytes()).hexdigest()


def check_teacher(model_dir: Path) -> tuple[ModelInfo, pd.DataFrame]:
    """The teacher's ModelInfo and split (``image``, ``split``); a teacher without ``split.csv``
    is refused, since the student could not keep its validation and test faces out."""
    model_dir = Path(model_dir)
    info = ModelInfo.read(model_dir)
    split_csv = model_dir / "split.csv"
    if not split_csv.is_file():
        raise ConfigError(f"distill.teacher: {model_dir} has no split.csv, so its validation and test faces "
                          "could not be kept out of the student's training; use a model folder that has one")
    try:
        split = pd.read_csv(split_csv, dtype={"image": str, "split": str})
    except (OSError, ValueError) as exc:
        raise ConfigError(f"distill.teacher: {split_csv} cannot be read ({exc})") from None
    if not {"image", "split"} <= set(split.columns) or split.empty:
        raise ConfigError(f"distill.teacher: {split_csv} is not a split (expected image,split rows)")
    return info, split[["image", "split"]]


class TeacherCache:
    """Teacher outputs on disk: ``<root>/distill/teacher-<identity[:16]>.csv``, one row per face key.

    ``labelled``: faces this object sent through the teacher (0 on a run that found them all).
    """

    def __init__(self, root: Path, identity: str) -> None:
        self.path = Path(root) / "distill" / f"teacher-{identity[:16]}.csv"
        self.identity = identity
        self.labelled = 0
        self.seconds = 0.0
        self._rows: dict[str, np.ndarray] = {}
        if self.path.is_file():
            table = pd.read_csv(self.path, dtype={"key": str})
            if list(table.columns) == ["key", *OUTPUT_COLUMNS]:
                values = table[OUTPUT_COLUMNS].to_numpy(np.float32)
                self._rows = dict(zip(table["key"], values, strict=True))
            else:
                log.warning("%s: unexpected columns; its outputs are recomputed", self.path)

    def get(self, keys: Sequence[str], compute: Callable[[list[int]], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Outputs for ``keys``: ``age`` (N,) years, ``gender`` (N, 2), ``race`` (N, 5).

        ``compute(positions)`` is called once with the positions of the keys not cached yet and
        returns their outputs in that order; they are added to the file before returning.
        """
        missing = [i for i, k in enumerate(keys) if k not in self._rows]
        unique_missing = list({keys[i]: i for i in missing}.values())
        if unique_missing:
            start = time.perf_counter()
            out = compute(unique_missing)
            self.seconds += time.perf_counter() - start
            rows = np.column_stack([np.asarray(out["age"], np.float32).reshape(-1),
                                    np.asarray(out["gender"], np.float32), np.asarray(out["race"], np.float32)])
            for i, row in zip(unique_missing, rows, strict=True):
                self._rows[keys[i]] = row
            self.labelled += len(unique_missing)
            self._write()
        table = np.stack([self._rows[k] for k in keys]) if len(keys) else np.zeros((0, len(OUTPUT_COLUMNS)))
        n_g = len(GENDERS)
        return {"age": table[:, 0], "gender": table[:, 1:1 + n_g], "race": table[:, 1 + n_g:]}

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        frame = pd.DataFrame(np.stack(list(self._rows.values())), columns=OUTPUT_COLUMNS)
        frame.insert(0, "key", list(self._rows))
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        frame.to_csv(tmp, index=False, float_format="%.6g")
        tmp.replace(self.path)


class Teacher:
    """A teacher model folder: its outputs for labelled photos and for face crops, cached.

    ``cfg`` is the composed config (``paths.cache``, ``train.batch_size``, ``data``...);
    ``distill.tta_flip`` averages each face with its mirror.
    """

    def __init__(self, cfg: DictConfig, model_dir: Path) -> None:
        self.cfg = cfg
        self.dir = Path(model_dir)
        self.info, self.split = check_teacher(self.dir)
        self.tta_flip = bool(cfg.distill.tta_flip)
        self.identity = teacher_identity(self.dir, self.tta_flip)
        self.cache = TeacherCache(Path(cfg.paths.cache), self.identity)
        self.calibration = Calibration.from_dict(self.info.calibration)
        self._trainer = None
        self._predictor = None

    @property
    def input_size(self) -> int:
        return int(self.info.input_size)

    def trainer(self):
        """The model as ``evaluate`` holds it (FaceNet: the trained top over cached trunk features)."""
        if self._trainer is None:
            stored = (self.info.trained_with or {}).get("model")
            teacher_cfg = self.cfg.copy()
            with open_dict(teacher_cfg):
                teacher_cfg.model = model_settings(stored) if stored else model_settings({"name": self.info.model_type})
            self._trainer = family(self.info.model_type).trainer(teacher_cfg, load_trainable(self.dir, self.info))
        return self._trainer

    def predictor(self):
        """The model as ``run`` serves it (Keras, so labels don't depend on an export's quantization)."""
        if self._predictor is None:
            self._predictor = Predictor.load(self.dir, self.cfg.paths.cache, batch_size=int(self.cfg.run.batch_size),
                                             tta_flip=self.tta_flip, backend="keras")
        return self._predictor

    def label_photos(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        """Outputs for labelled photos (rows with ``path``, ``sha1``, labels), keyed by file sha256."""
        keys = [file_sha256(p) for p in frame["path"]]
        parts = []
        # Chunk by chunk, each added to the cache file as it is done: a stopped run loses one chunk at most.
        for start in tqdm(range(0, len(frame), PHOTO_CHUNK), desc="teacher labels", unit="chunk"):
            chunk = frame.iloc[start:start + PHOTO_CHUNK]

            def compute(positions: list[int], chunk: pd.DataFrame = chunk) -> dict[str, np.ndarray]:
                return self.calibration.apply(self.trainer().predict(chunk.iloc[positions], tta_flip=self.tta_flip))

            parts.append(self.cache.get(keys[start:start + PHOTO_CHUNK], compute))
        if not parts:
            return self.cache.get([], lambda positions: {})
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def label_chips(self, chips: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs for face crops (H, W, 3) uint8 RGB at the teacher's input size, keyed by pixels."""
        keys = [chip_key(c) for c in chips]

        def compute(positions: list[int]) -> dict[str, np.ndarray]:
            predictor = self.predictor()
            return predictor.predict_arrays(predictor.prepare([chips[i] for i in positions]))

        return self.cache.get(keys, compute)
