"""UTKFace: parse file names, index and deduplicate images, split, rebalance.

The order matters and is the whole point of this module::

    resolve folder -> index (parse names, hash contents, drop duplicates) -> [limit]
        -> split (stratified, before anything else touches the data) -> [train_limit]
        -> rebalance (training split only) -> split.csv

* **Labels** come from file names ``age_gender_race_datetime.jpg.chip.jpg`` (age in years,
  gender and race as indices into :data:`faceattr.labels.GENDERS` / ``RACES``). Names that
  don't parse are skipped and reported with a reason.
* **Deduplication** is by content (SHA-1 of the file bytes). Byte-identical copies with the
  same labels are kept once; a group of copies whose labels disagree is dropped entirely,
  because we can't tell which label is right. After this no two rows share content, so no
  copy of a test image can reach training; :func:`check_split_disjoint` verifies it.
* **Split and limit** use one idea, :func:`_spread`: within each stratum (age bin, gender,
  race) the rows, in seeded random order, get evenly spaced numbers ``(j + offset) / n`` in
  ``[0, 1)``. A row goes to train/val/test by where its number falls in the cumulative
  ratios, so every stratum is split in proportion (within one image) and the result depends
  only on the seed and the file names, never on the filesystem's order. Strata too small to
  give every split an image are merged into coarser ones (age bin + gender, then age bin,
  then everything), so a 60-image debug run splits as well as the full set.
* **Rebalancing** is arithmetic on the training rows, see :func:`rebalance`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from faceattr.config import RebalanceConfig, settings
from faceattr.errors import ConfigError, DataError
from faceattr.jpeg import jpeg_is_complete
from faceattr.labels import AGE_RANGE, DEFAULT_AGE_BIN_EDGES, GENDERS, RACES, age_to_bin

log = logging.getLogger(__name__)

#: The split names, in the order their ratios are laid out on [0, 1).
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: The columns the split (and ``limit``) is stratified on.
STRATA: tuple[str, ...] = ("age_bin", "gender", "race")
_JPEG_MAGIC = b"\xff\xd8\xff"
_CACHE_COLUMNS = ["image", "size", "mtime_ns", "sha1", "problem"]
#: Bumped when what ``content_hashes`` records changes, so an older cache is read again from the files.
_CACHE_VERSION = 2


class Labels(NamedTuple):
    """The labels carried by one UTKFace file name."""

    age: int  #: years
    gender: int  #: index into faceattr.labels.GENDERS
    race: int  #: index into faceattr.labels.RACES


@dataclass
class DatasetIndex:
    """The images of a folder after parsing, deduplication and ``limit``.

    ``frame`` has one row per usable image, sorted by ``image``, with columns ``image`` (file
    name, unique), ``path`` (absolute), ``age`` (years), ``gender``, ``race``, ``age_bin``
    (index of the bin of ``age_bin_edges``) and ``sha1`` (hex digest of the file bytes).
    """

    frame: pd.DataFrame
    folder: Path
    files_seen: int = 0  #: regular, non-hidden files in the folder
    skipped: list[tuple[str, str]] = field(default_factory=list)  #: (file name, reason)
    duplicates_removed: int = 0  #: byte-identical copies (same labels) not kept
    #: groups of byte-identical files under conflicting labels, all dropped:
    #: ``{"sha1": ..., "images": [...], "labels": [[age, gender, race], ...]}``
    conflicting_dropped: list[dict[str, Any]] = field(default_factory=list)
    unique_images: int = 0  #: usable images after deduplication, before ``limit``


# ------------------------------------------------------------------------------ parsing


def parse_name(name: str) -> Labels | str:
    """Labels of a UTKFace file name, or the reason it can't be used.

    ``"25_1_3_20170119171504380.jpg.chip.jpg"`` -> ``Labels(age=25, gender=1, race=3)``.
    Whitespace around fields is tolerated (one release file has a space before ``.jpg``);
    the date field is not interpreted. Reasons are short phrases such as
    ``"expected age_gender_race_date, got 3 fields"`` or ``"race 7 out of range 0-4"``.
    """
    if not name.lower().endswith((".jpg", ".jpeg")):
        return "not a .jpg file"
    fields = [f.strip() for f in name.split(".", 1)[0].split("_")]
    if len(fields) != 4:
        return f"expected age_gender_race_date, got {len(fields)} field{'s' * (len(fields) != 1)}"
    values = []
    for key, text in zip(("age", "gender", "race"), fields[:3], strict=True):
        if not (text.isascii() and text.isdigit()):
            return f"{key} {text!r} is not a whole number"
        values.append(int(text))
    age, gender, race = values
    lo, hi = int(AGE_RANGE[0]), int(AGE_RANGE[1])
    if not lo <= age <= hi:
        return f"age {age} out of range {lo}-{hi}"
    if gender >= len(GENDERS):
        return f"gender {gender} out of range 0-{len(GENDERS) - 1}"
    if race >= len(RACES):
        return f"race {race} out of range 0-{len(RACES) - 1}"
    if not fields[3]:
        return "empty date field"
    return Labels(age, gender, race)


# ----------------------------------------------------------------------------- indexing


def jpeg_problem(data: bytes) -> str:
    """Why the bytes ``data`` are not a whole JPEG ("" when they are), without decoding them.

    A file cut short (a copy or download that stopped) never reaches its end-of-image marker
    (``faceattr.jpeg.jpeg_is_complete``, the check ``run`` makes too); the training pipeline
    would fail on it mid-epoch, far from the file's name.
    """
    if data[:3] != _JPEG_MAGIC:
        return "not a JPEG (bad magic bytes)"
    if not jpeg_is_complete(data):
        return "truncated JPEG (its image data stops before the end-of-image marker)"
    return ""


def _hash_file(path: Path) -> tuple[str, str]:
    """(SHA-1 hex digest of the bytes, ``jpeg_problem`` of them: "" for a whole JPEG)."""
    data = path.read_bytes()
    return hashlib.sha1(data).hexdigest(), jpeg_problem(data)


def content_hashes(folder: Path, files: list[tuple[str, int, int]], cache_dir: Path | None) -> dict[str, tuple]:
    """``{name: (sha1, problem)}`` for ``files`` = [(name relative to ``folder``, size, mtime_ns)];
    ``problem`` is ``jpeg_problem`` of the bytes ("" for a whole JPEG).

    Hashes are cached in ``cache_dir/sha1-v<version>-<folder hash>.csv`` keyed by name, size and
    modification time, so only new or changed files are read on later runs.
    """
    cache_file = None
    known: dict[tuple[str, int, int], tuple[str, str]] = {}
    if cache_dir is not None:
        digest = hashlib.sha1(str(folder).encode()).hexdigest()[:10]
        cache_file = Path(cache_dir) / f"sha1-v{_CACHE_VERSION}-{digest}.csv"
        if cache_file.is_file():
            try:
                old = pd.read_csv(cache_file, dtype={"image": str, "sha1": str, "problem": str}, keep_default_na=False)
                known = {(n, int(s), int(m)): (h, str(j)) for n, s, m, h, j in
                         zip(*(old[c] for c in _CACHE_COLUMNS), strict=True)}
            except (OSError, ValueError, KeyError, pd.errors.ParserError) as exc:
                log.warning("%s: unreadable hash cache, hashing again (%s)", cache_file, exc)
    hashes, new = {}, 0
    for name, size, mtime in files:
        hit = known.get((name, size, mtime))
        if hit is None:
            hit = _hash_file(folder / name)
            new += 1
        hashes[name] = hit
    log.info("hashed %d files, %d from cache", new, len(files) - new)
    if cache_file is not None and (new or len(known) != len(files)):
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        rows = [(n, s, m, *hashes[n]) for n, s, m in files]
        tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
        pd.DataFrame(rows, columns=_CACHE_COLUMNS).to_csv(tmp, index=False)
        os.replace(tmp, cache_file)
    return hashes


def _strata_keys(frame: pd.DataFrame, columns: Iterable[str]) -> np.ndarray:
    columns = list(columns)
    if not columns:
        return np.full(len(frame), "all", dtype=object)
    keys = frame[columns[0]].astype(str)
    for column in columns[1:]:
        keys = keys + "/" + frame[column].astype(str)
    return keys.to_numpy(dtype=object)


def _spread(keys: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A number in [0, 1) per row: evenly spaced within each group of equal ``keys``.

    A group of ``n`` rows gets ``(j + offset) / n`` for ``j = 0..n-1`` in random order, with
    one random ``offset`` in [0, 1) per group. Any interval of length ``p`` then holds
    ``p * n`` rows of every group, rounded up or down (systematic sampling).
    """
    u = np.empty(len(keys))
    for key in sorted(set(keys)):  # sorted: the same draws for the same rows every time
        rows = np.flatnonzero(keys == key)
        u[rng.permutation(rows)] = (np.arange(len(rows)) + rng.random()) / len(rows)
    return u


