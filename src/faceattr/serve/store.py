"""The web app's storage: one SQLite database and a folder of files named by random ids.

``<serve.data_dir>/serve.sqlite3`` holds the visitors' sessions (a cookie token and its CSRF
token), their uploads (the photo, its annotated copy), each face (box, prediction, the crop
the model saw) and its corrections, and the retrain jobs. Every file lives in
``<serve.data_dir>/files/`` under a random hex name: a client's file name is never used for a
path. Every query that reads or changes an upload takes the session id, so one visitor can
never see or change another's uploads. Uploads older than ``serve.retention_hours`` are
deleted with their files, crops and corrections by :meth:`Store.purge`.
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
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, session TEXT NOT NULL, created REAL NOT NULL, state TEXT NOT NULL,
    progress REAL NOT NULL, run_dir TEXT, metrics TEXT, error TEXT);
"""


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
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.data_dir / DB_FILE
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction (the connection is shared by the server's threads)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

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
        for name in names:
            path = self.file_path(name)
            if path is not None:
                path.unlink(missing_ok=True)

    # -- sessions -------------------------------------------------------------------------
    def new_session(self) -> tuple[str, str]:
        """A new (session id, CSRF token)."""
        sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        with self._tx() as db:
            db.execute("INSERT INTO sessions VALUES (?, ?, ?)", (sid, csrf, time.time()))
        return sid, csrf

    def csrf_of(self, session: str | None) -> str | None:
        """The CSRF token of a session, or None when there is no such session."""
        if not session:
            return None
        rows = self._query("SELECT csrf FROM sessions WHERE id = ?", (session,))
        return rows[0]["csrf"] if rows else None

    # -- uploads --------------------------------------------------------------------------
    def add_upload(self, session: str, upload_id: str, size: tuple[int, int], original: str, annotated: str,
                   faces: list[Face]) -> None:
        """Record an upload (``size`` = (width, height) pixels) and its faces."""
        with self._tx() as db:
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

    def set_annotated(self, session: str, upload_id: str, annotated: str) -> None:
        """Point an upload at a new annotated copy; the old file is removed."""
        with self._tx() as db:
            old = db.execute("SELECT annotated FROM uploads WHERE id = ? AND session = ?",
                             (upload_id, session)).fetchone()
            db.execute("UPDATE uploads SET annotated = ? WHERE id = ? AND session = ?", (annotated, upload_id, session))
        if old is not None and old["annotated"] != annotated:
            self._remove_files([old["annotated"]])

    def correct(self, upload_id: str, index: int, values: dict[str, Any]) -> dict[str, Any]:
        """Merge ``values`` (age, gender, race; any subset) into a face's correction; returns it."""
        with self._tx() as db:
            row = db.execute("SELECT * FROM corrections WHERE upload = ? AND idx = ?", (upload_id, index)).fetchone()
            merged = {k: row[k] for k in ("age", "gender", "race")} if row else {"age": None, "gender": None,
                                                                                 "race": None}
            merged.update(values)
            db.execute("INSERT OR REPLACE INTO corrections VALUES (?, ?, ?, ?, ?, ?)",
                       (upload_id, index, merged["age"], merged["gender"], merged["race"], time.time()))
        return {k: v for k, v in merged.items() if v is not None}

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
        and corrections (and sessions left without uploads that old). Returns how many uploads."""
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
            db.execute("DELETE FROM sessions WHERE created < ? AND id NOT IN (SELECT session FROM uploads) "
                       "AND id NOT IN (SELECT session FROM jobs WHERE state IN ('queued', 'running'))", (cutoff,))
        self._remove_files(files)
        return len(old)

    # -- jobs -----------------------------------------------------------------------------
    def add_job(self, session: str) -> str:
        job = new_id()
        with self._tx() as db:
            db.execute("INSERT INTO jobs VALUES (?, ?, ?, 'queued', 0, NULL, NULL, NULL)", (job, session, time.time()))
        return job

    def update_job(self, job: str, **values: Any) -> None:
        """Set some of ``state``, ``progress`` (0..1), ``run_dir``, ``metrics`` (a dict), ``error``."""
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

    def fail_unfinished_jobs(self) -> None:
        """Jobs left queued or running by a server that stopped: marked failed."""
        with self._tx() as db:
            db.execute("UPDATE jobs SET state = 'failed', error = 'the server stopped before the job finished' "
                       "WHERE state IN ('queued', 'running')")
