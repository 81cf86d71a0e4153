"""Retrain jobs: the served model fine-tuned on a session's corrections, one job at a time.

A job runs the toolkit's own commands as subprocesses (``python src/main.py train`` and
``evaluate``), so it trains exactly as ``train`` does and a crash there can't take the server
down. Steps, in a new run folder under ``serve.retrain_dir`` (``outputs/retrain/...``):

1. the session's corrected crops and a ``labels.csv`` (``corrections/``), every face with all
   three labels (the corrected values, the model's own prediction for the rest);
2. ``train`` with ``train.init_from=<served model>`` on the served model's own data and split
   (its ``trained_with`` data settings), the corrections appended to the training split only
   (``data.extra_labels``, each seen ``serve.retrain_copies`` times an epoch), and
   ``train.eval=true``: the new model's figures on that test split (``metrics.json``);
3. ``evaluate`` of the served model on the same test split (``served/metrics.json``).

The job's ``metrics`` hold both side by side. The served model never changes here: a new
model becomes the served one only through ``promote``.

Jobs are the server's state, in the database: one runs at a time per server (a second
request gets :class:`JobBusy` with the running job's id), a page finds its session's job
after a reload, and a running job names its phase with a count (:class:`JobProgress`:
extracting features, training epoch k of n, exporting, scoring) and the seconds the phase has
left where the command's own counters tell them.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import queue
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from faceattr.config import model_schema
from faceattr.errors import FaceAttrError, InputError
from faceattr.models.info import ModelInfo
from faceattr.overrides import quote
from faceattr.resources import toolkit_command, work_root
from faceattr.serve.store import Store

log = logging.getLogger(__name__)

#: The figures shown side by side (a model's ``metrics.json`` keys), with lower-is-better.
KEY_METRICS: tuple[tuple[str, bool], ...] = (
    ("age_mae", True), ("gender_accuracy", False), ("race_accuracy", False), ("race_macro_f1", False),
    ("race_balanced_accuracy", False),
)
#: Model settings a retrain sets afresh: its heads were trained already, so no heads-only phase.
FRESH_MODEL_SETTINGS: dict[str, Any] = {"heads_epochs": 0}
EPOCH_LINE = re.compile(r"Epoch (\d+)/(\d+)")
#: Keras' progress bar within an epoch: "23/46 ━━━━..." (bold escape codes around the count).
STEP_LINE = re.compile(r"^\s*(?:\x1b\[[0-9;]*m)*(\d+)/(\d+)(?:\x1b\[[0-9;]*m)*\s")
#: tqdm's bar: "FaceNet features (augmented copy 1):  23%|██▎   | 460/2000 [00:30<01:40, 15.2img/s]".
TQDM_LINE = re.compile(r"^\s*(?P<desc>[^\r\n|]*?):\s+\d+%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)\s*"
                       r"\[[0-9:]+<(?P<left>[0-9:]+|\?)")
EXPORTED_LINE = re.compile(r"Exported \S+")
#: Seconds between writes of a job's phase text while its counts change (a bar prints 10 lines a second).
PHASE_WRITE_EVERY_S = 1.0
CORRECTIONS_DIR = "corrections"
SERVED_DIR = "served"


LABEL_COLUMNS = ("file", "age", "gender", "race")


def correction_rows(store: Store, session: str) -> list[dict[str, Any]]:
    """The session's corrected faces as ``labels.csv`` rows (``file`` = the crop's stored name),
    every face with all three labels: the corrected values, the model's own for the rest."""
    return [{"file": face.crop, "age": fix.get("age", round(face.age)), "gender": fix.get("gender", face.gender),
             "race": fix.get("race", face.race)} for face, fix in store.corrected_faces(session)]


def labels_csv(rows: list[dict[str, Any]]) -> str:
    """``rows`` as the text of a ``labels.csv`` (``file, age, gender, race``)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(LABEL_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def write_corrections(store: Store, session: str, folder: Path) -> int:
    """Copy the session's corrected crops into ``folder`` with a ``labels.csv`` (what ``evaluate
    --labels`` and ``data.extra_labels`` read); a face whose crop is gone is left out. Returns the count."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for row in correction_rows(store, session):
        src = store.file_path(row["file"])
        if src is None or not src.is_file():
            continue
        shutil.copyfile(src, folder / row["file"])
        rows.append(row)
    (folder / "labels.csv").write_text(labels_csv(rows))
    return len(rows)


