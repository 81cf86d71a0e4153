"""The toolkit's structure: floors that only look down (a declared order of packages; no import
of a higher floor, in-function imports only where a heavy or optional import is deferred, each
saying why), no import cycle in ``src/faceattr``, no code outside the model-family registry that
branches on a family's name, one table each for the model families and the detectors that every
other place reads, and a new family that trains through the registry without any other code
knowing it."""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from omegaconf import OmegaConf, open_dict

from faceattr.models import families

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
PACKAGE = SRC / "faceattr"
FAMILIES_DIR = PACKAGE / "models" / "families"

#: The floors of ``src/faceattr``, lowest first: a module imports only from its own floor or lower
#: ones (at module level or inside functions; ``if TYPE_CHECKING:`` imports don't count). A module
#: is on the floor of the longest name here that it is, or lies under (``faceattr`` itself covers
#: only its ``__init__``); every module must be on one, so a new package is placed on purpose.
FLOORS: tuple[tuple[str, ...], ...] = (
    ("faceattr", "faceattr.errors", "faceattr.labels", "faceattr.landmarks", "faceattr.resources",
     "faceattr.hashing", "faceattr.verbosity", "faceattr.writes", "faceattr.figures", "faceattr.jpeg",
     "faceattr.overrides"),
    ("faceattr.config",),
    ("faceattr.data",),
    ("faceattr.models",),  # with models.engine, the training loop and backups the families call
    ("faceattr.inference",),
    ("faceattr.evaluation",),
    ("faceattr.training",),
    ("faceattr.distill",),
    ("faceattr.serve",),
    ("faceattr.commands",),
    ("faceattr.cli", "faceattr.cli_help", "faceattr.app", "faceattr.__main__"),
)
#: Upward imports tolerated until the change named beside each lands; an entry whose import is
#: gone fails the test, so the list only shrinks.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}
DEFERRED = "# deferred:"


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:``: imports for annotations only, never executed."""
    return isinstance(node, ast.If) and (getattr(node.test, "id", None) == "TYPE_CHECKING"
                                         or getattr(node.test, "attr", None) == "TYPE_CHECKING")


@dataclass(frozen=True)
class Import:
    """One imported module of an import statement that runs."""

    line: int  #: of the statement, 1-based
    target: str  #: the module imported (``from faceattr.models import io`` imports faceattr.models.io)
    in_function: bool  #: inside a function (or lambda), not at module level
    deferred: bool  #: the statement carries a ``# deferred: <why>`` comment


def import_statements(path: Path, modules: set[str], src: Path = SRC) -> list[Import]:
    """The imports of ``path`` that run, at module level and inside functions alike (imports
    under ``if TYPE_CHECKING:`` are left out: they never run)."""
    name = module_name(path, src)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    text = path.read_text()
    lines = text.splitlines()
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        if _type_checking_only(node):
            for child in node.orelse:
                visit(child, in_function)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: from the package, up level - 1
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                # `from faceattr.models import io` imports the module faceattr.models.io
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            deferred = any(DEFERRED in line for line in lines[node.lineno - 1:node.end_lineno])
            found.extend(Import(node.lineno, t, in_function, deferred) for t in dict.fromkeys(targets))
        inside = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            visit(child, inside)

    visit(ast.parse(text, str(path)), False)
    return found


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The ``faceattr`` modules ``path`` imports, at module level and inside functions alike
    (imports under ``if TYPE_CHECKING:`` are left out: they never run)."""
    name = module_name(path)
    return {i.target for i in import_statements(path, modules) if i.target in modules and i.target != name}


def floor_of(module: str, floors: tuple[tuple[str, ...], ...] = FLOORS) -> int | None:
    """The index in ``floors`` of the longest name that ``module`` is or lies under (see ``FLOORS``);
    None if none."""
    best: tuple[int, int] | None = None
    for index, names in enumerate(floors):
        for floor_name in names:
            under = "." in floor_name and module.startswith(floor_name + ".")  # not all under the top package
            if (module == floor_name or under) and (
                    best is None or len(floor_name) > best[1]):
                best = (index, len(floor_name))
    return None if best is None else best[0]


