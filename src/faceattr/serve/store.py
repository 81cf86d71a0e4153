"""The web app's storage: one SQLite database and a folder of files named by random ids.

``<serve.data_dir>/serve.sqlite3`` holds the sessions that uploaded something (a row each,
written with the first upload; see ``sessions.py``), their uploads (the photo, its annotated
copy), each face (box, prediction, the crop the model saw) and its corrections, and the
retrain jobs. Every file lives in ``<serve.data_dir>/files/`` under a random hex name: a
client's file name is never used for a path. Every query that reads or changes an upload
takes the session id, so one visitor can never see or change another's uploads. Uploads
older than ``serve.retention_hours`` are deleted with their files, crops and corrections by
:meth:`Store.purge`.

Failing safe: the folder and database are checked writable when the store opens
(:class:`StorageError`, one line, when not), :meth:`Store.problem` tells cheaply whether they
are still there (the routes answer 503 otherwise) and a write that fails leaves the database
and the files as they were.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faceattr.errors import FaceAttrError

DB_FILE = "serve.sqlite3"
FILES_DIR = "files"
#: What a stored file's name looks like: 32 hex digits and a suffix (never a client's name).
FILE_NAME = re.compile(r"[0-9a-f]{32}\.(?:jpg|png)")
UPLOAD_ID = re.compile(r"[0-9a-f]{32}")

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, csrf TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY, session TEXT NOT NULL, created REAL NOT NULL, width INTEGER NOT NULL,
    height INTEGER NOT NULL, original TEXT NOT NULL, annotated TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS uploads_session ON uploads(session, created);
CREATE TABLE IF NOT EXISTS faces (
    upload TEXT NOT NULL, idx INTEGER NOT NULL, x INTEGER, y INTEGER, w INTEGER, h INTEGER,
    age REAL, gender TEXT, race TEXT, gender_confidence REAL, race_confidence REAL,
    aligned INTEGER, crop TEXT NOT NULL, PRIMARY KEY (upload, idx));
CREATE TABLE IF NOT EXISTS corrections (
    upload TEXT NOT NULL, idx INTEGER NOT NULL, age INTEGER, gender TEXT, race TEXT,
    updated REAL NOT NULL, PRIMARY KEY (upload, idx));
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, session TEXT NOT NULL, created REAL NOT NULL, state TEXT NOT NULL,
    progress REAL NOT NULL, run_dir TEXT, metrics TEXT, error TEXT);
"""


class StorageError(FaceAttrError):
    """The data folder or its database cannot be used (missing, read-only, full): HTTP 503, or one
    line and exit 2 when ``serve`` starts."""


#: Columns added to ``jobs`` since its first version (added to an older database when it opens):
#: what a running job is doing (``phase``, e.g. "training: epoch 2 of 3, step 40 of 46") and
#: the seconds that phase has left, where they can be told (``eta_s``).
JOB_COLUMNS_ADDED = (("phase", "TEXT"), ("eta_s", "REAL"))


@dataclass
class Face:
    """One face of an upload: ``box`` (x, y, w, h) in pixels of the upright photo, the model's
    ``age`` (years), ``gender``/``race`` with confidences in [0, 1], and its crop's file name."""

    index: int
    box: tuple[int, int, int, int]
    age: float
    gender: str
    race: str
    gender_confidence: float
    race_confidence: float
    aligned: bool
    crop: str


def new_id() -> str:
    """32 random hex digits (128 bits)."""
    return secrets.token_hex(16)