def model_overrides(family: str, stored: dict[str, Any]) -> list[str]:
    """``model.<key>=<value>`` for every setting of a model's stored config that its family's
    schema still has (nested ones as dotted keys), so the retrained model is built as it was."""
    schema = OmegaConf.structured(model_schema(family))
    out: list[str] = []

    def walk(prefix: str, node: dict[str, Any]) -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if dotted == "name" or OmegaConf.select(schema, dotted, default="<absent>") == "<absent>":
                continue
            if isinstance(value, dict):
                walk(dotted + ".", value)
            elif isinstance(value, list):
                if all(isinstance(v, int | float | str | bool) for v in value):
                    out.append(f"model.{dotted}=[{','.join(quote(v) for v in value)}]")
            elif dotted in FRESH_MODEL_SETTINGS:
                out.append(f"model.{dotted}={quote(FRESH_MODEL_SETTINGS[dotted])}")
            else:
                out.append(f"model.{dotted}={quote(value)}")

    walk("", stored)
    return out


def _data_overrides(data: dict) -> list[str]:
    """Overrides that select the data and split a model was trained on (its ``trained_with.data``)."""
    out = []
    if data.get("path"):
        out.append(f"data.path={quote(data['path'])}")
    if "limit" in data:
        out.append(f"data.limit={quote(data['limit'])}")
    for key in ("train", "val", "test", "seed"):
        if key in (data.get("split") or {}):
            out.append(f"data.split.{key}={quote(data['split'][key])}")
    return out


def train_overrides(served: Path, run_dir: Path, labels_csv: Path, cfg: DictConfig) -> list[str]:
    """The ``train`` overrides of a retrain job: the served model's family, data and split, its
    weights as the start, the corrections on the training split; then ``serve.retrain_overrides``."""
    info = ModelInfo.read(served)
    trained = info.trained_with or {}
    data, model = trained.get("data") or {}, trained.get("model") or {}
    out = [f"model={info.model_type}", f"train.epochs={int(cfg.serve.retrain_epochs)}",
           f"train.learning_rate={float(cfg.serve.retrain_learning_rate)}",
           f"paths.cache={quote(str(cfg.paths.cache))}"]
    out += _data_overrides(data)
    # The augmentation it was trained with: a FaceNet model's cached augmented copies are reused.
    out += [f"data.augment.{key}={quote(value)}" for key, value in (data.get("augment") or {}).items()
            if key in cfg.data.augment and not isinstance(value, dict | list)]
    out += model_overrides(info.model_type, model)
    # A stratified sample of the training split is replayed, not all of it: enough to keep a few
    # corrections from pulling the model away, small enough that a job ends in minutes.
    replay = cfg.serve.retrain_replay
    out += [f"data.train_limit={'null' if replay is None else int(replay)}"]
    out += [str(o) for o in cfg.serve.retrain_overrides]
    # Last, so no extra override can change what the job is.
    return out + [f"train.init_from={quote(str(served))}", f"data.extra_labels={quote(str(labels_csv))}",
                  f"data.extra_copies={int(cfg.serve.retrain_copies)}", "train.eval=true",
                  f"hydra.run.dir={quote(str(run_dir))}"]


def served_overrides(served: Path, run_dir: Path, cfg: DictConfig) -> list[str]:
    """The ``evaluate`` overrides scoring the served model on the same data and test split."""
    info = ModelInfo.read(served)
    data = (info.trained_with or {}).get("data") or {}
    out = [f"model={info.model_type}", f"model_path={quote(str(served))}", f"hydra.run.dir={quote(str(run_dir))}",
           f"paths.cache={quote(str(cfg.paths.cache))}"]
    out += _data_overrides(data)
    return out


def side_by_side(new: dict, served: dict) -> dict[str, Any]:
    """``{"split", "n", "figures": [{"metric", "served", "new", "lower_is_better"}], "new", "served"}``."""
    figures = [{"metric": k, "served": served.get(k), "new": new.get(k), "lower_is_better": lower}
               for k, lower in KEY_METRICS if k in new or k in served]
    return {"split": new.get("split", "test"), "n": new.get("n_test", new.get("n")), "figures": figures,
            "new": {k: new.get(k) for k, _ in KEY_METRICS}, "served": {k: served.get(k) for k, _ in KEY_METRICS}}