def layering_violations(src: Path = SRC, floors: tuple[tuple[str, ...], ...] = FLOORS,
                        allowed: dict[tuple[str, str], str] | None = None) -> tuple[list[str], set[tuple[str, str]]]:
    """Every import of a higher floor under ``src/faceattr`` as ``file:line -> module`` (file relative
    to ``src``'s parent), modules on no floor as ``file: on no floor``, and the ``allowed`` upward
    imports that were seen."""
    allowed = allowed or {}
    paths = sorted((src / "faceattr").rglob("*.py"))
    modules = {module_name(p, src) for p in paths}
    problems, seen = [], set()
    for path in paths:
        name, where = module_name(path, src), path.relative_to(src.parent)
        own = floor_of(name, floors)
        if own is None:
            problems.append(f"{where}: on no floor")
            continue
        for imp in import_statements(path, modules, src):
            target = floor_of(imp.target, floors) if imp.target in modules else None
            if target is None or target <= own:
                continue
            if (name, imp.target) in allowed:
                seen.add((name, imp.target))
            else:
                problems.append(f"{where}:{imp.line} -> {imp.target}")
    return problems, seen


def undeferred_imports(src: Path = SRC) -> list[str]:
    """Imports inside functions under ``src/faceattr`` without a ``# deferred: <why>`` comment, as
    ``file:line -> module``."""
    paths = sorted((src / "faceattr").rglob("*.py"))
    modules = {module_name(p, src) for p in paths}
    return [f"{p.relative_to(src.parent)}:{i.line} -> {i.target}" for p in paths
            for i in import_statements(p, modules, src) if i.in_function and not i.deferred]


def test_no_module_imports_from_a_higher_floor():
    problems, seen = layering_violations(allowed=ALLOWED_UPWARD)
    assert not problems, ("imports from a higher floor (see FLOORS; move the shared part down, or pass it "
                          "in from above):\n" + "\n".join(problems))
    stale = sorted(set(ALLOWED_UPWARD) - seen)
    assert not stale, "ALLOWED_UPWARD entries no longer needed (remove them): " + ", ".join(map(" -> ".join, stale))


def test_every_import_inside_a_function_says_why_it_is_deferred():
    problems = undeferred_imports()
    assert not problems, ("imports inside functions without a `# deferred: <why>` comment (move them to the "
                          "top of the module unless they defer a heavy or optional import):\n" + "\n".join(problems))


def test_the_layering_checks_catch_a_bad_example(tmp_path):
    """A package of two floors: data imports models at module level, inside a function with and
    without a deferral comment, and under ``TYPE_CHECKING``; models imports data (downward)."""
    src = tmp_path / "src"
    for folder in ("faceattr", "faceattr/data", "faceattr/models"):
        (src / folder).mkdir(parents=True)
        (src / folder / "__init__.py").write_text("")
    (src / "faceattr" / "data" / "low.py").write_text(textwrap.dedent('''
        from typing import TYPE_CHECKING

        from faceattr.models.high import UP

        if TYPE_CHECKING:
            from faceattr.models import high


        def f():
            from faceattr.models import high  # deferred: an import of a higher floor, deferred or not
            import json

            return high, json, UP
    '''))
    (src / "faceattr" / "models" / "high.py").write_text("from faceattr.data.low import f\n\nUP = f\n")
    floors = (("faceattr",), ("faceattr.data",), ("faceattr.models",))
    problems, seen = layering_violations(src, floors)
    assert problems == ["src/faceattr/data/low.py:4 -> faceattr.models.high",
                        "src/faceattr/data/low.py:11 -> faceattr.models.high"] and not seen
    problems, seen = layering_violations(src, floors, {("faceattr.data.low", "faceattr.models.high"): "why"})
    assert problems == [] and seen == {("faceattr.data.low", "faceattr.models.high")}
    assert undeferred_imports(src) == ["src/faceattr/data/low.py:12 -> json"]
    assert layering_violations(src, floors[:2])[0] == ["src/faceattr/models/__init__.py: on no floor",
                                                       "src/faceattr/models/high.py: on no floor"]


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := walk(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := walk(start)) is not None:
            return cycle
    return None


