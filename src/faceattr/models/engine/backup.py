"""Backups a training can always resume from, and the marks of a finished run.

Keras's ``BackupAndRestore`` overwrites one weights file in place: a run stopped while it
writes leaves half a file, and every rerun then fails to load it. :class:`AtomicBackup`
writes each backup (weights with the optimizer's state, the epoch, the history so far, the
state of early stopping, plateau decay and the best checkpoint) to ``partial.*`` files, renames
them into place and only then commits them with their ``<slot>.json`` (sha256 of every file).
The previous backup stays until the new one is committed, so a stop at any moment leaves a
good one. A damaged backup costs one log line: the run goes on from the one before, or from
scratch, and ``history.csv`` is cut to the epochs the restored weights have seen.

A backup folder (``<run dir>/backup/<phase>``) holds ``epoch-NNNN.*`` slots (the newest two),
``final.*`` once ``fit`` has returned, and nothing after the run has finished: the run
folder's ``train_summary.json``, written last, marks a finished run (``training.state``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from faceattr import writes
from faceattr.errors import ConfigError
from faceattr.hashing import file_sha256

log = logging.getLogger(__name__)

PARTIAL = "partial"  # the prefix of files being written; never loaded, removed on restore
LEGACY = ("latest.weights.h5", "training_metadata.json")  # keras.callbacks.BackupAndRestore's files
MONITOR_STATE = ("wait", "best", "best_epoch", "cooldown_counter")


def fingerprint(model_cfg: dict, split_csv: Path) -> dict:
    """What a backup must share with the run that resumes it: the model settings and the split."""
    split_csv = Path(split_csv)
    split = file_sha256(split_csv) if split_csv.is_file() else None
    return {"model": model_cfg, "split_sha256": split}


def check_resumable(backup_root: Path, current: dict) -> None:
    """Refuse (one line) to resume backups made with other model settings or another split.

    Weights of another model would not load, and weights trained on another split may have
    seen this run's validation or test faces; either way the run's own command resumes it.
    """
    for folder in sorted(p for p in Path(backup_root).glob("*") if p.is_dir()):
        for slot in _slots(folder)[:1]:
            stored = slot.get("fingerprint") or {}
            changed = []
            if stored.get("split_sha256") and current.get("split_sha256") \
                    and stored["split_sha256"] != current["split_sha256"]:
                changed.append("the data split (split.csv)")
            old, new = stored.get("model") or {}, current.get("model") or {}
            changed += [f"model.{key}" for key in sorted(old.keys() & new.keys()) if old[key] != new[key]]
            if changed:
                raise ConfigError(f"{folder}: this unfinished training was backed up with other settings "
                                  f"({', '.join(changed)} differ); run its own command again to resume it, "
                                  "or give a new hydra.run.dir")


def truncate_history(csv_path: Path, epochs: int, logs: Sequence[dict] | None = None) -> None:
    """Leave ``csv_path`` (a CSVLogger file) holding epochs ``0 .. epochs-1``, each once.

    Rows beyond the restored epoch (and repeats, and a last line cut short) are dropped, so the
    resumed ``fit`` appends each epoch exactly once. Rows the file lacks are rebuilt from
    ``logs`` (the history a backup carries) when it has them all.
    """
    csv_path = Path(csv_path)
    if epochs <= 0:
        if csv_path.exists():
            log.debug("%s: cleared, the run starts from scratch", csv_path)
            csv_path.unlink()
        return
    text = csv_path.read_text() if csv_path.is_file() else ""
    lines = text.splitlines(keepends=True)
    header, rows = (lines[0], {}) if lines and lines[0].endswith("\n") else ("", {})
    width = len(next(csv.reader([header]))) if header else 0
    for line in lines[1:] if header else []:
        fields = next(csv.reader([line]), [])
        if not line.endswith("\n") or len(fields) != width:
            continue
        try:
            epoch = int(fields[0])
        except ValueError:
            continue
        if 0 <= epoch < epochs:
            rows[epoch] = line  # a repeated epoch: the later row, written by the run these weights come from
    if len(rows) < epochs and logs is not None and len(logs) >= epochs:
        out = io.StringIO()
        keys = sorted({key for row in logs[:epochs] for key in row} - {"epoch"})
        writer = csv.DictWriter(out, fieldnames=["epoch", *keys], lineterminator="\n")
        writer.writeheader()
        for epoch, row in enumerate(logs[:epochs]):
            writer.writerow({**row, "epoch": epoch})
        new_text = out.getvalue()
        log.warning("%s: lacked %d of the %d epochs the backup covers; rebuilt from the backup",
                    csv_path, epochs - len(rows), epochs)
    else:
        if len(rows) < epochs:
            log.warning("%s: holds %d of the %d epochs the backup covers", csv_path, len(rows), epochs)
        new_text = header + "".join(rows[e] for e in sorted(rows))
    if new_text != text:
        writes.write_text(csv_path, new_text)


class AtomicBackup(keras.callbacks.Callback):
    """Backs the training up after every epoch (and once more when ``fit`` returns); resumes from it.

    Call :meth:`restore` before ``fit``: it loads the newest good backup into the model, cuts
    ``history_csv`` to the epochs it covers and makes ``fit`` start after them. Put this callback
    after ``monitors`` (the callbacks whose state it keeps: early stopping, plateau decay, the
    best checkpoint) and after the CSV logger, so each backup sees the epoch's final state.
    """

    def __init__(self, backup_dir: Path, history_csv: Path, monitors: Sequence[keras.callbacks.Callback] = (),
                 fingerprint: dict | None = None):
        super().__init__()
        self.dir = Path(backup_dir)
        self.history_csv = Path(history_csv)
        self.monitors = list(monitors)
        self.fingerprint = fingerprint
        self.history: list[dict] = []
        self.epochs_done = 0
        self._committed: str | None = None  # the slot written last (kept beside the next one)
        self._monitor_state: dict = {}
        self._best_weights: list[np.ndarray] | None = None

    # -------------------------------------------------------------------------- restore

    def restore(self, model: keras.Model) -> tuple[int, bool]:
        """Load the newest good backup into ``model``; returns (epochs it covers, whether fit had returned).

        With no usable backup the model is left as it was and ``(0, False)`` comes back.
        """
        tried: list[str] = []  # "name (why)" of each damaged backup
        slots = _slots(self.dir, tried)
        self._clean(slots)
        snapshot = None
        restored = None
        for meta in slots:
            if snapshot is None:
                _build_optimizer(model)
                snapshot = _snapshot(model)
            why = self._load(model, meta)
            if why is None:
                restored = meta
                break
            tried.append(f"{meta['slot']} ({why})")
            _remove_slot(self.dir, meta)
        if restored is None and (self.dir / LEGACY[0]).is_file():
            if snapshot is None:
                _build_optimizer(model)
                snapshot = _snapshot(model)
            restored = self._load_legacy(model, tried)
        if restored is None and snapshot is not None:
            _reset(model, snapshot)
        epoch = int(restored["epoch"]) if restored else 0
        complete = bool(restored and restored.get("complete"))
        resumed = f"resuming after epoch {epoch}{' (fit had finished)' if complete else ''}"
        if tried:  # one line, whatever was damaged
            outcome = f"{resumed} from {restored['slot']}" if restored else "starting from scratch"
            log.warning("%s: damaged backup %s; %s", self.dir, ", ".join(tried), outcome)
        elif restored:
            log.info("%s: %s", self.dir, resumed)
        history = list((restored or {}).get("history") or [])
        truncate_history(self.history_csv, epoch, history if len(history) >= epoch else None)
        self.history = history[:epoch]
        self.epochs_done = epoch
        self._committed = restored["slot"] if restored and restored["slot"] != "legacy" else None
        self._monitor_state = (restored or {}).get("monitors") or {}
        model._initial_epoch = epoch or None  # fit() starts after the restored epochs (as in BackupAndRestore)
        return epoch, complete

    def _clean(self, slots: list[dict]) -> None:
        """Remove what an interrupted write left: ``partial.*`` files and files no slot commits."""
        if not self.dir.is_dir():
            return
        kept = {name for meta in slots for name in (f"{meta['slot']}.json", *_files(meta).values())}
        stray = sorted(p.name for p in self.dir.iterdir() if p.is_file() and p.name not in kept | set(LEGACY))
        for name in stray:
            (self.dir / name).unlink()
        if stray:
            log.debug("%s: removed %s, left by an interrupted backup", self.dir, ", ".join(stray))

    def _load(self, model: keras.Model, meta: dict) -> str | None:
        """Load one slot into ``model``; returns why it can't be used, or None."""
        files = _files(meta)
        for kind, name in files.items():
            path = self.dir / name
            if not path.is_file():
                return f"{name} missing"
            if file_sha256(path) != meta["files"][kind]["sha256"]:
                return f"{name} fails its checksum"
        try:
            _build_optimizer(model)
            model.load_weights(self.dir / files["weights"])
            best = None
            if "best" in files:
                with np.load(self.dir / files["best"]) as npz:
                    best = [npz[f"arr_{i}"] for i in range(len(npz.files))]
                if [w.shape for w in best] != [tuple(w.shape) for w in model.weights]:
                    return "best weights do not fit the model"
        except Exception as exc:  # a file that checks out but doesn't load: another model
            return _why(exc)
        self._best_weights = best
        return None

    def _load_legacy(self, model: keras.Model, tried: list[str]) -> dict | None:
        """A backup keras.callbacks.BackupAndRestore wrote (runs started before this callback)."""
        try:
            epoch = int(json.loads((self.dir / LEGACY[1]).read_text())["epoch"])
            _build_optimizer(model)
            model.load_weights(self.dir / LEGACY[0])
        except Exception as exc:
            tried.append(f"{LEGACY[0]} ({_why(exc)})")
            for name in LEGACY:
                (self.dir / name).unlink(missing_ok=True)
            return None
        return {"slot": "legacy", "epoch": epoch, "complete": False}

    def on_train_begin(self, logs=None):
        # After the monitors reset themselves: give them back the state the backup kept.
        for key, callback in self._keyed_monitors():
            for attr, value in self._monitor_state.get(key, {}).items():
                setattr(callback, attr, value)
            if isinstance(callback, keras.callbacks.EarlyStopping) and callback.restore_best_weights \
                    and key in self._monitor_state:
                if self._best_weights is not None:
                    callback.best_weights = self._best_weights
                elif callback.best_epoch == self.epochs_done - 1:  # the best epoch was the last one backed up
                    callback.best_weights = self.model.get_weights()
        self._best_weights = None

    # --------------------------------------------------------------------------- backup

    def on_epoch_end(self, epoch, logs=None):
        row = {key: _plain(value) for key, value in (logs or {}).items()}
        self.history = [*self.history[:epoch], row]
        self.epochs_done = epoch + 1
        self._save(f"epoch-{epoch + 1:04d}", complete=False)

    def on_train_end(self, logs=None):
        # After early stopping put its best weights back: what train_run saves.
        self._save("final", complete=True)
        self.model._initial_epoch = None

    def _keyed_monitors(self) -> list[tuple[str, keras.callbacks.Callback]]:
        return [(f"{i}:{type(cb).__name__}", cb) for i, cb in enumerate(self.monitors)]

    def _save(self, slot: str, complete: bool) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        written = {"weights": self.dir / f"{PARTIAL}.weights.h5"}
        self.model.save_weights(written["weights"], overwrite=True)
        monitors = {}
        if not complete:
            for key, callback in self._keyed_monitors():
                monitors[key] = {attr: _plain(getattr(callback, attr)) for attr in MONITOR_STATE
                                 if hasattr(callback, attr)}
                if isinstance(callback, keras.callbacks.EarlyStopping) and callback.best_weights is not None \
                        and callback.best_epoch != self.epochs_done - 1:
                    written["best"] = self.dir / f"{PARTIAL}.best.npz"
                    np.savez(written["best"], *callback.best_weights)
        files = {}
        for kind, tmp in written.items():
            writes.fsync_path(tmp)
            name = f"{slot}{tmp.name.removeprefix(PARTIAL)}"
            files[kind] = {"name": name, "sha256": file_sha256(tmp)}
            os.replace(tmp, self.dir / name)
        meta = {"slot": slot, "epoch": self.epochs_done, "complete": complete, "files": files,
                "history": self.history, "monitors": monitors, "fingerprint": self.fingerprint}
        writes.write_text(self.dir / f"{slot}.json", json.dumps(meta, indent=1))  # the commit
        writes.fsync_path(self.dir)
        keep = {slot, self._committed}
        for meta in _slots(self.dir):
            if meta["slot"] not in keep:
                _remove_slot(self.dir, meta)
        for name in LEGACY:
            (self.dir / name).unlink(missing_ok=True)
        self._committed = slot


