"""The README and docs/ stay true: short front page, a well-formed experiment table, configs and
links that exist, reproduction folders that agree with the shipped models, figures that agree
with statistics/."""

from __future__ import annotations

import csv
import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CSV_PATH = ROOT / "docs" / "experiments.csv"
EXPERIMENTS = ROOT / "conf" / "experiment"
COLUMNS = ["experiment", "command", "split", "age_mae", "gender_accuracy", "race_accuracy",
           "race_balanced_accuracy", "notes"]
FIGURES = COLUMNS[3:7]
EXPERIMENT_RE = re.compile(r"(?:experiment=|conf/experiment/)([A-Za-z0-9_]+)")
LINK_RE = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def readme_text() -> str:
    return README.read_text(encoding="utf-8")


def experiment_rows() -> list[dict[str, str]]:
    with CSV_PATH.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def bash_commands(markdown: str) -> list[list[str]]:
    """The toolkit's commands of the markdown's bash blocks (``faceattr ...`` or the same as
    ``python src/main.py ...``), as argument lists (after the program), with backslash
    continuations joined and comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("python src/main.py "):
                commands.append(shlex.split(line)[2:])
            elif line.startswith("faceattr "):
                commands.append(shlex.split(line)[1:])
    return commands


def model_folder(arg: str) -> str:
    """A folder as ``ensemble``/``promote`` take it: a run folder stands for its ``model/``; a
    shipped model (``saved_model/<type>``) is a model folder itself."""
    arg = arg.rstrip("/")
    return arg if arg.endswith("/model") or arg.startswith("saved_model/") else f"{arg}/model"


def run_dir(args: list[str]) -> str | None:
    return next((a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir=")), None)


def test_readme_is_a_short_front_page():
    assert len(readme_text().splitlines()) <= 250


def test_experiments_csv_columns_and_rows():
    with CSV_PATH.open(newline="", encoding="utf-8") as f:
        header = next(csv.reader(f))
    assert header == COLUMNS
    rows = experiment_rows()
    assert rows
    for i, row in enumerate(rows, start=2):
        assert None not in row and all(v is not None for v in row.values()), f"line {i}: wrong number of cells"
        assert row["experiment"].strip() and row["split"].strip(), f"line {i}: experiment and split are required"
        assert any(row[k].strip() for k in FIGURES), f"line {i}: no figure recorded"
        for key in FIGURES:
            if row[key].strip():
                value = float(row[key])
                assert 0 < value <= 100, f"line {i}: {key}={value} (years, or percent)"


def test_named_experiment_configs_exist():
    missing = [f"README.md: {name}" for name in EXPERIMENT_RE.findall(readme_text())
               if not (EXPERIMENTS / f"{name}.yaml").is_file()]
    for i, row in enumerate(experiment_rows(), start=2):
        for name in EXPERIMENT_RE.findall(" ".join(row.values())):
            if not (EXPERIMENTS / f"{name}.yaml").is_file() and "removed" not in row["notes"].lower():
                missing.append(f"docs/experiments.csv line {i}: {name}")
    assert not missing, missing


def shipped_folder_now(folder: str) -> str:
    """A recorded ``saved_model/<name>`` under its family's name today (``saved_model/normal``,
    recorded before the CNN family was named ``cnn``, is ``saved_model/cnn``)."""
    from faceattr.config import canonical_family

    parent, _, name = folder.partition("/")
    return f"saved_model/{canonical_family(name)}" if parent == "saved_model" and "/" not in name else folder


def reproduction_problems(markdown: str, infos: dict[str, dict]) -> list[str]:
    """What keeps the markdown's train/ensemble/promote commands from rebuilding each shipped
    ensemble (``infos``: where -> its ``model_info.json``) in the folders it lists as members."""
    commands = bash_commands(markdown)
    trained = {model_folder(d) for d in (run_dir(c) for c in commands if c[0] == "train") if d}
    ensembles = {model_folder(d): [model_folder(a) for a in c[1:] if "=" not in a and not a.startswith("-")]
                 for c in commands if c[0] == "ensemble" and (d := run_dir(c))}
    promoted = {model_folder(c[1]) for c in commands if c[0] == "promote" and len(c) > 1}
    # A shipped model may be a member of another: the commands that rebuild it are checked as its own.
    shipped = {f"saved_model/{Path(where).parent.name}" for where in infos}
    problems = []
    for where, info in infos.items():
        members = (info.get("ensemble") or {}).get("members")
        if not members:
            continue
        members = [shipped_folder_now(m) for m in members]
        built = [folder for folder, parts in ensembles.items() if parts == members]
        if not built:
            problems.append(f"{where}: no ensemble command of {members}")
        unwritten = sorted(set(members) - trained - set(ensembles) - shipped)
        if unwritten:
            problems.append(f"{where}: no command writes {unwritten}")
        if built and not set(built) & promoted:
            problems.append(f"{where}: the ensemble of {members} is never promoted")
    return problems


def broken_links(markdown: str, base: Path) -> list[str]:
    """The markdown's relative link targets (anchors aside) that are not files under ``base``."""
    broken = []
    for target in LINK_RE.findall(markdown):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        if not (base / target.split("#", 1)[0]).exists():
            broken.append(target)
    return broken