class TrainProgress:
    """How far a ``train`` command is, 0..1, from the lines it prints: its ``Epoch i/N`` lines and
    Keras' step counter within each epoch (an epoch of a large model takes minutes)."""

    def __init__(self) -> None:
        self.epoch, self.epochs = 0, 1  # epochs finished before the current one; epochs in all

    def feed(self, line: str) -> float | None:
        """The fraction done after ``line``, or None when the line tells nothing new."""
        m = EPOCH_LINE.search(line)
        if m:
            self.epoch, self.epochs = int(m[1]) - 1, max(1, int(m[2]))
            return min(1.0, self.epoch / self.epochs)
        m = STEP_LINE.match(line)
        if m and int(m[2]) > 0:
            return min(1.0, (self.epoch + min(1.0, int(m[1]) / int(m[2]))) / self.epochs)
        return None


def _seconds(clock: str) -> float | None:
    """tqdm's "01:40" or "1:02:03" as seconds; None for "?"."""
    if not clock or clock == "?":
        return None
    total = 0.0
    for part in clock.split(":"):
        total = total * 60 + float(part)
    return total


class JobProgress:
    """What a ``train`` or ``evaluate`` command of a job is doing, from the lines it prints:
    ``fraction`` (0..1 of the command, from its epochs and steps: :class:`TrainProgress`),
    ``phase`` (one line with a count, e.g. ``"training: epoch 2 of 3, step 40 of 46"``) and
    ``eta_s`` (seconds the phase has left, from its own counter's rate; None where unknown).
    ``first``: the phase before the command prints anything; ``scoring``: the phase after the
    last epoch and the export (the test split scored)."""

    def __init__(self, first: str, scoring: str) -> None:
        self.train = TrainProgress()
        self.fraction = 0.0
        self.phase: str = first
        self.eta_s: float | None = None
        self.scoring = scoring
        self._trained = False
        self._epoch_start: float | None = None

    def feed(self, line: str, now: float | None = None) -> bool:
        """Take one line (``now``: monotonic seconds); True when the phase, its count or the
        fraction changed."""
        now = time.monotonic() if now is None else now
        before = (self.phase, self.fraction)
        m = TQDM_LINE.match(line)
        if m:
            n, total = int(m["n"]), int(m["total"])
            what = "extracting features" if "feature" in m["desc"].lower() else self.scoring
            self.phase, self.eta_s = f"{what}: {n} of {total} faces", _seconds(m["left"])
            return (self.phase, self.fraction) != before
        if EXPORTED_LINE.search(line):
            self._trained, self.phase, self.eta_s = True, self.scoring, None
            return True
        if self._trained:  # the counters of the scoring that follows the export
            step = STEP_LINE.match(line)
            if step:
                self.phase = f"{self.scoring}: batch {step[1]} of {step[2]}"
            return (self.phase, self.fraction) != before
        epoch = EPOCH_LINE.search(line)
        done = self.train.feed(line)
        if done is None:
            return False
        self.fraction = done
        if epoch:
            self._epoch_start = now
            self.phase, self.eta_s = f"training: epoch {epoch[1]} of {epoch[2]}", None
            return True
        step = STEP_LINE.match(line)
        if step:
            i, n = int(step[1]), int(step[2])
            self.phase = f"training: epoch {self.train.epoch + 1} of {self.train.epochs}, step {i} of {n}"
            if self._epoch_start is not None and i > 0:
                self.eta_s = (now - self._epoch_start) / i * (n - i)  # this epoch's steps left
            if i >= n and self.train.epoch + 1 >= self.train.epochs:
                self._trained, self.phase, self.eta_s = True, "exporting the model", None
        return (self.phase, self.fraction) != before


class JobBusy(FaceAttrError):
    """A retrain is queued or running already: one at a time per server (HTTP 409)."""

    def __init__(self, job: str) -> None:
        super().__init__(f"a retrain is running already (job {job[:8]}); one runs at a time, try again when it ends")
        self.job = job


