"""The data step every command shares: sources -> one frame, split, aligned, rebalanced.

::

    sources (data.path, data.sources.*)
      -> index each (UTKFace file names, or a labels.csv: exact ages, age groups, missing labels)
      -> deduplicate by content across sources (the first source keeps a shared photo)
      -> leave out photos byte-identical to a held-out evaluation set (data.held_out)
      -> split each source (its own ``split`` column honoured, else stratified as UTKFace is)
      -> [train_limit] -> faces onto the chip template (sources with ``align``; cached)
      -> rebalance (training split only) -> mixing weights -> [extra_labels] -> split.csv

With ``data.path`` alone (UTKFace), the frame, split and ``split.csv`` are exactly what they
were before sources existed. The frame's columns: ``image`` (unique; ``<source>/<file>`` for a
labelled source), ``path`` (the face the model reads), ``age`` (exact years, NaN for an age
group), ``age_lo``/``age_hi`` (years, the exact age twice for exact ages, ``age_hi`` inf for an
open group, NaN without an age), ``gender``/``race`` (-1 where not labelled), ``age_bin``,
``sha1`` (of the file at ``path``), ``source``, ``split``, ``copies``, ``weight``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from faceattr.config import DataConfig, settings
from faceattr.data.archive import resolve_image_folder
from faceattr.data.extra_labels import append_extra, extra_training_rows
from faceattr.data.labelled import index_labelled
from faceattr.data.labels_csv import LABELS_FILE
from faceattr.data.utkface import (
    SPLITS,
    DatasetIndex,
    check_split_disjoint,
    content_hashes,
    index_images,
    limit_training,
    rebalance,
    split_index,
    stratified_sample,
    write_split_csv,
)
from faceattr.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class Source:
    """One training source as configured: ``name``, ``path`` (folder or archive), mixing ``weight``,
    whether its photos are put onto the chip template (``align``)."""

    name: str
    path: str
    weight: float = 1.0
    align: bool = False


@dataclass
class SourceIndex:
    """One source after indexing: its rows (before the split) and what was left out, with reasons."""

    source: Source
    frame: pd.DataFrame
    folder: Path
    kind: str  #: "utkface" (labels in file names) or "labels" (labels.csv)
    utkface: DatasetIndex | None = None  #: UTKFace's own index record (skipped names, duplicates)
    left_out: list[dict[str, str]] = field(default_factory=list)  #: {"image", "reason"} after indexing
    chips: dict[str, int] = field(default_factory=dict)  #: alignment outcome counts (:class:`FaceAligner`)


@dataclass
class PreparedData:
    """Everything training, evaluation and statistics need from the data step."""

    frame: pd.DataFrame  #: see the module docstring
    sources: list[SourceIndex]
    age_bin_edges: list[float]  #: years
    rebalance: dict[str, Any]  #: the rebalance config used
    split_csv: Path
    summary: dict[str, Any]  #: JSON-ready counts, see :func:`summarize`


def configured_sources(data_cfg: Mapping[str, Any]) -> list[Source]:
    """``data.path`` first (named ``data.name``), then ``data.sources`` in their order."""
    out = [Source(str(data_cfg["name"]), str(data_cfg["path"]), float(data_cfg["weight"]), bool(data_cfg["align"]))]
    for name, node in (data_cfg.get("sources") or {}).items():
        out.append(Source(str(name), str(node["path"]), float(node["weight"]), bool(node["align"])))
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise DataError(f"data.sources: two sources are named {sorted({n for n in names if names.count(n) > 1})[0]!r}")
    return out


def _utkface_rows(index: DatasetIndex, name: str) -> pd.DataFrame:
    frame = index.frame.copy()
    frame["age"] = frame["age"].astype(float)
    frame["age_lo"] = frame["age"]
    frame["age_hi"] = frame["age"]
    frame["source"] = name
    frame["own_split"] = None
    return frame


def index_source(source: Source, extract_dir: Path, edges: list[float], limit: int | None,
                 seed: int) -> SourceIndex:
    """Resolve (extract once) and index one source: a ``labels.csv`` inside it makes it a labelled
    source, else its files are read as UTKFace chips."""
    folder = resolve_image_folder(Path(source.path), extract_dir)
    if (folder / LABELS_FILE).is_file():
        frame = index_labelled(folder, source.name, edges, cache_dir=extract_dir)
        if limit is not None and int(limit) < len(frame):
            frame = frame.iloc[stratified_sample(frame, int(limit), np.random.default_rng(seed))]
        return SourceIndex(source, frame.reset_index(drop=True), folder, "labels")
    index = index_images(folder, limit=limit, seed=seed, cache_dir=extract_dir, age_bin_edges=edges)
    return SourceIndex(source, _utkface_rows(index, source.name), folder, "utkface", utkface=index)


def _drop(entry: SourceIndex, mask: np.ndarray, reason: str) -> None:
    """Leave the rows of ``mask`` out of ``entry``, recording why."""
    if mask.any():
        entry.left_out += [{"image": i, "reason": reason} for i in entry.frame.loc[mask, "image"]]
        entry.frame = entry.frame[~mask].reset_index(drop=True)


def held_out_hashes(folders: list[str]) -> dict[str, str]:
    """SHA-1 of every file directly in the held-out ``folders`` (missing folders are skipped)."""
    out = {}
    for folder in folders:
        p = Path(folder)
        if not p.is_dir():
            continue
        for f in sorted(p.iterdir()):
            if f.is_file() and not f.name.startswith("."):
                out[hashlib.sha1(f.read_bytes()).hexdigest()] = str(f)
    return out


def dedupe_across(entries: list[SourceIndex], held_out: dict[str, str]) -> None:
    """Leave out, in place, photos byte-identical to a held-out evaluation photo, photos whose
    content an earlier source already has, and copies within a source (all of them where their
    labels disagree, else all but the first)."""
    seen: set[str] = set()
    for entry in entries:
        sha1 = entry.frame["sha1"]
        refused = sha1.isin(set(held_out)).to_numpy()
        if refused.any():
            log.warning("%s: %d photo(s) byte-identical to held-out evaluation photos left out (e.g. %s = %s)",
                        entry.source.name, int(refused.sum()), entry.frame.loc[refused, "image"].iloc[0],
                        held_out[sha1[refused].iloc[0]])
        _drop(entry, refused, "byte-identical to a held-out evaluation photo")
        sha1 = entry.frame["sha1"]
        earlier = sha1.isin(seen).to_numpy()
        if earlier.any():
            log.warning("%s: %d photo(s) byte-identical to a photo of an earlier source left out",
                        entry.source.name, int(earlier.sum()))
        _drop(entry, earlier, "byte-identical to a photo of an earlier source")
        # Copies within one source: kept once when their labels agree, all dropped when they don't
        # (which label is right can't be told), as UTKFace's are (utkface.index_images).
        labels = entry.frame[["age_lo", "age_hi", "gender", "race"]].fillna(-1.0)
        n_labels = labels.groupby(entry.frame["sha1"]).nunique().max(axis=1)
        conflicting = entry.frame["sha1"].isin(set(n_labels.index[n_labels > 1])).to_numpy()
        _drop(entry, conflicting, "byte-identical photos under conflicting labels")
        repeated = entry.frame["sha1"].duplicated().to_numpy()
        _drop(entry, repeated, "byte-identical to another photo of the same source")
        seen |= set(entry.frame["sha1"])


def split_source(entry: SourceIndex, split_cfg: Mapping[str, Any], seed: int) -> pd.DataFrame:
    """The source's rows with ``split``: its own ``split`` column where every row has one, else the
    stratified split (``utkface.split_index``) of the rows without one."""
    frame = entry.frame
    own = frame["own_split"]
    if own.notna().all():
        out = frame.assign(split=own.astype(str))
        counts = out["split"].value_counts()
        log.info("%s: its own split: %s", entry.source.name, ", ".join(f"{s} {counts.get(s, 0)}" for s in SPLITS))
        return out
    if own.notna().any():
        given = frame[own.notna()].assign(split=own[own.notna()].astype(str))
        rest = split_index(frame[own.isna()], split_cfg, seed)
        return pd.concat([given, rest], ignore_index=True)
    return split_index(frame, split_cfg, seed)


class AlignedPhoto(Protocol):
    """One photo's outcome from a :class:`FaceAligner`."""

    status: str  #: aligned | box | fallback | skipped
    chip: Path | None  #: the written chip (a JPEG), None when skipped
    reason: str  #: why it fell back or was skipped