def test_the_import_graph_of_src_has_no_cycle():
    graph = import_graph()
    assert "faceattr.models.info" in graph["faceattr.models.families.facenet"]  # the graph sees real imports
    assert "faceattr.models.facenet" in graph["faceattr.models.families.facenet"]  # ...function-level ones too
    assert "faceattr.models.io" in graph["faceattr.evaluation.model_dir"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
    # Evaluation never reaches back into training; low-level model files never into the registry.
    assert not any(m.startswith("faceattr.training") for m in _reachable(graph, "faceattr.evaluation.model_dir"))
    # The registry sits above the model-folder primitives, and io (which dispatches to it) above both.
    assert "faceattr.models.io" not in graph["faceattr.models.facenet"]
    assert not {"faceattr.models.io", "faceattr.models.families"} & _reachable(graph, "faceattr.models.info")


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_find_cycle_reports_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def family_name_branches(path: Path) -> list[str]:
    """Comparisons against a family's name (``x == "facenet"``, ``t in ("normal", ...)``) and
    choices between names (``"facenet" if ... else "normal"``) in one file."""
    names = set(families.family_names(aliases=True))

    def is_name(node: ast.AST) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in names
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return any(is_name(e) for e in node.elts)
        return False

    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        compares = isinstance(node, ast.Compare) and any(map(is_name, [node.left, *node.comparators]))
        chooses = isinstance(node, ast.IfExp) and is_name(node.body) and is_name(node.orelse)
        if compares or chooses:
            found.append(f"{path}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_only_the_family_modules_branch_on_a_family_name():
    outside = [p for p in sorted(PACKAGE.rglob("*.py")) if FAMILIES_DIR not in p.parents]
    found = [hit for p in outside for hit in family_name_branches(p)]
    assert not found, "branch on a model family's name outside models/families/:\n" + "\n".join(found)


def test_the_branch_check_catches_the_forms_it_looks_for(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(textwrap.dedent('''
        def f(info, kind):
            a = info.model_type == "facenet"
            b = kind in ("normal", "other")
            c = "top.keras" if a else "model.keras"
            d = "facenet" if b else "normal"
            e = "bold" if a else "normal"
            return a, b, c, d, e
    '''))
    hits = family_name_branches(probe)
    assert [h.split(": ", 1)[1] for h in hits] == [
        "info.model_type == 'facenet'", "kind in ('normal', 'other')", "'facenet' if b else 'normal'"]


def test_one_table_names_the_families_for_the_schema_groups_cli_and_saved_models():
    """``config.MODEL_FAMILIES`` is the only list of families: the config groups' schemas,
    ``conf/model/``, the CLI's choices and the saved-model types all follow it."""
    import dataclasses

    from faceattr import config
    from faceattr.cli import flags_to_overrides
    from faceattr.models import info

    table = config.MODEL_FAMILIES
    assert tuple(table) == config.family_names() == ("facenet", "cnn")
    assert config.GROUP_SCHEMAS["model"] == {name: entry.schema for name, entry in table.items()}
    assert {p.stem for p in (ROOT / "conf" / "model").glob("*.yaml")} == set(config.family_names(aliases=True))
    for name, entry in table.items():
        found = families.family(name)
        assert found.name == entry.name == entry.model_type == name
        assert found.trainable_file.endswith(".keras") and found.input_spec(64).size == 64
        schema_name = next(f for f in dataclasses.fields(entry.schema) if f.name == "name")
        assert schema_name.default == name and schema_name.metadata["choices"] == (name,)
        assert flags_to_overrides("train", ["--model-type", name]) == [f"model={name}"]
        assert info.info_problems({"model_type": name, "input_size": 64}) == []
        for alias in entry.aliases:  # an older name: accepted everywhere, and means this family
            assert families.family(alias) is found and config.canonical_family(alias) == name
            for flag in ("--model-type", "--model_type"):  # the flag's spelling and its older one
                assert flags_to_overrides("train", [flag, alias]) == [f"model={alias}"]
            assert info.info_problems({"model_type": alias, "input_size": 64}) == []
            assert config.model_settings({"name": alias}).name == name
    assert families.family("facenet").shares_trunk and not families.family("cnn").shares_trunk


def test_config_reads_the_tables_without_importing_a_family_or_a_detector():
    graph = import_graph()
    assert not any(m.startswith(("faceattr.models", "faceattr.inference")) for m in graph["faceattr.config"])
    assert not (PACKAGE / "models" / "families" / "names.py").exists()  # the table's old second home


def test_one_table_names_the_detectors_for_the_factory_schema_and_help(tmp_path):
    """``config.DETECTORS`` (name -> class) is what ``make_detector`` builds, the schema's
    ``detector.name`` choices, and the ``detector`` group ``--help`` lists (conf/detector/)."""
    import dataclasses

    from faceattr import config
    from faceattr.cli_help import config_groups
    from faceattr.inference.detectors import make_detector

    names = tuple(config.DETECTORS)
    assert names == ("haar", "mtcnn", "blazeface", "none")
    for schema in (config.DetectorConfig, config.DetectorVideoConfig):
        (name_field,) = [f for f in dataclasses.fields(schema) if f.name == "name"]
        assert name_field.metadata["choices"] == names
    assert sorted(config_groups(config.CONF_DIR)["detector"]) == sorted(names)
    for name, target in config.DETECTORS.items():
        module, class_name = target.split(":")
        detector = make_detector({"name": name}, cache_dir=tmp_path)
        assert (type(detector).__module__, type(detector).__name__) == (module, class_name)
        assert detector.name == name


def test_an_unknown_family_is_one_line():
    from faceattr.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^model.name: unknown model 'resnet' \(cnn\|facenet\)$"):
        families.family("resnet")


def test_finding_a_family_does_not_import_tensorflow():
    import subprocess
    import sys

    code = ("import sys; from faceattr.models import io; io.trainable_file('facenet'); io.trainable_file('cnn'); "
            "io.trainable_file('normal'); "
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(SRC), "PATH": ""}, check=True).stdout
    assert out.strip() == "[]"


TINY_FAMILY = '''
"""A third model family for the test: one strided conv layer into the standard heads."""

from faceattr.models.families import InputSpec, ModelFamily
from faceattr.models.families.cnn import ImageTrainer


class TinyFamily(ModelFamily):
    name = "tiny"
    trainable_file = "tiny.keras"

    def build(self, model_cfg):
        import keras
        from keras import layers

        from faceattr.models.heads import build_heads

        size = int(model_cfg.input_size)
        inputs = keras.Input((size, size, 3), name="image")
        x = layers.Rescaling(1 / 255.0, name="rescale")(inputs)
        x = layers.Conv2D(4, 3, strides=2, activation="relu", name="conv")(x)
        x = layers.GlobalAveragePooling2D(name="pool")(x)
        return keras.Model(inputs, build_heads(x, model_cfg.heads), name="tiny")

    def trainer(self, cfg, trained=None):
        return ImageTrainer(cfg, self, trained)

    def input_spec(self, input_size):
        return InputSpec(input_size, "divide by 255 (its first layer)")


FAMILY = TinyFamily()
'''


@pytest.mark.slow
def test_a_new_family_trains_through_the_registry_alone(tmp_path, monkeypatch):
    """A family module written here, registered at run time, trains (one epoch, smoke data),
    saves, evaluates and loads end to end with no change to any other code."""
    from conftest import make_fake_utkface
    from faceattr import config
    from faceattr.cli import flags_to_overrides
    from faceattr.commands import COMMANDS
    from faceattr.config import HeadsConfig, compose_config, settings
    from faceattr.models import io
    from faceattr.models.info import ModelInfo

    (tmp_path / "tiny_family.py").write_text(TINY_FAMILY)
    monkeypatch.syspath_prepend(str(tmp_path))
    table = dict(config.MODEL_FAMILIES)  # the registry's table and cache, restored after the test
    monkeypatch.setattr(config, "MODEL_FAMILIES", table)
    monkeypatch.setattr(families, "MODEL_FAMILIES", table)
    monkeypatch.setattr(families, "_loaded", dict(families._loaded))
    families.register_family("tiny", "tiny_family")
    assert families.family_names()[-1] == "tiny" and families.family("tiny").trainable_file == "tiny.keras"
    assert flags_to_overrides("train", ["--model_type", "tiny"]) == ["model=tiny"]  # the CLI accepts it

    make_fake_utkface(tmp_path / "UTKFace", 40)
    cfg = compose_config(["command=train", "debug=smoke", f"data.path={tmp_path / 'UTKFace'}",
                          f"paths.cache={tmp_path / 'cache'}", "train.epochs=1", "train.batch_size=16",
                          "train.eval=true", "evaluation.grid_faces=4", "evaluation.dpi=40"])
    with open_dict(cfg):  # the model node conf/model/tiny.yaml would give
        cfg.model = OmegaConf.create({"name": "tiny", "input_size": 16,
                                      "heads": settings(HeadsConfig, {"hidden_units": [8]})})
    summary = COMMANDS["train"].handler(cfg, tmp_path / "run")

    model_dir = tmp_path / "run" / "model"
    assert summary["epochs_run"] == 1 and summary["test"]["n"] > 0
    assert (model_dir / "tiny.keras").is_file() and not (model_dir / "model.keras").exists()
    info = ModelInfo.read(model_dir)
    assert (info.model_type, info.input_size) == ("tiny", 16)
    loaded = io.load_model(model_dir)
    assert loaded.model.name == "tiny" and tuple(loaded.model.inputs[0].shape[1:]) == (16, 16, 3)


# ------------------------------------------------------------------ short functions, named steps

#: The most lines a function in ``src/faceattr`` may have (``def`` to its last line, docstring
#: included) unless its docstring states why, in a sentence that starts with ``LONG_REASON``.
MAX_FUNCTION_LINES = 60
LONG_REASON = "Long because"
_STATED_REASON = re.compile(r"(?:^|[.!?:]\s+)" + re.escape(LONG_REASON) + r"\s")


def long_functions(paths: list[Path]) -> list[str]:
    """``path:line name (N lines)`` of every function (methods and nested ones too) over
    ``MAX_FUNCTION_LINES`` lines whose docstring states no reason."""
    found = []
    for path in paths:
        nodes = sorted(ast.walk(ast.parse(path.read_text(), str(path))), key=lambda n: getattr(n, "lineno", 0))
        for node in nodes:
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            lines = node.end_lineno - node.lineno + 1
            docstring = " ".join((ast.get_docstring(node) or "").split())  # one line: a sentence may wrap
            if lines > MAX_FUNCTION_LINES and not _STATED_REASON.search(docstring):
                found.append(f"{path}:{node.lineno} {node.name} ({lines} lines)")
    return found


def test_no_function_in_src_is_long_without_a_stated_reason():
    assert long_functions(sorted(PACKAGE.rglob("*.py"))) == []


def test_the_length_rule_catches_a_long_function(tmp_path):
    def function(name: str, lines: int, docstring: str) -> str:
        body = "".join(f"    x{i} = {i}\n" for i in range(lines - 3))
        return f"def {name}():\n    \"\"\"{docstring}\"\"\"\n{body}    return 0\n"

    source = tmp_path / "module.py"
    source.write_text(function("short_enough", MAX_FUNCTION_LINES, "Sixty lines.")
                      + function("too_long", MAX_FUNCTION_LINES + 1, "One line over.")
                      + "class Holder:\n" + textwrap.indent(function("long_method", 80, "A method."), "    ")
                      + function("says_why", 90, "A table. Long because each row is one case.")
                      + function("says_it_in_passing", 90, "A table, Long because of its rows."))
    found = long_functions([source])
    assert [f.split()[1] for f in found] == ["too_long", "long_method", "says_it_in_passing"]
    assert found[0] == f"{source}:{1 + MAX_FUNCTION_LINES} too_long ({MAX_FUNCTION_LINES + 1} lines)"


def test_one_function_says_whether_training_uses_sample_weights():
    """``rebalance=weights`` is asked in one place, ``data.targets.uses_weights`` (the rebalance
    step itself, ``data.utkface.rebalance``, picks its method by name and is not asking)."""
    asks = re.compile(r"""rebalance(?:\.name|\[["']name["']\])\s*==\s*["']weights["']""")
    places = [p.relative_to(PACKAGE).as_posix() for p in sorted(PACKAGE.rglob("*.py")) if asks.search(p.read_text())]
    assert places == ["data/targets.py"]