class JobRunner:
    """A queue of retrain jobs worked by one thread, so one job runs at a time."""

    def __init__(self, store: Store, cfg: DictConfig, served: Path) -> None:
        self.store = store
        self.cfg = cfg
        self.served = Path(served).resolve()
        self.retrain_dir = Path(str(cfg.serve.retrain_dir))
        self._queue: queue.Queue[tuple[str, str]] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="faceattr-retrain", daemon=True)
        self._proc: subprocess.Popen | None = None
        self._stopping = False
        self.store.fail_unfinished_jobs()
        self._thread.start()

    def submit(self, session: str) -> str:
        """Queue a retrain on the session's corrections; raises ``InputError`` when there are
        none and :class:`JobBusy` while any job of this server is queued or running."""
        if not self.store.corrected_faces(session):
            raise InputError("retrain: no corrections yet; correct a face's age, gender or race first")
        job, active = self.store.add_job(session)
        if active is not None:
            raise JobBusy(active)
        self._queue.put((job, session))
        return job

    def stop(self) -> None:
        """End a running subprocess (the server is stopping); queued jobs stay failed in the database."""
        self._stopping = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()

    def _loop(self) -> None:
        while True:
            job, session = self._queue.get()
            try:
                self._run(job, session)
            except Exception as exc:  # a job's failure is the job's state, never the server's
                log.warning("retrain job %s failed: %s", job, exc)
                self.store.update_job(job, state="failed", phase="failed", eta_s=None,
                                      error=str(exc).splitlines()[0] if str(exc) else repr(exc))

    def _command(self, job: str, overrides: list[str], log_path: Path, span: tuple[float, float],
                 command: str, progress: JobProgress) -> None:
        """Run ``faceattr <command> <overrides>`` (this interpreter, this copy of the toolkit); its
        progress into ``span`` of the job's, its phase as ``progress`` reads the command's output."""
        argv = [*toolkit_command(), command, *overrides]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
        lo, hi = span
        last_error = ""
        shown, written = 0.0, 0.0
        self.store.update_job(job, phase=progress.phase, eta_s=None)
        with log_path.open("a") as logf:
            logf.write("$ " + " ".join(argv) + "\n")
            self._proc = subprocess.Popen(argv, cwd=work_root(), env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                          errors="replace")
            assert self._proc.stdout is not None
            for line in self._proc.stdout:
                logf.write(line)
                if line.startswith("error:"):
                    last_error = line.strip()
                if not progress.feed(line):
                    continue
                # Written when it has grown by a percent, else once a second: a progress bar
                # prints a line per step.
                now, grown = time.monotonic(), progress.fraction - shown >= 0.01
                if grown or now - written >= PHASE_WRITE_EVERY_S:
                    shown, written = max(shown, progress.fraction), now
                    self.store.update_job(job, progress=round(lo + (hi - lo) * shown, 3), phase=progress.phase,
                                          eta_s=None if progress.eta_s is None else round(progress.eta_s))
            code = self._proc.wait()
            self._proc = None
        if self._stopping:
            raise FaceAttrError(f"{command}: stopped with the server")
        if code != 0:
            raise FaceAttrError(f"{command} failed ({last_error or f'exit code {code}'}); see {log_path}")
        self.store.update_job(job, progress=hi)

    def _run(self, job: str, session: str) -> None:
        stamp = time.strftime("%Y-%m-%d/%H-%M-%S")
        run_dir = (self.retrain_dir / f"{stamp}-{job[:8]}").resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        self.store.update_job(job, state="running", progress=0.02, run_dir=str(run_dir),
                              phase="copying the corrected faces")
        labels_dir = run_dir / CORRECTIONS_DIR
        count = write_corrections(self.store, session, labels_dir)
        if count == 0:
            raise InputError("retrain: the corrected faces' crops are gone (deleted after serve.retention_hours)")
        log_path = run_dir / "retrain.log"
        self._command(job, train_overrides(self.served, run_dir, labels_dir / "labels.csv", self.cfg), log_path,
                      (0.05, 0.8), "train",
                      JobProgress("preparing the data", "scoring the new model on the test split"))
        scoring = "scoring the served model on the test split"
        self._command(job, served_overrides(self.served, run_dir / SERVED_DIR, self.cfg), log_path, (0.8, 0.98),
                      "evaluate", JobProgress(scoring, scoring))
        new = json.loads((run_dir / "metrics.json").read_text())
        served = json.loads((run_dir / SERVED_DIR / "metrics.json").read_text())
        metrics = side_by_side(new, served) | {"corrections": count, "served_model": str(self.served),
                                               "new_model": str(run_dir / "model")}
        (run_dir / "retrain_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        self.store.update_job(job, state="done", progress=1.0, metrics=metrics, phase="done", eta_s=None)
        log.info("retrain job %s done: %s", job, run_dir)