class FaceAligner(Protocol):
    """Puts a source's photos onto the chip template, cached in ``cache_dir``.

    ``photos``: ``(sha1 of the photo's bytes, path)`` pairs; ``pad``: fraction of a photo's side
    added on every edge before detection; ``workers``: processes (None: the CPU count);
    ``weights_dir``: where the detector keeps its converted weights; ``desc``: the progress bar's
    label. Returns one :class:`AlignedPhoto` per pair, in order, and ``{state: n}`` for every state.

    The data step can't detect faces itself (the detectors are the inference floor's, above
    this one), so the commands that prepare data pass ``inference.chips.align_training_photos``:
    data stays free of the face pipeline, and a source without ``align`` never loads it.
    """

    def __call__(self, photos: Sequence[tuple[str, str]], cache_dir: Path, pad: float, workers: int | None,
                 weights_dir: str, desc: str) -> tuple[Sequence[AlignedPhoto], dict[str, int]]: ...


def align_source(entry: SourceIndex, frame: pd.DataFrame, data_cfg: Mapping[str, Any], cache_dir: Path,
                 aligner: FaceAligner) -> pd.DataFrame:
    """``frame`` (the source's split rows) with each photo replaced by its chip (``aligner``):
    ``path`` and ``sha1`` become the chip's; photos that could not be used are left out and recorded."""
    workers = data_cfg["align_workers"]
    results, entry.chips = aligner(list(zip(frame["sha1"], frame["path"], strict=True)),
                                   Path(str(data_cfg["extract_dir"])), float(data_cfg["align_pad"]),
                                   None if workers is None else int(workers), str(cache_dir),
                                   f"aligning {entry.source.name}")
    log.info("%s: %s onto the chip template", entry.source.name,
             ", ".join(f"{n} {state}" for state, n in entry.chips.items()))
    keep = np.array([r.chip is not None for r in results])
    for r, image in zip(results, frame["image"], strict=True):
        if r.chip is None:
            entry.left_out.append({"image": image, "reason": r.reason})
    out = frame[keep].copy()
    chips = [r for r in results if r.chip is not None]
    out["path"] = [str(r.chip) for r in chips]
    folder = Path(chips[0].chip).parent if chips else Path(".")  # every chip of one setting is in one folder
    stats = [Path(r.chip).stat() for r in chips]
    files = [(Path(r.chip).name, st.st_size, st.st_mtime_ns) for r, st in zip(chips, stats, strict=True)]
    hashes = content_hashes(folder, files, Path(str(data_cfg["extract_dir"])))  # cached by name, size and time
    out["sha1"] = [hashes[name][0] for name, _, _ in files]
    out["chip"] = [r.status for r in chips]
    return out.reset_index(drop=True)


