"""Ensemble weights per task, chosen from the members' saved validation predictions (``weigh``).

An ensemble (``models.ensemble``) is a weighted mean of its members' outputs: ages in years and
the gender and race probabilities. The mean is linear, so the ensemble's predictions for any
weights are the same weighted mean of the predictions each member wrote when evaluated alone
(``evaluate evaluation.split=val run.calibrate=false --model-path MEMBER``): weights can be tried
by the thousand without building a model.

Each member's ``evaluate`` run folder is read into one table per source by
``saved_predictions`` (either format an evaluation writes).

Per task and source one figure judges a set of weights: for age the mean years outside the true
age interval (the MAE for exact ages; lower is better), for gender and race the accuracy in %
(higher is better); a face without that task's label is left out of that task. The rule
(:func:`choose_weights`): among the weights on a simplex grid whose figure on every *held*
source is at least as good as the *reference* weights' (equal weights unless given), take the
best mean figure over the other sources; ties go to the weights nearest the reference.
With a *baseline* (the ``evaluate`` run folder of another model on the same faces, e.g. the
shipped model that a new member would change) the held figures are the baseline's instead: the
choice must keep what that model scores, not what the reference weights score.
Choose on validation, never on the test split.
"""

from __future__ import annotations

import itertools
import math
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from faceattr import writes
from faceattr.errors import ConfigError, ModelError
from faceattr.evaluation.saved_predictions import (
    Evaluation,
    SourceTable,
    check_matching,
    read_evaluation,
    source_files,
)
from faceattr.labels import TASKS
from faceattr.models.info import ModelInfo
from faceattr.resources import program_name

#: The most members, and the most grid points per task, searched.
MAX_MEMBERS = 6
MAX_GRID = 50_000
#: Each task's figure, as reports and ``weights.json`` name it.
UNITS: dict[str, str] = {
    "age": "mean years outside the true age interval (the MAE for exact ages), lower is better",
    "gender": "accuracy in %, higher is better",
    "race": "accuracy in %, higher is better",
}
LOWER_IS_BETTER: dict[str, bool] = {"age": True, "gender": False, "race": False}
#: How race is judged: plain accuracy, or balanced accuracy (the mean of the classes' recalls, so
#: a rare class such as ``others`` counts as much as a common one).
RACE_METRICS = ("accuracy", "balanced")
#: Figures closer than this count as equal (float sums over a different order of members).
TOLERANCE = 1e-9
#: The most floats one block of (grid points x faces x race classes) may hold while scoring race.
BLOCK_VALUES = 20_000_000


def units(race_metric: str = "accuracy") -> dict[str, str]:
    """:data:`UNITS` with race judged by ``race_metric`` (one of :data:`RACE_METRICS`)."""
    if race_metric not in RACE_METRICS:
        raise ConfigError(f"weigh.race_metric={race_metric!r}: expected one of {', '.join(RACE_METRICS)}")
    race = "balanced accuracy (mean recall over the classes) in %, higher is better"
    return {**UNITS, "race": race} if race_metric == "balanced" else dict(UNITS)


@dataclass(frozen=True)
class TaskChoice:
    """One task's chosen weights (one per member, summing to 1) with their figures per source,
    the reference weights' figures per source and, with a baseline, the baseline's (units:
    :data:`UNITS`; NaN: no labelled face). ``held``: False when no weights on the grid keep the
    baseline's figures on the held sources; the reference weights stand in for them then."""

    weights: tuple[float, ...]
    figures: dict[str, float]
    reference: dict[str, float]
    baseline: dict[str, float] | None = None
    held: bool = True