def stratified_sample(frame: pd.DataFrame, n: int, rng: np.random.Generator) -> np.ndarray:
    """Positions (ascending) of ``n`` rows of ``frame`` chosen by ``rng`` in proportion to the
    (age bin, gender, race) strata (:func:`_spread`)."""
    u = _spread(_strata_keys(frame, STRATA), rng)
    return np.sort(np.argsort(u, kind="stable")[:n])


def _scan_names(folder: Path) -> tuple[list[os.DirEntry], dict[str, Labels], list[tuple[str, int, int]],
                                       list[tuple[str, str]]]:
    """The files directly in ``folder`` (hidden ones and folders left out), sorted by name; the
    labels of those whose names parse; their (name, bytes, mtime in ns) for hashing; and
    (name, reason) of those whose names don't parse."""
    with os.scandir(folder) as it:
        entries = sorted((e for e in it if not e.name.startswith(".") and e.is_file()), key=lambda e: e.name)
    skipped: list[tuple[str, str]] = []
    parsed: dict[str, Labels] = {}
    files: list[tuple[str, int, int]] = []
    for entry in entries:
        labels = parse_name(entry.name)
        if isinstance(labels, str):
            skipped.append((entry.name, labels))
            continue
        st = entry.stat()
        parsed[entry.name] = labels
        files.append((entry.name, st.st_size, st.st_mtime_ns))
    return entries, parsed, files, skipped