class SafeInterrupt(keras.callbacks.Callback):
    """Ctrl-C during ``fit`` stops it at the next batch's end, or at the epoch's end after its backup.

    Python raises KeyboardInterrupt wherever the main thread is, and raised inside TensorFlow's
    eager ops (the TensorBoard writer, say) it can crash the process. While entered (``with``),
    a first Ctrl-C is only noted and raised from here, in plain Python; a second one interrupts
    at once. Put it last, after the backup.
    """

    def __init__(self):
        super().__init__()
        self.pending = False
        self._previous = None

    def __enter__(self) -> SafeInterrupt:
        # Only over Python's own handler, in the main thread: an ignored or custom SIGINT stays so.
        if threading.current_thread() is threading.main_thread() \
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._note)
        return self

    def __exit__(self, exc_type, *exc_info) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
        pending, self.pending = self.pending, False
        if pending and exc_type is None:  # asked after the last check (the final backup is written)
            raise KeyboardInterrupt

    def _note(self, signum, frame) -> None:
        if self.pending:
            signal.default_int_handler(signum, frame)  # asked twice: now
        self.pending = True

    def _stop_if_asked(self, *args, **kwargs) -> None:
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt

    on_train_batch_end = on_test_batch_end = on_epoch_end = _stop_if_asked


