"""The retrain service: a session starts a retrain job on its corrections and follows it (no
HTTP here; ``jobs.py`` runs the jobs, the store keeps their state).

A job as the API answers it (:func:`job_json`): ``job`` (id), ``state`` (queued, running, done,
failed), ``progress`` (0 to 1), ``phase`` (what runs now, with its counts), ``eta_s`` (seconds
the phase has left, or None), ``run_dir``, ``metrics`` (the new and the served model's figures
side by side) and ``error``.
"""

from __future__ import annotations

from typing import Any

from faceattr.errors import InputError
from faceattr.serve.errors import ApiError
from faceattr.serve.guards import clipped
from faceattr.serve.jobs import JobRunner
from faceattr.serve.store import UPLOAD_ID, Store


def job_json(row: dict[str, Any]) -> dict[str, Any]:
    """A job's database row (``Store.job``) as the API answers it."""
    return {"job": row["id"], "state": row["state"], "progress": row["progress"], "phase": row["phase"],
            "eta_s": row["eta_s"], "run_dir": row["run_dir"], "metrics": row["metrics"], "error": row["error"]}


class Retrains:
    """Retrain jobs of sessions: started through ``runner``, read from ``store``."""

    def __init__(self, store: Store, runner: JobRunner) -> None:
        self.store = store
        self.runner = runner

    def start(self, sid: str) -> str:
        """Queue a retrain on session ``sid``'s corrections; the job's id. ``JobBusy`` while a
        job runs; ``ApiError(422)`` when the session has no corrections."""
        try:
            return self.runner.submit(sid)
        except InputError as exc:
            raise ApiError(422, str(exc)) from None

    def current(self, sid: str | None) -> dict[str, Any]:
        """The session's latest job (running or finished), so a reloaded page shows it; ``{"job": None}`` if none."""
        row = self.store.latest_job(sid) if sid else None
        return job_json(row) if row else {"job": None}

    def state(self, sid: str, job: str) -> dict[str, Any]:
        """Job ``job`` of session ``sid``; ``ApiError(404)`` when the session has no such job."""
        row = self.store.job(sid, job) if UPLOAD_ID.fullmatch(job) else None
        if row is None:
            raise ApiError(404, f"job {clipped(job)}: not found")
        return job_json(row)