def apply_mixing_weights(frame: pd.DataFrame, weights: Mapping[str, float]) -> pd.DataFrame:
    """Training rows' ``weight`` times their source's mixing weight, then scaled so the mean
    training weight (per image per epoch, copies counted) stays what it was."""
    train = (frame["split"] == "train").to_numpy()
    factor = frame["source"].map(dict(weights)).to_numpy(float)
    if not train.any() or np.allclose(factor[train], 1.0):
        return frame
    out = frame.copy()
    copies = out.loc[train, "copies"].to_numpy(float)
    before = float((out.loc[train, "weight"] * copies).sum())
    out.loc[train, "weight"] = out.loc[train, "weight"] * factor[train]
    after = float((out.loc[train, "weight"] * copies).sum())
    out.loc[train, "weight"] *= before / after
    return out


def summarize(prepared_sources: list[SourceIndex], frame: pd.DataFrame,
              rebalance_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-ready counts of the data step (``data_summary.json``): the first source's UTKFace
    record at the top level, as before sources existed, and every source's own under ``sources``."""
    by_split = frame.groupby("split")
    first = prepared_sources[0].utkface
    out: dict[str, Any] = {}
    if first is not None:
        out.update({
            "folder": str(first.folder),
            "files_seen": first.files_seen,
            "skipped": [{"image": n, "reason": r} for n, r in first.skipped],
            "duplicates_removed": first.duplicates_removed,
            "conflicting_dropped": first.conflicting_dropped,
            "conflicting_images_dropped": sum(len(c["images"]) for c in first.conflicting_dropped),
            "unique_images": first.unique_images,
        })
    out.update({
        "images_used": len(frame),
        "split_images": {s: int(by_split.size().get(s, 0)) for s in SPLITS},
        "split_images_after_rebalancing": {s: int(by_split["copies"].sum().get(s, 0)) for s in SPLITS},
        "split_weight_sum": {s: round(float(by_split["weight"].sum().get(s, 0.0)), 3) for s in SPLITS},
        "rebalance": dict(rebalance_cfg),
    })
    if len(prepared_sources) > 1 or first is None:
        out["sources"] = {}
        for entry in prepared_sources:
            rows = frame[frame["source"] == entry.source.name]
            reasons: dict[str, int] = {}
            for item in entry.left_out:
                reasons[item["reason"]] = reasons.get(item["reason"], 0) + 1
            out["sources"][entry.source.name] = {
                "path": entry.source.path, "folder": str(entry.folder), "kind": entry.kind,
                "weight": entry.source.weight, "aligned_onto_template": entry.source.align,
                "images_used": len(rows),
                "split_images": {s: int((rows["split"] == s).sum()) for s in SPLITS},
                "exact_ages": int(rows["age"].notna().sum()),
                "age_groups": int((rows["age"].isna() & rows["age_lo"].notna()).sum()),
                "no_age": int(rows["age_lo"].isna().sum()),
                "no_gender": int((rows["gender"] < 0).sum()),
                "no_race": int((rows["race"] < 0).sum()),
                "alignment": entry.chips,
                "left_out": len(entry.left_out),
                "left_out_reasons": reasons,
                "left_out_images": entry.left_out[:200],
            }
    return out


def prepare_dataset(data_cfg: Mapping[str, Any], rebalance_cfg: Mapping[str, Any], out_dir: Path,
                    cache_dir: Path | None = None, aligner: FaceAligner | None = None) -> PreparedData:
    """Resolve, index, deduplicate, split, align and rebalance every source of ``data_cfg`` (the
    ``cfg.data`` node); write ``split.csv`` into ``out_dir``. ``cache_dir`` keeps the detector's
    converted weights when photos are aligned (default: the extraction folder).

    ``aligner`` puts the photos of sources with ``align`` onto the chip template (see
    :class:`FaceAligner`); it is needed only when such a source is configured.
    """
    start = time.perf_counter()
    data_cfg = settings(DataConfig, data_cfg, "data.")
    extract_dir = Path(str(data_cfg["extract_dir"]))
    edges = [float(e) for e in data_cfg["age_bin_edges"]]
    split_cfg = data_cfg["split"]
    seed = int(split_cfg["seed"])
    limit = data_cfg["limit"]
    entries = [index_source(s, extract_dir, edges, None if limit is None else int(limit), seed)
               for s in configured_sources(data_cfg)]
    dedupe_across(entries, held_out_hashes([str(f) for f in data_cfg["held_out"]]))
    parts = []
    for entry in entries:
        if entry.frame.empty:
            raise DataError(f"{entry.source.path}: no usable images left in source {entry.source.name!r}")
        part = split_source(entry, split_cfg, seed)
        part = limit_training(part, data_cfg["train_limit"], seed)
        if entry.source.align:
            if aligner is None:
                raise ValueError(f"prepare_dataset: source {entry.source.name!r} is aligned (align: true) but no "
                                 "aligner was given (inference.chips.align_training_photos)")
            part = align_source(entry, part, data_cfg, Path(cache_dir or extract_dir), aligner)
        parts.append(part)
    frame = parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)
    frame = frame.drop(columns=["own_split"])
    if "chip" in frame:
        frame["chip"] = frame["chip"].fillna("chip")
    check_split_disjoint(frame)
    frame = rebalance(frame, rebalance_cfg)
    frame = apply_mixing_weights(frame, {e.source.name: e.source.weight for e in entries})
    if data_cfg["extra_labels"]:  # extra chips join the training split only, after split and rebalance
        extra = extra_training_rows(str(data_cfg["extra_labels"]), edges, int(data_cfg["extra_copies"]))
        frame = append_extra(frame, extra)
        log.info("data.extra_labels: %d extra training chips (x%d)", len(extra), int(data_cfg["extra_copies"]))
    split_csv = write_split_csv(frame, Path(out_dir) / "split.csv")
    reb = {k: (v if isinstance(v, str | int | float | bool) or v is None else str(v))
           for k, v in dict(rebalance_cfg or {}).items()}
    log.info("data ready in %.1f s: %d images from %d source(s), split written to %s", time.perf_counter() - start,
             len(frame), len(entries), split_csv)
    return PreparedData(frame=frame, sources=entries, age_bin_edges=edges, rebalance=reb, split_csv=split_csv,
                        summary=summarize(entries, frame, reb))