def _drop_conflicting(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[dict]]:
    """Byte-identical files (same ``sha1``): the rows of ``frame`` without the groups whose labels
    disagree, and those groups (``sha1``, ``images``, ``labels``), each logged."""
    n_labels = frame.groupby("sha1")[["age", "gender", "race"]].nunique().max(axis=1)
    conflicting_sha1 = set(n_labels.index[n_labels > 1])
    conflicting = []
    for sha1, group in frame[frame["sha1"].isin(conflicting_sha1)].groupby("sha1", sort=True):
        conflicting.append({"sha1": sha1, "images": group["image"].tolist(),
                            "labels": group[["age", "gender", "race"]].to_numpy().tolist()})
        log.debug("dropped %d identical images under conflicting labels: %s", len(group), ", ".join(group["image"]))
    if conflicting:
        log.warning("dropped %d byte-identical images in %d groups under conflicting labels (listed in "
                    "data_summary.json)", sum(len(c["images"]) for c in conflicting), len(conflicting))
    return frame[~frame["sha1"].isin(conflicting_sha1)], conflicting


def index_images(
    folder: Path,
    limit: int | None = None,
    seed: int = 0,
    cache_dir: Path | None = None,
    age_bin_edges: Iterable[float] = DEFAULT_AGE_BIN_EDGES,
) -> DatasetIndex:
    """Parse, hash and deduplicate the images directly in ``folder``.

    Hidden files (``.*``) and sub-folders are ignored; other files whose names don't parse
    or whose bytes aren't a whole JPEG (``jpeg_problem``: wrong magic bytes, cut short) are
    skipped, each logged as one warning with its reason.
    ``limit`` keeps that many images (after deduplication), chosen by ``seed`` in
    proportion to the (age bin, gender, race) strata; the choice doesn't depend on the
    filesystem's order. ``cache_dir`` keeps content hashes between runs (None: no cache).
    """
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    if limit is not None and int(limit) < 1:
        raise ConfigError(f"data.limit: must be a positive number of images or null, got {limit}")
    edges = [float(e) for e in age_bin_edges]

    entries, parsed, files, skipped = _scan_names(folder)
    hashes = content_hashes(folder, files, cache_dir)

    rows = []
    for name, _, _ in files:
        sha1, problem = hashes[name]
        if problem:  # found here, by name, not by TensorFlow in the middle of an epoch
            skipped.append((name, problem))
            continue
        rows.append((name, str(folder / name), *parsed[name], sha1))
    skipped.sort()
    for name, reason in skipped:
        log.warning("skipped %s: %s", name, reason)
    frame = pd.DataFrame(rows, columns=["image", "path", "age", "gender", "race", "sha1"])
    frame = frame.astype({"image": str, "path": str, "age": "int64", "gender": "int64", "race": "int64", "sha1": str})
    if frame.empty:
        raise DataError(f"{folder}: no usable images ({len(entries)} files, {len(skipped)} skipped)")
    frame["age_bin"] = age_to_bin(frame["age"].to_numpy(), edges)

    kept, conflicting = _drop_conflicting(frame)
    unique = kept.drop_duplicates("sha1", keep="first")  # frame is sorted: the first name wins
    duplicates_removed = len(kept) - len(unique)
    unique = unique.reset_index(drop=True)

    if limit is not None and int(limit) < len(unique):
        unique = unique.iloc[stratified_sample(unique, int(limit), np.random.default_rng(seed))].reset_index(drop=True)

    log.info("indexed %s: %d files, %d skipped, %d duplicates removed, %d conflicting groups dropped "
             "(%d images), %d unique images, %d used", folder, len(entries), len(skipped), duplicates_removed,
             len(conflicting), sum(len(c["images"]) for c in conflicting), len(kept) - duplicates_removed,
             len(unique))
    return DatasetIndex(frame=unique, folder=folder, files_seen=len(entries), skipped=skipped,
                        duplicates_removed=duplicates_removed, conflicting_dropped=conflicting,
                        unique_images=len(kept) - duplicates_removed)


