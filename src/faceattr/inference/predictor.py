"""Face crops -> age, gender and race, in batches. Shared by ``run --img``, ``run --video``,
``evaluate`` and any later front end; independent of Hydra (plain arguments), with
``Predictor.from_config(cfg)`` for the commands.

The saved model owns its preprocessing (``models.io``): it takes float32 RGB in [0, 255] of
shape (N, S, S, 3). The only step here is resizing a crop to S with the same function the
training pipeline uses (``models.preprocessing.resize_face``), so serving can't drift. What
runs the network (the Keras model or its TensorFlow Lite export) is ``inference.runtime``'s.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from faceattr.errors import InputError, ModelError
from faceattr.inference.align import ChipTemplate
from faceattr.inference.runtime import KerasRunner, open_runner
from faceattr.labels import AGE_RANGE, GENDERS, RACES
from faceattr.models.calibration import Calibration
from faceattr.models.io import resolve_model_dir
from faceattr.models.preprocessing import resize_face

if TYPE_CHECKING:  # TensorFlow/Keras load on first use (never, with the TensorFlow Lite runner)
    from faceattr.inference.runtime import Runner
    from faceattr.models.info import ModelInfo
    from faceattr.models.io import LoadedModel

log = logging.getLogger(__name__)


@dataclass
class FacePrediction:
    """The model's answer for one face.

    ``age`` in years (clipped to ``labels.AGE_RANGE``); ``gender``/``race`` are the most
    probable class names (``labels.GENDERS``/``labels.RACES``) and ``*_confidence`` their
    probability in [0, 1]; ``gender_probs`` (2,) and ``race_probs`` (5,) are the full softmax
    vectors in label order.
    """

    age: float
    gender: str
    gender_confidence: float
    race: str
    race_confidence: float
    gender_probs: np.ndarray = field(repr=False)
    race_probs: np.ndarray = field(repr=False)

    @classmethod
    def from_outputs(cls, age: float, gender_probs: np.ndarray, race_probs: np.ndarray) -> FacePrediction:
        """Build from raw outputs: age (years), probability vectors in label order."""
        g = np.asarray(gender_probs, dtype=np.float32).reshape(-1)
        r = np.asarray(race_probs, dtype=np.float32).reshape(-1)
        gi, ri = int(np.argmax(g)), int(np.argmax(r))
        return cls(age=float(np.clip(age, *AGE_RANGE)), gender=GENDERS[gi], gender_confidence=float(g[gi]),
                   race=RACES[ri], race_confidence=float(r[ri]), gender_probs=g, race_probs=r)


class Predictor:
    """Maps face crops to ``FacePrediction``s with a loaded end-to-end model.

    ``runner`` (``inference.runtime``): takes (N, S, S, 3) float32 RGB in [0, 255], returns
    ``age`` (N,) years, ``gender`` (N, 2) and ``race`` (N, 5) probabilities. ``batch_size``: faces
    per call. ``tta_flip``: average each face's outputs with its mirror image's (one call of 2N).

    Thread safety: ``predict`` may be called from a worker thread; calls are serialised.
    """

    def __init__(self, runner: Runner, input_size: int, *, batch_size: int = 32, tta_flip: bool = True,
                 info: ModelInfo | None = None, path: Path | None = None) -> None:
        if info is not None and (list(info.genders) != list(GENDERS) or list(info.races) != list(RACES)):
            raise ModelError(f"{path or 'model'}: its classes {info.genders}/{info.races} differ from this "
                             f"toolkit's {list(GENDERS)}/{list(RACES)}; outputs would be mislabelled")
        self.runner = runner
        self.input_size = int(input_size)
        self.batch_size = max(1, int(batch_size))
        self.tta_flip = bool(tta_flip)
        self.info = info
        self.path = path
        self.calibration = Calibration.from_dict(info.calibration if info is not None else None)
        self._lock = threading.Lock()

    @property
    def chip_template(self) -> ChipTemplate:
        """Where the model's training chips have their landmarks (``inference.align``)."""
        return ChipTemplate.from_dict(self.info.chip_template if self.info is not None else None)

    @property
    def backend(self) -> str:
        """``keras`` or ``tflite``: what runs the network."""
        return self.runner.backend

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_loaded(cls, loaded: LoadedModel, *, batch_size: int = 32, tta_flip: bool = True) -> Predictor:
        """From ``models.io.load_model``'s result (the Keras model)."""
        return cls(KerasRunner(loaded.model, loaded.info.input_size), loaded.info.input_size,
                   batch_size=batch_size, tta_flip=tta_flip,
                   info=loaded.info, path=loaded.path)

    @classmethod
    def load(cls, model_dir: str | Path, cache_dir: str | Path | None = None, *, batch_size: int = 32,
             tta_flip: bool = True, backend: str = "auto", threads: int | None = None) -> Predictor:
        """Load a model folder (``model_info.json`` + weights) with ``backend`` (auto | tflite |
        keras, see ``inference.runtime``) and wrap it."""
        runner, info = open_runner(Path(model_dir), backend, Path(cache_dir) if cache_dir else None, threads)
        log.info("Loaded %s model from %s (input %dpx, %s)", info.model_type, model_dir, info.input_size,
                 runner.backend)
        return cls(runner, info.input_size, batch_size=batch_size, tta_flip=tta_flip, info=info, path=Path(model_dir))

    @classmethod
    def from_config(cls, cfg: Any) -> Predictor:
        """From the composed config: ``model_path`` (or the shipped model), ``run.batch_size``,
        ``run.tta_flip``, ``run.backend``, ``run.threads``, ``run.calibrate`` and ``paths.cache``."""
        run = cfg.run
        predictor = cls.load(resolve_model_dir(cfg), cfg.paths.cache, batch_size=int(run.batch_size),
                             tta_flip=bool(run.tta_flip), backend=str(run.backend),
                             threads=int(run.threads) if run.threads else None)
        if not bool(run.calibrate):  # the raw outputs, without the model's decision rules
            predictor.calibration = Calibration()
        return predictor

    # -- prediction ---------------------------------------------------------------------
    def prepare(self, faces_rgb: list[np.ndarray]) -> np.ndarray:
        """Crops (H, W, 3) uint8 RGB of any size -> (N, S, S, 3) float32 in [0, 255]."""
        batch = np.empty((len(faces_rgb), self.input_size, self.input_size, 3), dtype=np.float32)
        for i, face in enumerate(faces_rgb):
            arr = np.asarray(face)
            if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
                raise InputError(f"face {i}: expected an (H, W, 3) RGB crop, got shape {arr.shape}")
            if arr.dtype != np.uint8:
                arr = np.clip(arr, 0, 255).astype(np.uint8)
            batch[i] = resize_face(arr, self.input_size)
        return batch

    def predict_arrays(self, batch: np.ndarray, tta_flip: bool | None = None) -> dict[str, np.ndarray]:
        """Raw outputs for a prepared batch (N, S, S, 3) float32 RGB [0, 255].

        Returns ``age`` (N,) years (unclipped), ``gender`` (N, 2), ``race`` (N, 5), with flip
        test-time augmentation applied when enabled (``tta_flip``; None: the predictor's own
        setting), then the model's calibration (its decision rules fitted on the validation split,
        ``models.calibration``). Processed in chunks of ``batch_size``.
        """
        flip = self.tta_flip if tta_flip is None else bool(tta_flip)
        n = len(batch)
        out = {"age": np.empty((n,), np.float32), "gender": np.empty((n, len(GENDERS)), np.float32),
               "race": np.empty((n, len(RACES)), np.float32)}
        with self._lock:
            for start in range(0, n, self.batch_size):
                x = np.asarray(batch[start:start + self.batch_size], dtype=np.float32)
                k = len(x)
                if flip:
                    x = np.concatenate([x, x[:, :, ::-1, :]], axis=0)  # mirror = flip the width axis
                res = self.runner(x)
                age = res["age"].reshape(-1)
                gender, race = res["gender"], res["race"]
                if flip:
                    age = (age[:k] + age[k:]) / 2.0
                    gender = (gender[:k] + gender[k:]) / 2.0
                    race = (race[:k] + race[k:]) / 2.0
                out["age"][start:start + k] = age
                out["gender"][start:start + k] = gender
                out["race"][start:start + k] = race
        return self.calibration.apply(out)

    def predict(self, faces_rgb: list[np.ndarray], tta_flip: bool | None = None) -> list[FacePrediction]:
        """One ``FacePrediction`` per crop, in order; crops are (H, W, 3) uint8 RGB, any size.
        ``tta_flip``: also the mirror images (None: the predictor's own setting)."""
        if not faces_rgb:
            return []
        raw = self.predict_arrays(self.prepare(faces_rgb), tta_flip)
        return [FacePrediction.from_outputs(a, g, r) for a, g, r in zip(raw["age"], raw["gender"], raw["race"],
                                                                          strict=True)]

    def warmup(self, faces: int = 1, tta_flip: bool | None = None) -> None:
        """Run ``faces`` blank faces, so the first real ones aren't slow (tracing, buffer planning;
        video start-up). ``tta_flip`` as ``predict``'s."""
        self.predict([np.zeros((self.input_size, self.input_size, 3), np.uint8)] * max(1, int(faces)), tta_flip)