def _slots(folder: Path, damaged: list[str] | None = None) -> list[dict]:
    """The committed slots of a backup folder, newest first (a finished ``fit`` before any epoch)."""
    found = []
    for path in Path(folder).glob("*.json") if Path(folder).is_dir() else []:
        if path.name in LEGACY or path.name.startswith("."):
            continue
        try:
            meta = json.loads(path.read_text())
            meta["slot"], meta["epoch"] = path.stem, int(meta["epoch"])
            if not all(isinstance(e["name"], str) and isinstance(e["sha256"], str) for e in meta["files"].values()):
                raise ValueError("bad file entries")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            if damaged is not None:
                damaged.append(f"{path.name} (unreadable)")
                path.unlink(missing_ok=True)
            continue
        found.append(meta)
    return sorted(found, key=lambda m: (bool(m.get("complete")), m["epoch"]), reverse=True)


def has_backup(folder: Path) -> bool:
    """Whether ``folder`` holds a backup to resume from (this callback's or Keras' older one)."""
    return bool(_slots(folder)) or (Path(folder) / LEGACY[0]).is_file()


def _files(meta: dict) -> dict[str, str]:
    return {kind: str(entry["name"]) for kind, entry in meta["files"].items()}


def _remove_slot(folder: Path, meta: dict) -> None:
    (Path(folder) / f"{meta['slot']}.json").unlink(missing_ok=True)  # uncommit first
    for name in _files(meta).values():
        (Path(folder) / name).unlink(missing_ok=True)


def _build_optimizer(model: keras.Model) -> None:
    """The optimizer's variables must exist before a backup's optimizer state can load into them."""
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)


def _snapshot(model: keras.Model) -> tuple[list[np.ndarray], list[np.ndarray]]:
    optimizer = [np.array(v) for v in model.optimizer.variables] if model.optimizer is not None else []
    return model.get_weights(), optimizer


def _reset(model: keras.Model, snapshot: tuple[list[np.ndarray], list[np.ndarray]]) -> None:
    """Undo a partial load: back to the weights (and optimizer state) the run started with."""
    weights, optimizer = snapshot
    model.set_weights(weights)
    if model.optimizer is not None:
        for variable, value in zip(model.optimizer.variables, optimizer, strict=False):
            variable.assign(value)


def _why(exc: Exception) -> str:
    """An exception in a few words, for a one-line report."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:100]}" if text else type(exc).__name__


def _plain(value: Any) -> Any:
    """A JSON-friendly copy of a log or monitor value (numpy scalars, tensors)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    try:
        array = np.asarray(keras.ops.convert_to_numpy(value))
    except Exception:
        return str(value)
    return array.item() if array.ndim == 0 else array.tolist()