# -------------------------------------------------------------------------------- split


def _split_ratios(ratios: Mapping[str, Any]) -> np.ndarray:
    try:
        values = np.array([float(ratios[s]) for s in SPLITS])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"data.split: needs numbers for {', '.join(SPLITS)} ({exc})") from exc
    if (values < 0).any() or abs(values.sum() - 1.0) > 1e-3:
        given = ", ".join(f"{s}={v:g}" for s, v in zip(SPLITS, values, strict=True))
        raise ConfigError(f"data.split: ratios must be >= 0 and sum to 1, got {given}")
    return values / values.sum()


def _split_strata(frame: pd.DataFrame, min_size: int) -> np.ndarray:
    """Stratum key per row: (age bin, gender, race), coarsened where a stratum is small.

    Rows of strata with fewer than ``min_size`` members fall back to (age bin, gender), then
    to age bin, then to one common stratum.
    """
    keys = _strata_keys(frame, STRATA)
    for coarser in (STRATA[:2], STRATA[:1], ()):
        counts = pd.Series(keys).map(pd.Series(keys).value_counts()).to_numpy()
        rare = counts < min_size
        if not rare.any():
            break
        keys[rare] = _strata_keys(frame[rare], coarser)
    return keys


def split_index(frame: pd.DataFrame, ratios: Mapping[str, Any], seed: int) -> pd.DataFrame:
    """A copy of ``frame`` with a ``split`` column in ``{"train", "val", "test"}``.

    Stratified on (age bin, gender, race) with rare strata merged (see the module
    docstring); deterministic for a given seed and set of file names. Raises
    :class:`DataError` if an image or its content would land in two splits.
    """
    values = _split_ratios(ratios)
    out = frame.sort_values("image").reset_index(drop=True)
    positive = values[values > 0]
    min_size = math.ceil(1.0 / positive.min() - 1e-9)  # enough rows to give each split one
    u = _spread(_split_strata(out, min_size), np.random.default_rng(seed))
    which = np.minimum(np.searchsorted(np.cumsum(values), u, side="right"), len(SPLITS) - 1)
    out["split"] = np.array(SPLITS, dtype=object)[which]
    check_split_disjoint(out)
    counts = out["split"].value_counts()
    log.info("split (seed %d): %s", seed, ", ".join(f"{s} {counts.get(s, 0)}" for s in SPLITS))
    return out