@dataclass(frozen=True)
class WeighResult:
    """What :func:`choose_weights` found: per task a :class:`TaskChoice`; ``members[i][task][source]``
    member i's figure alone; the rule's inputs (``reference`` scaled to sum 1, ``hold``, ``step``,
    ``baseline``: the folder whose figures were held, or None)."""

    sources: dict[str, int]
    reference: tuple[float, ...]
    hold: tuple[str, ...]
    step: float
    tasks: dict[str, TaskChoice]
    members: list[dict[str, dict[str, float]]]
    race_metric: str = "accuracy"
    baseline: str | None = None

    def rule(self) -> str:
        """The rule applied, in one sentence."""
        judged = [s for s in self.sources if s not in self.hold] or list(self.sources)
        bar = f"the baseline's ({self.baseline})" if self.baseline else "the reference's"
        held = (f"whose figure on {', '.join(self.hold)} is at least as good as {bar}, "
                if self.hold else "")
        return (f"per task, of the weights on a simplex grid of step {self.step:g} (and the reference) "
                f"{held}the best mean figure over {', '.join(judged)}; ties: the nearest to the reference (L1)")

    def weights(self) -> dict[str, list[float]]:
        """The chosen weights per task, rounded to 6 decimals: ``ensemble.weights``' mapping."""
        return {task: [round(w, 6) for w in choice.weights] for task, choice in self.tasks.items()}


# ---------------------------------------------------------------------------------- figures

@dataclass(frozen=True)
class _Stack:
    """One source's members stacked: ``age`` (M, N) years, ``p_female`` (M, N), ``p_race``
    (M, N, 5); the truths of :class:`SourceTable` (N,), shared by every member."""

    age: np.ndarray
    p_female: np.ndarray
    p_race: np.ndarray
    truth: SourceTable


def _stack(tables: Sequence[SourceTable]) -> _Stack:
    return _Stack(np.stack([t.age for t in tables]), np.stack([t.p_female for t in tables]),
                  np.stack([t.p_race for t in tables]), tables[0])