def test_readme_reproduces_the_shipped_models_in_their_recorded_folders():
    """The README's commands write the folders each shipped ``model_info.json`` lists as its
    ensemble members, build those ensembles and promote them."""
    infos = {str(p): json.loads(p.read_text()) for p in sorted((ROOT / "saved_model").glob("*/model_info.json"))}
    if not infos:
        pytest.skip("no shipped models")
    assert any((i.get("ensemble") or {}).get("members") for i in infos.values())
    assert reproduction_problems(readme_text(), infos) == []


def test_readme_relative_links_exist():
    assert broken_links(readme_text(), README.parent) == []


@pytest.mark.parametrize("page", ["experiments.md", "models.md", "usage.md", "real-photos.md"])
def test_docs_relative_links_exist(page):
    path = ROOT / "docs" / page
    assert broken_links(path.read_text(encoding="utf-8"), path.parent) == []


#: Where ``statistics/`` keeps each set's metrics for a model, and the README figures read from them.
STATISTICS_FIGURES = (
    ("{model}", lambda m: (f"MAE {m['age_mae']:.2f} y", f"{100 * m['gender_accuracy']:.1f} %",
                           f"{100 * m['race_accuracy']:.1f} %", f"{100 * m['race_balanced_accuracy']:.1f} %")),
    # FairFace's validation photos, a training source's own split
    ("fairface-val/{model}/sources/fairface",
     lambda m: (f"{m['age_interval_error']:.2f} y outside", f"{100 * m['gender_accuracy']:.1f} %",
                f"{100 * m['race_accuracy']:.1f} %", f"{100 * m['race_balanced_accuracy']:.1f} %")),
    ("fairface-dev/{model}",
     lambda m: (f"{m['age_interval_error']:.2f} y outside", f"{100 * m['gender_accuracy']:.1f} %",
                f"{100 * m['race_accuracy']:.1f} %", f"{100 * m['no_face_rate']:.1f} %")),
)


def test_readme_figures_agree_with_statistics():
    """The shipped models' figures in the README are the ones ``statistics/`` holds."""
    text = readme_text()
    checked = 0
    for model in ("facenet", "cnn"):
        for folder, figures in STATISTICS_FIGURES:
            path = ROOT / "statistics" / folder.format(model=model) / "metrics.json"
            if not path.is_file():
                continue
            for figure in figures(json.loads(path.read_text())):
                assert figure in text, f"{path}: {figure} not in README.md"
                checked += 1
    if not checked:
        pytest.skip("no statistics/ metrics")


def test_the_quickstart_is_two_commands_and_ci_runs_its_test_command():
    """Step 1 installs and labels a shipped example photo, step 2 installs and runs the tests with
    the command .ci/run runs; both are single lines a user pastes."""
    quickstart = readme_text().split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```bash\n(.*?)```", quickstart, flags=re.S)
    steps = [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
    assert len(steps) == 2, steps
    install_and_run, install_and_test = steps
    assert "pip install" in install_and_run and " run --img examples/" in install_and_run
    photo = install_and_run.split(" run --img ", 1)[1].split()[0]
    assert (ROOT / photo).is_file()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    test_command = next(line for line in reversed(ci_lines) if line and not line.startswith("#"))
    assert "pip install" in install_and_test and install_and_test.endswith(f".venv/bin/{test_command}")


def test_both_invocations_are_read_as_commands():
    text = "```bash\nfaceattr train a=1  # note\npython src/main.py promote \\\n  outputs/x\nls -l\n```\n"
    assert bash_commands(text) == [["train", "a=1"], ["promote", "outputs/x"]]


def test_the_checks_catch_wrong_folders_and_links(tmp_path):
    """Commands that write other folders than model_info.json names, or never promote, are found;
    so is a link to a missing file."""
    info = {"ensemble": {"members": ["outputs/normal_deep/model", "outputs/normal_deep_s1/model"]}}
    good = ("```bash\npython src/main.py train experiment=normal_deep hydra.run.dir=outputs/normal_deep\n"
            "python src/main.py train experiment=normal_deep seed=1 hydra.run.dir=outputs/normal_deep_s1  # seed 1\n"
            "python src/main.py ensemble outputs/normal_deep outputs/normal_deep_s1/model \\\n"
            "  hydra.run.dir=outputs/ens\npython src/main.py promote outputs/ens\n```\n")
    assert reproduction_problems(good, {"m": info}) == []
    assert reproduction_problems(good.replace("python src/main.py promote outputs/ens\n", ""), {"m": info}) == [
        f"m: the ensemble of {info['ensemble']['members']} is never promoted"]
    # The folders a sweep writes (outputs/normal_deep/0, ...) are not the recorded members.
    sweep = ("```bash\npython src/main.py train -m experiment=normal_deep seed=42,1 hydra.sweep.dir=outputs/nd\n"
             "python src/main.py ensemble outputs/normal_deep/0 outputs/normal_deep/1 hydra.run.dir=outputs/ens\n"
             "python src/main.py promote outputs/ens\n```\n")
    problems = reproduction_problems(sweep, {"m": info})
    assert len(problems) == 2 and "no ensemble command" in problems[0] and "no command writes" in problems[1]
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("a")
    text = "[a](docs/a.md#top) [b](docs/b.md) ![c](img.png) [d](https://example.org) [e](#licence)"
    assert broken_links(text, tmp_path) == ["docs/b.md", "img.png"]
    assert EXPERIMENT_RE.findall("train experiment=normal_deep and conf/experiment/facenet_full.yaml") == [
        "normal_deep", "facenet_full"]