def limit_training(frame: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    """``frame`` with at most ``limit`` training rows; val and test rows are all kept.

    The rows kept are chosen by ``seed`` in proportion to the (age bin, gender, race) strata,
    as ``limit`` chooses images before the split. The split itself is made on every image
    first, so a smaller training split never moves an image into val or test.
    """
    if limit is not None and int(limit) < 1:
        raise ConfigError(f"data.train_limit: must be a positive number of images or null, got {limit}")
    train = (frame["split"] == "train").to_numpy()
    if limit is None or int(limit) >= int(train.sum()):
        return frame
    rows = np.flatnonzero(train)
    kept = rows[stratified_sample(frame.iloc[rows], int(limit), np.random.default_rng([seed, 1]))]
    log.info("data.train_limit: %d of %d training images kept", int(limit), len(rows))
    return frame.iloc[np.sort(np.concatenate([np.flatnonzero(~train), kept]))].reset_index(drop=True)


def check_split_disjoint(frame: pd.DataFrame) -> None:
    """Raise :class:`DataError` if a file name or a content hash occurs in two splits."""
    for column in ("image", "sha1"):
        n_splits = frame.groupby(column)["split"].nunique()
        leaks = n_splits.index[n_splits > 1]
        if len(leaks):
            raise DataError(f"split leaks: {len(leaks)} {column} values in more than one split, e.g. {leaks[0]}")


# ---------------------------------------------------------------------------- rebalance


def rebalance(frame: pd.DataFrame, cfg: Mapping[str, Any] | None) -> pd.DataFrame:
    """A copy of ``frame`` with ``copies`` (int >= 1) and ``weight`` (float) per row.

    Only training rows change; val and test rows keep ``copies = 1`` and ``weight = 1.0``.
    With ``n_b`` the training images of age bin ``b`` and ``n_max`` the largest ``n_b``:

    * ``none``: copies 1, weight 1.
    * ``oversample`` (``target``, ``max_copies``):
      ``copies_b = min(max_copies, max(1, ceil(target * n_max / n_b)))``, so each bin
      reaches ``target * n_max`` images where ``max_copies`` allows; weight 1.
    * ``weights`` (``power``, ``max_weight``):
      ``w_b = min(max_weight, (n_max / n_b) ** power)``, then divided by the mean of ``w``
      over the training rows, so the mean training weight is 1; copies 1.
    """
    cfg = settings(RebalanceConfig, cfg, "rebalance.")  # keys left out take the schema's defaults
    name = cfg.name
    out = frame.copy()
    out["copies"] = 1
    out["weight"] = 1.0
    train = (out["split"] == "train").to_numpy()
    if name == "none" or not train.any():
        return out
    n_bin = out.loc[train, "age_bin"].value_counts()
    n_max = float(n_bin.max())
    bins = out.loc[train, "age_bin"]
    if name == "oversample":
        target, max_copies = float(cfg.target), int(cfg.max_copies)
        copies = np.clip(np.ceil(target * n_max / n_bin.to_numpy(float) - 1e-9), 1, max_copies).astype(int)
        out.loc[train, "copies"] = bins.map(dict(zip(n_bin.index, copies, strict=True))).to_numpy()
    elif name == "weights":
        power, max_weight = float(cfg.power), float(cfg.max_weight)
        w = np.minimum(max_weight, (n_max / n_bin.to_numpy(float)) ** power)
        per_row = bins.map(dict(zip(n_bin.index, w, strict=True))).to_numpy(float)
        out.loc[train, "weight"] = per_row / per_row.mean()
    else:
        raise ConfigError(f"rebalance.name: unknown method {name!r} (none|oversample|weights)")
    log.info("rebalance %s: %d training rows -> %d images per epoch", name, int(train.sum()),
             int(out.loc[train, "copies"].sum()))
    return out


def write_split_csv(frame: pd.DataFrame, path: Path) -> Path:
    """Write ``image,split,copies`` (one row per image, sorted by name) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.sort_values("image")[["image", "split", "copies"]].to_csv(path, index=False)
    return path