def task_figures(task: str, weights: np.ndarray, stack: _Stack, race_metric: str = "accuracy") -> np.ndarray:
    """The figure of ``task`` (:func:`units`) on one source for each row of ``weights`` (G, M),
    each row summing to 1: (G,), NaN where no face of the source is labelled for the task.
    ``race_metric``: race as plain or balanced accuracy (:data:`RACE_METRICS`)."""
    truth = stack.truth
    if task == "age":
        rows = ~np.isnan(truth.age_lo)
        if not rows.any():
            return np.full(len(weights), math.nan)
        pred = weights @ stack.age[:, rows]  # (G, n) years
        # Distance outside [lo, hi]: 0 inside; an open-ended hi (inf) is never exceeded.
        outside = np.maximum(truth.age_lo[rows] - pred, 0.0) + np.maximum(pred - truth.age_hi[rows], 0.0)
        return outside.mean(axis=1)
    labels = truth.gender if task == "gender" else truth.race
    rows = labels >= 0
    if not rows.any():
        return np.full(len(weights), math.nan)
    if task == "gender":
        # argmax over (male, female) = female where P(female) > 1/2, ties going to male as argmax does.
        hits = (weights @ stack.p_female[:, rows] > 0.5).astype(int) == labels[rows]
        return 100.0 * hits.mean(axis=1)
    probs, true = stack.p_race[:, rows], labels[rows]  # (M, n, 5), (n,)
    block = max(1, BLOCK_VALUES // probs[0].size)  # grid points per block, to bound the memory
    out = np.empty(len(weights))
    for start in range(0, len(weights), block):
        hits = np.einsum("gm,mnk->gnk", weights[start:start + block], probs).argmax(axis=2) == true  # (g, n)
        if race_metric == "balanced":  # each labelled class's recall counts once
            recalls = [hits[:, true == k].mean(axis=1) for k in np.unique(true)]
            out[start:start + block] = 100.0 * np.mean(recalls, axis=0)
        else:
            out[start:start + block] = 100.0 * hits.mean(axis=1)
    return out


# ----------------------------------------------------------------------------------- choice

def grid_size(n_members: int, step: float) -> int:
    """How many weight vectors (``n_members`` weights, multiples of ``step``, summing to 1) there
    are; ConfigError for a step that does not divide 1 or a grid above :data:`MAX_GRID`."""
    parts = round(1.0 / step)
    if not 0 < step <= 0.5 or abs(parts * step - 1.0) > 1e-6:
        raise ConfigError(f"weigh.step={step:g} is not allowed: expected 1/k for a whole k >= 2 (0.05, 0.1, 0.25)")
    size = math.comb(parts + n_members - 1, n_members - 1)
    if size > MAX_GRID:
        raise ConfigError(f"weigh.step={step:g}: {size:,} weight vectors for {n_members} members is above "
                          f"{MAX_GRID:,}; give a larger step (--step 0.1)")
    return size


def simplex_grid(n_members: int, step: float) -> np.ndarray:
    """Every weight vector of ``n_members`` multiples of ``step`` summing to 1: (G, n_members)."""
    grid_size(n_members, step)
    parts = round(1.0 / step)
    # Stars and bars: n_members - 1 bars among parts + n_members - 1 slots; the stars between
    # consecutive bars are one member's share, in steps.
    bars = np.array(list(itertools.combinations(range(parts + n_members - 1), n_members - 1)), dtype=int)
    edges = np.column_stack([np.full(len(bars), -1), bars, np.full(len(bars), parts + n_members - 1)])
    return (np.diff(edges, axis=1) - 1) / parts


def reference_weights(reference: Sequence[float] | None, n_members: int) -> np.ndarray:
    """The reference weights (n_members,), scaled to sum to 1; None: equal weights."""
    if reference is None:
        return np.full(n_members, 1.0 / n_members)
    values = np.asarray([float(w) for w in reference])
    if len(values) != n_members or (values < 0).any() or not values.sum() > 0:
        raise ConfigError(f"weigh.reference={[float(w) for w in reference]}: give {n_members} weights >= 0, "
                          "one per member, not all 0")
    return values / values.sum()


def check_request(n_members: int, reference: Sequence[float] | None, hold: Sequence[str], step: float,
                  sources: Sequence[str] | None = None, race_metric: str = "accuracy",
                  baseline: bool = False) -> None:
    """Refuse, before any reading, what :func:`choose_weights` can't do (ConfigError, one line)."""
    units(race_metric)
    if baseline and not hold:
        raise ConfigError("weigh.baseline: give the sources whose figures it sets (--hold SOURCE,...); "
                          "without them a baseline changes nothing")
    if n_members < 2:
        raise ConfigError("weigh.evals: give the `evaluate` run folders of two or more members")
    if n_members > MAX_MEMBERS:
        raise ConfigError(f"weigh.evals: {n_members} members; at most {MAX_MEMBERS} are searched")
    reference_weights(reference, n_members)
    grid_size(n_members, step)
    unknown = [h for h in hold if sources is not None and h not in sources]
    if unknown:
        raise ConfigError(f"weigh.hold: no source {', '.join(unknown)}; the members' sources are "
                          f"{', '.join(sources or [])}")


def _choose(task: str, candidates: np.ndarray, stacks: Mapping[str, _Stack], hold: Sequence[str],
            race_metric: str = "accuracy", bar: Mapping[str, float] | None = None) -> tuple[int, bool]:
    """The row of ``candidates`` (G, M; row 0 the reference) the rule picks for ``task``, and
    whether any row holds the bar; ``bar``: the figures per source a held source must reach (None:
    the reference's, which row 0 always holds). No row holding it: row 0 and False."""
    names = list(stacks)
    figures = np.column_stack([task_figures(task, candidates, stacks[s], race_metric) for s in names])  # (G, S)
    loss = figures if LOWER_IS_BETTER[task] else -figures
    held = [names.index(h) for h in hold]
    judged = [i for i in range(len(names)) if i not in held] or list(range(len(names)))
    sign = 1.0 if LOWER_IS_BETTER[task] else -1.0  # the bar in the same orientation as ``loss``
    limit = loss[0, held] if bar is None else sign * np.array([bar[names[i]] for i in held])
    # NaN (no labelled face) compares False: a held source without labels holds nothing back.
    allowed = ~(loss[:, held] > limit + TOLERANCE).any(axis=1)
    scored = loss[:, judged]
    counted = (~np.isnan(scored)).sum(axis=1)
    if not counted.any():
        return 0, True  # no labelled face for this task anywhere: keep the reference
    if not allowed.any():
        return 0, False
    objective = np.where(np.isnan(scored), 0.0, scored).sum(axis=1) / np.maximum(counted, 1)
    objective = np.where(allowed, objective, np.inf)
    tied = objective <= objective.min() + TOLERANCE
    distance = np.abs(candidates - candidates[0]).sum(axis=1)
    return int(np.argmin(np.where(tied, distance, np.inf))), True


def choose_weights(evaluations: Sequence[Evaluation], reference: Sequence[float] | None = None,
                   hold: Sequence[str] = (), step: float = 0.05, race_metric: str = "accuracy",
                   baseline: Evaluation | None = None) -> WeighResult:
    """Per task, the member weights the rule picks (module docstring) from ``evaluations``, one
    per member in order. ``reference``: one weight per member (scaled to sum 1; None: equal);
    ``hold``: source names whose figure must not get worse than the reference's; ``step``: the
    grid's step (weights are multiples of it, each >= 0, summing to 1; the reference is tried too);
    ``race_metric``: race judged by plain or balanced accuracy (:data:`RACE_METRICS`);
    ``baseline``: another model's evaluation on the same faces whose figures on ``hold`` must be
    kept, in place of the reference's."""
    names = list(evaluations[0].sources) if evaluations else []
    check_request(len(evaluations), reference, hold, step, names, race_metric, baseline is not None)
    check_matching([*evaluations, baseline] if baseline is not None else evaluations)
    ref = reference_weights(reference, len(evaluations))
    candidates = np.vstack([ref[None], simplex_grid(len(evaluations), step)])
    stacks = {s: _stack([e.sources[s] for e in evaluations]) for s in names}

    def figures_of(weights: np.ndarray, task: str) -> dict[str, float]:
        return {s: float(task_figures(task, weights[None], stacks[s], race_metric)[0]) for s in names}

    # The baseline as a one-member ensemble of weight 1: its figures come from the same scoring.
    baseline_stacks = {s: _stack([baseline.sources[s]]) for s in names} if baseline is not None else None

    def baseline_figures(task: str) -> dict[str, float] | None:
        if baseline_stacks is None:
            return None
        return {s: float(task_figures(task, np.ones((1, 1)), stack, race_metric)[0])
                for s, stack in baseline_stacks.items()}

    tasks = {}
    for task in TASKS:
        bar = baseline_figures(task)
        row, held = _choose(task, candidates, stacks, hold, race_metric, bar)
        picked = candidates[row]
        tasks[task] = TaskChoice(tuple(float(w) for w in picked), figures_of(picked, task), figures_of(ref, task),
                                 bar, held)
    members = [{task: figures_of(np.eye(len(evaluations))[i], task) for task in TASKS}
               for i in range(len(evaluations))]
    return WeighResult({s: len(stacks[s].truth.keys) for s in names}, tuple(float(w) for w in ref),
                       tuple(hold), float(step), tasks, members, race_metric,
                       str(baseline.folder) if baseline is not None else None)


# ----------------------------------------------------------------------------------- output

def member_model(folder: str | Path) -> str | None:
    """The model folder an ``evaluate`` run scored: ``model_path`` of its ``.hydra/config.yaml``,
    None when not recorded (or unreadable). A member's view (``ensemble.view``, an ensemble with one
    member's outputs alone) stands for that member: its folder, as the view's ``model_info.json`` lists it."""
    path = Path(folder) / ".hydra" / "config.yaml"
    try:
        value = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("model_path")
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    if not value:
        return None
    try:
        ensemble = ModelInfo.read(Path(str(value))).ensemble or {}
    except ModelError:
        return str(value)  # no readable model folder there now: the folder as recorded
    view = ensemble.get("view")
    return str(ensemble["members"][view]) if view is not None else str(value)


def _number(weight: float) -> str:
    return format(round(weight, 6), "g")


def ensemble_command(weights: Mapping[str, Sequence[float]], models: Sequence[str | None]) -> str | None:
    """The ``ensemble`` command line that builds the weighted ensemble: the members' model folders
    (``<member i>`` where unknown) and ``ensemble.weights`` per task. A member weighing 0 in every
    task is left out (``ensemble`` refuses it); None when fewer than two members are left."""
    used = [i for i in range(len(models)) if any(w[i] > 0 for w in weights.values())]
    if len(used) < 2:
        return None
    folders = [shlex.quote(models[i]) if models[i] else f"<member {i}>" for i in used]
    lists = ",".join(f"{task}:[{','.join(_number(weights[task][i]) for i in used)}]" for task in weights)
    return f"{program_name()} ensemble {' '.join(folders)} 'ensemble.weights={{{lists}}}'"


def _listed(weights: Sequence[float]) -> str:
    return "[" + ", ".join(_number(w) for w in weights) + "]"


def _shown(value: float, task: str) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:.2f} y" if task == "age" else f"{value:.1f} %"


