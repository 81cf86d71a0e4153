"""The web app's services without HTTP (``faceattr.serve``: uploads, retrain jobs, runs
comparisons) and the shape that keeps them apart: every route a few lines over a service."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytest.importorskip("fastapi")

from faceattr.serve.errors import ApiError
from faceattr.serve.retrain import Retrains
from faceattr.serve.runs import Comparisons, RunsBrowser
from faceattr.serve.store import Store
from faceattr.serve.uploads import Uploads, validate_label

SERVE = Path(__file__).resolve().parents[2] / "src" / "faceattr" / "serve"
ROUTE_MODULES = ("api.py", "files.py", "pages.py")
MAX_ROUTE_LINES = 12  # def to last line, docstring and decorator left out


def error_of(call, *args) -> tuple[int, str]:
    with pytest.raises(ApiError) as caught:
        call(*args)
    return caught.value.status, caught.value.message


def test_a_correction_is_checked_field_by_field():
    assert validate_label({"age": 30, "race": None}) == {"age": 30, "race": None}
    assert error_of(validate_label, {"age": 300})[0] == 422
    assert error_of(validate_label, {"age": True})[1].startswith("age: True is not allowed")
    assert error_of(validate_label, {"mood": "happy"}) == (422, "mood: unknown field (expected age, gender or race)")
    assert error_of(validate_label, {})[1].startswith("body: expected a JSON object")


def test_uploads_refuse_what_is_not_a_usable_photo_before_the_model_sees_it(tmp_path):
    uploads = Uploads(Store(tmp_path / "data"), pipeline=None, max_bytes=1000, max_pixels=10_000)
    assert error_of(uploads.add, "sid", "x.jpg", b"not an image") == (
        422, "x.jpg: not an image (no known image header)")
    assert error_of(uploads.add, "sid", "big.jpg", b"\0" * 1001)[0] == 413
    assert error_of(uploads.add, "sid", "empty.jpg", b"") == (422, "empty.jpg: empty file")
    assert error_of(uploads.owned, "sid", "0" * 32) == (404, f"upload {'0' * 32}: not found")
    assert error_of(uploads.owned, "sid", "../secret") == (404, "upload ../secret: not found")
    assert uploads.listing(None) == []
    assert uploads.corrections_csv(None).splitlines() == ["file,age,gender,race"]


def test_retrain_jobs_are_seen_by_their_session_only(tmp_path):
    store = Store(tmp_path / "data")
    retrains = Retrains(store, runner=None)
    assert retrains.current(None) == {"job": None}
    job, active = store.add_job("alice")
    assert active is None
    state = retrains.state("alice", job)
    assert (state["job"], state["state"], state["progress"]) == (job, "queued", 0)
    assert retrains.current("alice") == state
    assert error_of(retrains.state, "bob", job) == (404, f"job {job}: not found")
    assert retrains.current("bob") == {"job": None}


def test_a_comparison_needs_two_runs_that_exist(tmp_path):
    (tmp_path / "runs" / "one").mkdir(parents=True)
    (tmp_path / "runs" / "one" / "metrics.json").write_text('{"age_mae": 5.0}')
    comparisons = Comparisons(RunsBrowser([tmp_path / "runs"]), tmp_path / "compare")
    assert error_of(comparisons.compare, ["runs/one", "runs/nowhere"]) == (
        404, "compare: choose two or more runs that exist")
    assert comparisons.plot("0" * 40) is None and comparisons.plot("../../etc") is None


def route_lengths() -> dict[str, int]:
    """Lines of each route function (decorated by ``router.<method>``) in the route modules."""
    lengths = {}
    for module in ROUTE_MODULES:
        for node in ast.parse((SERVE / module).read_text()).body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and any(
                    isinstance(d, ast.Call) and getattr(d.func, "attr", "") in ("get", "post", "put")
                    for d in node.decorator_list):
                first = node.body[1] if ast.get_docstring(node) else node.body[0]
                lengths[f"{module}:{node.name}"] = node.end_lineno - first.lineno + 2  # the def line too
    return lengths


def test_every_route_is_a_few_lines_over_a_service():
    lengths = route_lengths()
    assert len(lengths) == 18  # every path and method the app answers (README.md lists the API's)
    assert {name: n for name, n in lengths.items() if n > MAX_ROUTE_LINES} == {}
