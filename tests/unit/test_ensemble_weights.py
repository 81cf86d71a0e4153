"""``weigh``: per-task ensemble weights chosen from the members' saved validation predictions.

Synthetic ``evaluate`` run folders of two sources in both formats: ``utk`` (UTKFace-style, exact
ages, class names) and ``photos`` (labelled photos: age groups, one open-ended, an exact age, a
missing race, a missing age, a face not found). Member A is right on ``utk`` and wrong on
``photos``, member B the other way round, member C middling; the figures below are worked out by
hand from the tables.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, cli, run_command
from faceattr.cli import flags_to_overrides
from faceattr.commands.spec import UsageError
from faceattr.errors import ConfigError
from faceattr.evaluation.ensemble_weights import (
    check_request,
    choose_weights,
    report_text,
    simplex_grid,
)
from faceattr.evaluation.saved_predictions import read_evaluation
from faceattr.labels import GENDERS, RACES

# utk: exact ages; gender and race as class names.
UTK_TRUTH = pd.DataFrame({"image": ["u0.jpg", "u1.jpg", "u2.jpg", "u3.jpg"], "age": [20.0, 30.0, 40.0, 50.0],
                          "gender": [0, 1, 0, 1], "race": [0, 1, 2, 3]})
# photos: f1 open-ended (70+), f2 an exact age and no race, f4 no age, f5 no face found.
PHOTO_TRUTH = pd.DataFrame({
    "file": ["f0.jpg", "f1.jpg", "f2.jpg", "f3.jpg", "f4.jpg", "f5.jpg"],
    "age": [None, None, 35, None, None, None], "age_lo": [20, 70, 35, 3, None, 20],
    "age_hi": [29, None, 35, 9, None, 29], "gender": [0, 1, 1, 0, 0, 1], "race": [0, 1, None, 2, 3, 4],
})
# Predicted ages (years) per member, by row.
UTK_AGES = {"A": [20, 30, 40, 50], "B": [30, 40, 50, 60], "C": [22, 32, 42, 52]}
PHOTO_AGES = {"A": [35, 60, 40, 12, 50], "B": [25, 80, 35, 5, 40], "C": [29, 100, 33, 10, 30]}
# (right or wrong, probability it gives its answer) per member and source.
UTK_GENDER = {"A": (True, 0.9), "B": (False, 0.8), "C": (True, 0.6)}
PHOTO_GENDER = {"A": (False, 0.8), "B": (True, 0.9), "C": (True, 0.6)}
UTK_RACE = {"A": (True, 0.9), "B": (False, 0.6), "C": (True, 0.4)}
PHOTO_RACE = {"A": (False, 0.6), "B": (True, 0.9), "C": (True, 0.4)}


def _race_probs(true: np.ndarray, right: bool, p: float) -> np.ndarray:
    """(N, 5): ``p`` on the true class (or the next one when wrong), the rest spread evenly."""
    probs = np.full((len(true), len(RACES)), (1 - p) / (len(RACES) - 1))
    answer = np.where(true < 0, 0, true if right else (true + 1) % len(RACES))
    probs[np.arange(len(true)), answer] = p
    return probs


def _gender(true: np.ndarray, right: bool, p: float) -> tuple[np.ndarray, np.ndarray]:
    """Predicted gender codes and P(female)."""
    pred = true if right else 1 - true
    return pred, np.where(pred == 1, p, 1 - p)


def _utk_csv(member: str) -> pd.DataFrame:
    t = UTK_TRUTH
    gender, p_female = _gender(t["gender"].to_numpy(), *UTK_GENDER[member])
    probs = _race_probs(t["race"].to_numpy(), *UTK_RACE[member])
    frame = pd.DataFrame({"image": t["image"], "age_true": t["age"], "age_pred": UTK_AGES[member],
                          "age_error": np.array(UTK_AGES[member]) - t["age"],
                          "gender_true": [GENDERS[g] for g in t["gender"]], "gender_pred": [GENDERS[g] for g in gender],
                          "gender_confidence": np.maximum(p_female, 1 - p_female),
                          "race_true": [RACES[r] for r in t["race"]], "race_pred": [RACES[r] for r in probs.argmax(1)],
                          "race_confidence": probs.max(1), "p_gender_male": 1 - p_female, "p_gender_female": p_female})
    return pd.concat([frame, pd.DataFrame(probs, columns=[f"p_race_{r}" for r in RACES])], axis=1)


def _photo_csv(member: str) -> pd.DataFrame:
    t = PHOTO_TRUTH.copy()
    gender, p_female = _gender(t["gender"].to_numpy(), *PHOTO_GENDER[member])
    probs = _race_probs(t["race"].fillna(-1).to_numpy(int), *PHOTO_RACE[member])
    frame = t.assign(race=t["race"].astype("Int64"), read=True, found=[True] * 5 + [False], faces=1, aligned=True,
                     age_pred=[*PHOTO_AGES[member], None], gender_pred=[GENDERS[g] for g in gender],
                     gender_confidence=np.maximum(p_female, 1 - p_female),
                     race_pred=[RACES[r] for r in probs.argmax(1)], race_confidence=probs.max(1))
    frame = pd.concat([frame, pd.DataFrame(probs, columns=[f"p_race_{r}" for r in RACES])], axis=1)
    frame.loc[5, ["gender_pred", "gender_confidence", "race_pred", "race_confidence",
                  *(f"p_race_{r}" for r in RACES)]] = None  # no face found: no prediction
    return frame


def make_eval(root: Path, member: str, model: str | None = None, reverse: bool = False) -> Path:
    """An ``evaluate`` run folder of ``member`` with ``sources/utk`` and ``sources/photos``; rows
    in reverse order with ``reverse`` (they are matched by key); ``model``: its recorded model_path."""
    folder = root / f"eval_{member}"
    for name, frame in (("utk", _utk_csv(member)), ("photos", _photo_csv(member))):
        (folder / "sources" / name).mkdir(parents=True)
        (frame.iloc[::-1] if reverse else frame).to_csv(folder / "sources" / name / "predictions.csv", index=False)
    _utk_csv(member).to_csv(folder / "predictions.csv", index=False)
    if model:
        (folder / ".hydra").mkdir()
        (folder / ".hydra" / "config.yaml").write_text(f"command: evaluate\nmodel_path: {model}\n")
    return folder


@pytest.fixture
def evals(tmp_path: Path) -> dict[str, Path]:
    return {"A": make_eval(tmp_path, "A", model="outputs/member a/model"), "B": make_eval(tmp_path, "B", reverse=True),
            "C": make_eval(tmp_path, "C")}


def test_figures_of_each_member_alone_are_worked_out_by_hand(evals):
    result = choose_weights([read_evaluation(evals[m]) for m in "ABC"])
    a, b, c = result.members
    assert result.sources == {"photos": 5, "utk": 4}  # the photo without a face is left out
    assert a["age"] == {"photos": 6.0, "utk": 0.0}  # (6 + 10 + 5 + 3) / 4: f4 has no age
    assert a["gender"] == {"photos": 0.0, "utk": 100.0} and a["race"] == {"photos": 0.0, "utk": 100.0}
    assert b["age"] == {"photos": 0.0, "utk": 10.0}
    # 4 of 4 races: f2, which has no race, is not counted (it would make 80 %)
    assert b["gender"] == {"photos": 100.0, "utk": 0.0} and b["race"] == {"photos": 100.0, "utk": 0.0}
    assert c["age"]["photos"] == 0.75  # f1 at 100 is inside 70+ (open-ended); f2 2 y off, f3 1 y
    assert c["age"]["utk"] == pytest.approx(2.0)


def test_equal_weights_are_the_default_reference(evals):
    two = [read_evaluation(evals[m]) for m in "AB"]
    result = choose_weights(two)
    assert result.reference == (0.5, 0.5)
    # (A + B) / 2: utk 5 y too old everywhere; photos f0 30 (1 y over 29), f1 70, f2 37.5, f3 8.5
    assert result.tasks["age"].reference == {"photos": 0.875, "utk": 5.0}
    given = choose_weights(two, reference=[3, 1])
    assert given.reference == (0.75, 0.25)
    assert given.tasks["age"].reference["utk"] == pytest.approx(2.5)
    three = choose_weights([read_evaluation(evals[m]) for m in "ABC"], step=0.1)
    assert three.reference == pytest.approx((1 / 3,) * 3)


def test_the_rule_and_hold(evals):
    two = [read_evaluation(evals[m]) for m in "AB"]
    free = choose_weights(two)
    # Weight w on A: utk 10 (1 - w) y, photos rising from 0.875 at w = 0.5; their mean is least at 0.6.
    assert free.tasks["age"].weights == pytest.approx((0.6, 0.4))
    assert free.tasks["age"].figures["photos"] > free.tasks["age"].reference["photos"]
    held = choose_weights(two, hold=["photos"])
    assert held.tasks["age"].weights == pytest.approx((0.5, 0.5))  # photos no worse: w <= 0.5; utk best at 0.5
    for hold in (["photos"], ["utk"]):
        result = choose_weights(two, hold=hold)
        for task, choice in result.tasks.items():
            sign = 1 if task == "age" else -1  # age: lower is better
            assert sign * choice.figures[hold[0]] <= sign * choice.reference[hold[0]] + 1e-9, (task, hold)
            assert sum(choice.weights) == pytest.approx(1.0) and min(choice.weights) >= 0
    # Race is right on both sources for w in [0.4, 0.6]: a tie, which goes to the reference.
    assert free.tasks["race"].weights == pytest.approx((0.5, 0.5))
    assert free.tasks["race"].figures == {"photos": 100.0, "utk": 100.0}


def test_the_grid(evals):
    grid = simplex_grid(3, 0.05)
    assert grid.shape == (231, 3) and np.allclose(grid.sum(axis=1), 1) and (grid >= 0).all()
    assert len({tuple(np.round(row, 6)) for row in grid}) == 231
    with pytest.raises(ConfigError, match="larger step"):
        check_request(6, None, [], 0.05)  # 53,130 weight vectors
    with pytest.raises(ConfigError, match="at most 6"):
        check_request(7, None, [], 0.5)
    with pytest.raises(ConfigError, match="1/k"):
        check_request(2, None, [], 0.3)
    with pytest.raises(ConfigError, match="give 2 weights"):
        check_request(2, [1, 2, 3], [], 0.1)
    with pytest.raises(ConfigError, match="no source fairface"):
        choose_weights([read_evaluation(evals[m]) for m in "AB"], hold=["fairface"])


def test_members_on_other_faces_or_sources_are_refused(evals, tmp_path):
    odd = make_eval(tmp_path / "odd", "B")
    rows = pd.read_csv(odd / "sources" / "photos" / "predictions.csv")
    rows.drop(index=1).to_csv(odd / "sources" / "photos" / "predictions.csv", index=False)
    with pytest.raises(ConfigError, match=f"^{odd}: source photos: 4 faces, .* has 5; the rows differ .*f1.jpg"):
        choose_weights([read_evaluation(evals["A"]), read_evaluation(odd)])
    one = make_eval(tmp_path / "one", "B")
    for f in (one / "sources" / "photos").iterdir():
        f.unlink()
    with pytest.raises(ConfigError, match=f"^{one}: sources utk differ"):
        choose_weights([read_evaluation(evals["A"]), read_evaluation(one)])
    relabelled = make_eval(tmp_path / "relabelled", "B")
    rows = pd.read_csv(relabelled / "sources" / "utk" / "predictions.csv")
    rows.assign(gender_true="female").to_csv(relabelled / "sources" / "utk" / "predictions.csv", index=False)
    with pytest.raises(ConfigError, match=f"^{relabelled}: source utk: the labels differ"):
        choose_weights([read_evaluation(evals["A"]), read_evaluation(relabelled)])
    with pytest.raises(ConfigError, match="no predictions.csv"):
        read_evaluation(tmp_path)


def test_weigh_writes_weights_json_and_a_pasteable_ensemble_line(evals, tmp_path, capsys):
    from faceattr.config import compose_config
    from faceattr.models.ensemble import member_weights

    run_dir = tmp_path / "run"
    run_command("weigh", f"weigh.evals=['{evals['A']}','{evals['B']}','{evals['C']}']", "weigh.hold=[photos]",
                "weigh.step=0.1", run_dir=run_dir)
    record = json.loads((run_dir / "weights.json").read_text())
    assert record["hold"] == ["photos"] and record["step"] == 0.1 and "at least as good" in record["rule"]
    assert record["members"][0]["model"] == "outputs/member a/model" and record["members"][1]["model"] is None
    assert record["members"][0]["figures"]["age"]["photos"] == 6.0
    out = capsys.readouterr().out
    line = next(text for text in out.splitlines() if " ensemble " in text)
    assert line == record["command"]
    args = shlex.split(line)
    assert "outputs/member a/model" in args  # A's model folder, quoted; B's unknown
    assert "<member" in line
    weights_arg = next(a for a in args if a.startswith("ensemble.weights="))
    cfg = compose_config(["command=ensemble", weights_arg])
    used = [i for i in range(3) if any(w[i] > 0 for w in record["weights"].values())]
    parsed = member_weights(cfg.ensemble.weights, len(used)) or {}
    for task, chosen in record["weights"].items():
        expected = [chosen[i] for i in used]
        assert parsed.get(task, [1 / len(used)] * len(used)) == pytest.approx(expected, abs=1e-6)
        figures = record["figures"][task]["photos"]
        reference = record["reference_figures"][task]["photos"]
        assert (figures <= reference + 1e-9) if task == "age" else (figures >= reference - 1e-9)


def test_the_cli_runs_weigh_and_refuses_in_one_line(evals, tmp_path, capsys):
    flags = ["a", "b c", "--reference", "0.5,0.5", "--hold", "utkface", "--step", "0.1"]
    assert flags_to_overrides("weigh", flags) == [
        "weigh.evals=['a','b c']", "weigh.reference=[0.5,0.5]", "weigh.hold=['utkface']", "weigh.step=0.1"]
    for bad in (["only/one"], ["a", "b", "--reference", "half,half"]):
        with pytest.raises(UsageError):
            flags_to_overrides("weigh", bad)
    run_dir = tmp_path / "cli_run"
    assert cli("weigh", evals["A"], evals["B"], "--hold", "utk", f"hydra.run.dir={run_dir}") == 0
    assert json.loads((run_dir / "weights.json").read_text())["hold"] == ["utk"]
    capsys.readouterr()
    assert cli("weigh", evals["A"], tmp_path, f"hydra.run.dir={tmp_path / 'bad'}") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"error: {tmp_path}: no predictions.csv")


def test_the_library_does_not_load_tensorflow():
    code = ("import sys, faceattr.evaluation.ensemble_weights\n"
            "print(sorted(m for m in sys.modules if 'tensorflow' in m))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT / "src")}, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def _one_source_eval(root: Path, name: str, race_pred: list[int]) -> Path:
    """An ``evaluate`` folder of one source ("all"): four faces, races white x3 and black; the
    member answers ``race_pred`` with probability 0.9; ages and genders exact."""
    true = np.array([0, 0, 0, 1])
    probs = np.full((4, len(RACES)), 0.1 / (len(RACES) - 1))
    probs[np.arange(4), race_pred] = 0.9
    frame = pd.DataFrame({"image": [f"u{i}.jpg" for i in range(4)], "age_true": 30.0, "age_pred": 30.0,
                          "gender_true": "male", "gender_pred": "male", "p_gender_male": 0.9, "p_gender_female": 0.1,
                          "race_true": [RACES[r] for r in true]})
    folder = root / name
    folder.mkdir()
    pd.concat([frame, pd.DataFrame(probs, columns=[f"p_race_{r}" for r in RACES])], axis=1).to_csv(
        folder / "predictions.csv", index=False)
    return folder


def test_race_judged_by_balanced_accuracy_counts_a_rare_class_as_much(tmp_path):
    """A member that calls everyone white is right on 3 of 4 faces (75 %) but on one of two classes
    (balanced 50 %); ``race_metric=balanced`` judges it so, in the figures and in the choice."""
    members = [read_evaluation(_one_source_eval(tmp_path, "all_white", [0, 0, 0, 0])),
               read_evaluation(_one_source_eval(tmp_path, "misses_one_white", [0, 0, 1, 1]))]
    plain = choose_weights(members, step=0.5)
    balanced = choose_weights(members, step=0.5, race_metric="balanced")
    assert [m["race"]["all"] for m in plain.members] == [75.0, 75.0]
    assert [m["race"]["all"] for m in balanced.members] == [50.0, pytest.approx(100 * (2 / 3 + 1) / 2)]
    assert balanced.tasks["race"].weights == (0.0, 1.0)  # the member that finds the black face
    assert balanced.race_metric == "balanced" and "balanced" in report_text(balanced)
    with pytest.raises(ConfigError, match="race_metric"):
        choose_weights(members, race_metric="f1")
    assert flags_to_overrides("weigh", ["a", "b", "--race-metric", "balanced"])[-1] == "weigh.race_metric=balanced"


def test_a_baseline_sets_the_held_figures_in_place_of_the_references(evals, tmp_path, capsys):
    two = [read_evaluation(evals[m]) for m in "AB"]
    # Against equal weights, holding photos, age is best at (0.5, 0.5) (test_the_rule_and_hold).
    # Member B alone as the baseline sets photos' age at 0 years outside: only weights that keep
    # B's photo ages exactly (all of the weight on B) are allowed.
    held = choose_weights(two, hold=["photos"], baseline=read_evaluation(evals["B"]))
    assert held.tasks["age"].baseline == {"photos": 0.0, "utk": 10.0}
    assert held.tasks["age"].weights == pytest.approx((0.0, 1.0))
    assert held.tasks["age"].figures["photos"] == 0.0
    # A baseline below the reference frees the choice: member A's photo ages (6 years outside)
    # allow all of the weight on A, where utk's age is exact; the reference's (0.875 y) did not.
    loose = choose_weights(two, hold=["photos"], baseline=read_evaluation(evals["A"]))
    assert loose.tasks["age"].weights == pytest.approx((1.0, 0.0)) and loose.tasks["age"].figures["utk"] == 0.0
    assert choose_weights(two, hold=["photos"]).tasks["age"].weights == pytest.approx((0.5, 0.5))
    assert "the baseline's" in held.rule() and str(evals["B"]) in held.rule()
    assert "(baseline 0.00 y)" in report_text(held)
    assert all(choice.held for choice in held.tasks.values())
    # A baseline no mix reaches: B's photo ages (0 years outside) against A and C, whose mixes
    # stay above 0 on the photos. Age is marked not held and keeps the reference; gender (C alone
    # reaches B's 100 %) is held as usual.
    short = choose_weights([read_evaluation(evals[m]) for m in "AC"], hold=["photos"],
                           baseline=read_evaluation(evals["B"]))
    assert not short.tasks["age"].held and short.tasks["age"].weights == pytest.approx((0.5, 0.5))
    assert short.tasks["age"].figures["photos"] > short.tasks["age"].baseline["photos"] == 0.0
    assert short.tasks["gender"].held and short.tasks["gender"].figures["photos"] == 100.0
    assert "no weights on the grid keep the baseline's figures on photos" in report_text(short)
    with pytest.raises(ConfigError, match="weigh.baseline: give the sources"):
        choose_weights(two, baseline=read_evaluation(evals["C"]))
    odd = make_eval(tmp_path / "odd", "C")
    rows = pd.read_csv(odd / "sources" / "utk" / "predictions.csv")
    rows.drop(index=0).to_csv(odd / "sources" / "utk" / "predictions.csv", index=False)
    with pytest.raises(ConfigError, match=f"^{odd}: source utk: 3 faces"):
        choose_weights(two, hold=["utk"], baseline=read_evaluation(odd))
    # The command: the flag, weights.json, and a missing baseline folder refused before any reading.
    assert flags_to_overrides("weigh", ["a", "b", "--hold", "utk", "--baseline", "s p"])[-1] == "weigh.baseline='s p'"
    run_dir = tmp_path / "run"
    assert cli("weigh", evals["A"], evals["B"], "--hold", "photos", "--baseline", evals["B"],
               f"hydra.run.dir={run_dir}") == 0
    record = json.loads((run_dir / "weights.json").read_text())
    assert record["baseline"] == str(evals["B"]) and record["baseline_figures"]["age"]["photos"] == 0.0
    assert record["weights"]["age"] == [0.0, 1.0] and record["not_held"] == []
    capsys.readouterr()
    assert cli("weigh", evals["A"], evals["C"], "--hold", "photos", "--baseline", evals["B"],
               f"hydra.run.dir={tmp_path / 'short'}") == 0
    assert json.loads((tmp_path / "short" / "weights.json").read_text())["not_held"] == ["age"]
    assert "warning: no weights keep the baseline's figures for age" in capsys.readouterr().out
    assert cli("weigh", evals["A"], evals["B"], "--hold", "photos", "--baseline", tmp_path / "nowhere",
               f"hydra.run.dir={tmp_path / 'bad'}") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nowhere" in err