def report_text(result: WeighResult) -> str:
    """A short table: per task the chosen weights and, per source, the reference's figure -> the chosen's."""
    lines = [f"reference weights {_listed(result.reference)}; "
             f"held: {', '.join(result.hold) or 'none'}"
             + (f", at the baseline's figures ({result.baseline})" if result.baseline else "")]
    for task, choice in result.tasks.items():
        lines.append(f"{task} ({units(result.race_metric)[task]}): weights {_listed(choice.weights)}")
        if not choice.held:
            lines.append(f"  no weights on the grid keep the baseline's figures on {', '.join(result.hold)}: "
                         "these are the reference weights")
        for source, n in result.sources.items():
            held = " (held)" if source in result.hold else ""
            line = (f"  {source + held:<24} n={n:<6} {_shown(choice.reference[source], task):>9} -> "
                    f"{_shown(choice.figures[source], task)}")
            if choice.baseline is not None:
                line += f"  (baseline {_shown(choice.baseline[source], task)})"
            lines.append(line)
    return "\n".join(lines)


def weigh_folders(folders: Sequence[str | Path], reference: Sequence[float] | None, hold: Sequence[str],
                  step: float, run_dir: str | Path, race_metric: str = "accuracy",
                  baseline: str | Path | None = None) -> dict[str, Any]:
    """The ``weigh`` command's work: read the members' ``evaluate`` run folders (and the
    baseline's), choose the weights (:func:`choose_weights`) and write ``<run_dir>/weights.json``.
    Returns its content with ``table`` (:func:`report_text`) and ``command``
    (:func:`ensemble_command`, or None) added."""
    has_baseline = baseline is not None
    check_request(len(folders), reference, hold, step, race_metric=race_metric, baseline=has_baseline)
    # every folder checked before any reading
    sources = [source_files(folder) for folder in [*folders, *([baseline] if has_baseline else [])]]
    check_request(len(folders), reference, hold, step, list(sources[0]), race_metric, has_baseline)
    result = choose_weights([read_evaluation(folder) for folder in folders], reference, hold, step, race_metric,
                            read_evaluation(baseline) if has_baseline else None)
    models = [member_model(folder) for folder in folders]
    command = ensemble_command(result.weights(), models)
    record = {
        "weights": result.weights(), "rule": result.rule(), "reference": list(result.reference),
        "hold": list(result.hold), "baseline": result.baseline, "step": result.step, "sources": result.sources,
        "race_metric": race_metric, "units": units(race_metric),
        "figures": {task: c.figures for task, c in result.tasks.items()},
        "reference_figures": {task: c.reference for task, c in result.tasks.items()},
        "baseline_figures": ({task: c.baseline for task, c in result.tasks.items()} if result.baseline else None),
        "not_held": [task for task, c in result.tasks.items() if not c.held],
        "members": [{"evaluation": str(folder), "model": model, "figures": figures}
                    for folder, model, figures in zip(folders, models, result.members, strict=True)],
        "command": command,
    }
    writes.write_text(Path(run_dir) / "weights.json", writes.json_text(record))  # NaN written as null
    return {**record, "table": report_text(result)}