class Store:
    """The database and the files folder under ``data_dir`` (created when missing)."""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir)
        self.files_dir = self.data_dir / FILES_DIR
        self.path = self.data_dir / DB_FILE
        self._lock = threading.Lock()
        where = f"serve.data_dir={self.data_dir}"
        try:
            self.files_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"{where}: the data folder cannot be created or written "
                               f"({exc.strerror or exc})") from None
        problem = self._write_probe()
        if problem:
            raise StorageError(f"{where}: {problem}")
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(SCHEMA)
            self._add_columns("jobs", JOB_COLUMNS_ADDED)
            self._db.execute("INSERT OR REPLACE INTO settings VALUES ('opened', ?)", (str(time.time()),))
            self._inode = self.path.stat().st_ino
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(f"{where}: its database {DB_FILE} cannot be written ({exc})") from None

    def _add_columns(self, table: str, columns: tuple[tuple[str, str], ...]) -> None:
        have = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
        for name, kind in columns:
            if name not in have:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")

    def _write_probe(self) -> str | None:
        """None when a file can be written into and removed from the files folder, else the problem."""
        probe = self.files_dir / f".probe-{secrets.token_hex(4)}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            return f"the data folder is not writable ({exc.strerror or exc})"
        return None

    def problem(self) -> str | None:
        """None while the data folder, its files folder and the database opened at start are all
        still in place (a few ``stat`` calls: cheap enough for every request), else what is wrong."""
        try:
            if not self.files_dir.is_dir():
                return "the data folder is missing"
            if self.path.stat().st_ino != self._inode:
                return "the database file was replaced"
        except OSError:
            return "the database file is missing"
        return None

    def check_usable(self) -> None:
        """Raise ``StorageError`` naming :meth:`problem` when there is one (the routes answer 503)."""
        problem = self.problem()
        if problem:
            raise StorageError(problem)

    def health(self) -> str | None:
        """:meth:`problem`, then a file and a database row actually written: None when usable."""
        problem = self.problem() or self._write_probe()
        if problem:
            return problem
        try:
            with self._tx() as db:
                db.execute("INSERT OR REPLACE INTO settings VALUES ('health', ?)", (str(time.time()),))
        except StorageError as exc:
            return str(exc)
        return None

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction (the connection is shared by the server's threads)."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                raise StorageError(f"the database cannot be written ({exc})") from None

    def _query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise StorageError(f"the database cannot be read ({exc})") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- files ----------------------------------------------------------------------------
    def file_path(self, name: str) -> Path | None:
        """The path of a stored file, or None unless ``name`` is a well-formed stored name."""
        if not FILE_NAME.fullmatch(name):
            return None
        return self.files_dir / name

    def new_file(self, suffix: str) -> tuple[str, Path]:
        """A fresh random file name with ``suffix`` (".jpg" or ".png") and its path."""
        name = new_id() + suffix
        return name, self.files_dir / name

    def _remove_files(self, names: list[str]) -> None:
        """Remove stored files; one that can't be removed is left (a stray file, never a missing one)."""
        for name in names:
            path = self.file_path(name)
            if path is not None:
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)

    def remove_files(self, names: list[str]) -> None:
        """Remove files written for a change that was then not stored."""
        self._remove_files(names)

    # -- sessions -------------------------------------------------------------------------
    def secret(self) -> bytes:
        """The key that signs session cookies and CSRF tokens: made at the first start, kept in
        the database so cookies outlive a restart."""
        with self._tx() as db:
            row = db.execute("SELECT value FROM settings WHERE key = 'secret'").fetchone()
            if row is None:
                row = {"value": secrets.token_hex(32)}
                db.execute("INSERT INTO settings VALUES ('secret', ?)", (row["value"],))
        return bytes.fromhex(row["value"])

    def session_count(self) -> int:
        """How many sessions are stored."""
        return int(self._query("SELECT COUNT(*) AS n FROM sessions")[0]["n"])

    # -- uploads --------------------------------------------------------------------------
    def add_upload(self, session: str, upload_id: str, size: tuple[int, int], original: str, annotated: str,
                   faces: list[Face]) -> None:
        """Record an upload (``size`` = (width, height) pixels) and its faces; the session's
        first upload records the session too."""
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO sessions VALUES (?, '', ?)", (session, time.time()))
            db.execute("INSERT INTO uploads VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (upload_id, session, time.time(), size[0], size[1], original, annotated))
            db.executemany("INSERT INTO faces VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           [(upload_id, f.index, *f.box, f.age, f.gender, f.race, f.gender_confidence,
                             f.race_confidence, int(f.aligned), f.crop) for f in faces])

    def upload(self, session: str, upload_id: str) -> dict[str, Any] | None:
        """An upload of ``session`` with its faces and corrections, or None (unknown, or another's)."""
        rows = self._query("SELECT * FROM uploads WHERE id = ? AND session = ?", (upload_id, session))
        if not rows:
            return None
        up = dict(rows[0])
        up["faces"] = [self._face(r) for r in self._query("SELECT * FROM faces WHERE upload = ? ORDER BY idx",
                                                           (upload_id,))]
        up["corrections"] = {r["idx"]: {k: r[k] for k in ("age", "gender", "race") if r[k] is not None}
                             for r in self._query("SELECT * FROM corrections WHERE upload = ?", (upload_id,))}
        return up

    @staticmethod
    def _face(r: sqlite3.Row) -> Face:
        return Face(r["idx"], (r["x"], r["y"], r["w"], r["h"]), r["age"], r["gender"], r["race"],
                    r["gender_confidence"], r["race_confidence"], bool(r["aligned"]), r["crop"])

    def owns_file(self, session: str, name: str) -> bool:
        """Whether ``name`` is the photo, annotated copy or a face crop of one of the session's uploads."""
        rows = self._query(
            "SELECT 1 FROM uploads WHERE session = ? AND (original = ? OR annotated = ?) UNION ALL "
            "SELECT 1 FROM faces f JOIN uploads u ON u.id = f.upload WHERE u.session = ? AND f.crop = ? LIMIT 1",
            (session, name, name, session, name))
        return bool(rows)

    def uploads(self, session: str) -> list[dict[str, Any]]:
        """The session's uploads, newest first: ``id``, ``created`` (Unix seconds), ``faces``."""
        rows = self._query("SELECT u.id, u.created, (SELECT COUNT(*) FROM faces f WHERE f.upload = u.id) AS faces "
                           "FROM uploads u WHERE u.session = ? ORDER BY u.created DESC", (session,))
        return [dict(r) for r in rows]

    @staticmethod
    def merged(current: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
        """A face's correction ``current`` with ``values`` (age, gender, race; any subset) applied:
        a value of None clears that field. Only the fields set are returned."""
        return {k: v for k, v in {**current, **values}.items() if v is not None}

    def save_correction(self, session: str, upload_id: str, index: int, fix: dict[str, Any],
                        annotated: str) -> None:
        """Store a face's whole correction ``fix`` (empty: none) and point the upload at its new
        annotated copy ``annotated`` (written already), in one transaction; the old copy is
        removed once that is committed. Raises :class:`StorageError`; then nothing changed."""
        with self._tx() as db:
            old = db.execute("SELECT annotated FROM uploads WHERE id = ? AND session = ?",
                             (upload_id, session)).fetchone()
            if old is None:
                raise StorageError(f"upload {upload_id}: deleted meanwhile")
            if fix:
                db.execute("INSERT OR REPLACE INTO corrections VALUES (?, ?, ?, ?, ?, ?)",
                           (upload_id, index, fix.get("age"), fix.get("gender"), fix.get("race"), time.time()))
            else:
                db.execute("DELETE FROM corrections WHERE upload = ? AND idx = ?", (upload_id, index))
            db.execute("UPDATE uploads SET annotated = ? WHERE id = ? AND session = ?",
                       (annotated, upload_id, session))
        if old["annotated"] != annotated:
            self._remove_files([old["annotated"]])

    def corrected_faces(self, session: str) -> list[tuple[Face, dict[str, Any]]]:
        """Every corrected face of the session's uploads: (face, its correction), oldest first."""
        rows = self._query(
            "SELECT f.*, c.age AS c_age, c.gender AS c_gender, c.race AS c_race FROM corrections c "
            "JOIN faces f ON f.upload = c.upload AND f.idx = c.idx JOIN uploads u ON u.id = c.upload "
            "WHERE u.session = ? ORDER BY u.created, f.idx", (session,))
        out = []
        for r in rows:
            fix = {k: r[f"c_{k}"] for k in ("age", "gender", "race") if r[f"c_{k}"] is not None}
            if fix:
                out.append((self._face(r), fix))
        return out

    def purge(self, older_than_s: float) -> int:
        """Delete uploads created more than ``older_than_s`` seconds ago, with their files, faces
        and corrections; then the sessions left without uploads or a running job, and finished
        jobs that old. Returns how many uploads."""
        cutoff = time.time() - older_than_s
        with self._tx() as db:
            old = [r["id"] for r in db.execute("SELECT id FROM uploads WHERE created < ?", (cutoff,))]
            files: list[str] = []
            for uid in old:
                files += [r["crop"] for r in db.execute("SELECT crop FROM faces WHERE upload = ?", (uid,))]
                row = db.execute("SELECT original, annotated FROM uploads WHERE id = ?", (uid,)).fetchone()
                files += [row["original"], row["annotated"]]
                for table, key in (("faces", "upload"), ("corrections", "upload"), ("uploads", "id")):
                    db.execute(f"DELETE FROM {table} WHERE {key} = ?", (uid,))
            db.execute("DELETE FROM jobs WHERE created < ? AND state NOT IN ('queued', 'running')", (cutoff,))
            db.execute("DELETE FROM sessions WHERE id NOT IN (SELECT session FROM uploads) "
                       "AND id NOT IN (SELECT session FROM jobs)")
        self._remove_files(files)
        return len(old)

    # -- jobs -----------------------------------------------------------------------------
    def add_job(self, session: str) -> tuple[str, str | None]:
        """A new queued job for ``session``, unless one is queued or running already (one at a
        time per server): returns (the new job's id, None) or ("", the unfinished job's id)."""
        job = new_id()
        with self._tx() as db:
            active = db.execute("SELECT id FROM jobs WHERE state IN ('queued', 'running') ORDER BY created LIMIT 1"
                                ).fetchone()
            if active is not None:
                return "", active["id"]
            db.execute("INSERT INTO jobs (id, session, created, state, progress, phase) "
                       "VALUES (?, ?, ?, 'queued', 0, 'waiting to start')", (job, session, time.time()))
        return job, None

    def update_job(self, job: str, **values: Any) -> None:
        """Set some of ``state``, ``progress`` (0..1), ``phase``, ``eta_s``, ``run_dir``,
        ``metrics`` (a dict), ``error``."""
        if "metrics" in values:
            values["metrics"] = json.dumps(values["metrics"])
        sets = ", ".join(f"{k} = ?" for k in values)
        with self._tx() as db:
            db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*values.values(), job))

    def job(self, session: str, job: str) -> dict[str, Any] | None:
        """A job of ``session`` (None for an unknown one or another session's)."""
        rows = self._query("SELECT * FROM jobs WHERE id = ? AND session = ?", (job, session))
        if not rows:
            return None
        out = dict(rows[0])
        out["metrics"] = json.loads(out["metrics"]) if out["metrics"] else None
        return out

    def latest_job(self, session: str) -> dict[str, Any] | None:
        """The session's most recent job (running or finished), or None."""
        rows = self._query("SELECT id FROM jobs WHERE session = ? ORDER BY created DESC LIMIT 1", (session,))
        return self.job(session, rows[0]["id"]) if rows else None

    def fail_unfinished_jobs(self) -> None:
        """Jobs left queued or running by a server that stopped: marked failed."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET state = 'failed', error = 'the server stopped before the job finished' "
                       "WHERE state IN ('queued', 'running')")
