"""Command line: familiar flags become Hydra overrides, then Hydra takes over.

``python src/main.py train --model_type normal --eval train.epochs=5`` is handed to Hydra as
``model=normal train.eval=true train.epochs=5 command=train``, so everything Hydra offers
(``-m`` sweeps, ``--cfg job``, ``hydra.run.dir=...``) works unchanged; ``--help`` is the
toolkit's own (``cli_help``: a command's flags, examples and the config groups). Each
command's work lives in its own module; this file only maps and dispatches, and turns typed
errors into one line and a non-zero exit.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path

from faceattr.cli_help import command_help, overview, program_name
from faceattr.config import CONF_DIR, compose_config, register
from faceattr.errors import FaceAttrError
from faceattr.inference.outputs import write_problem
from faceattr.models.families.names import family_names
from faceattr.verbosity import is_verbose, set_verbosity

COMMANDS = {
    "run": "label the faces in images (--img) or a video/camera (--video)",
    "train": "train a model on UTKFace (add --eval to evaluate on the test split)",
    "evaluate": "evaluate a saved model on the test split",
    "stats": "write dataset statistics (plots and data_summary.json)",
    "compare": "summarise and plot a sweep or a set of runs: compare DIR [DIR ...]",
    "promote": "copy a training run's model into saved_model/: promote RUN_DIR",
    "export": "write a model folder's TensorFlow Lite file, what `run` serves: export [MODEL_DIR]",
    "ensemble": "average trained models of one kind into one model: ensemble DIR DIR [DIR ...]",
    "calibrate": "fit a model's decision rules (rare race class, age extremes) on its validation split",
    "distill": "train a student model (default: one CNN) on a teacher's outputs: distill [--teacher DIR]",
    "serve": "a local web app: upload photos, correct labels, retrain; browse runs (serve.host, serve.port)",
}
# Hydra's own flags pass through untouched; the value tells how many arguments follow.
HYDRA_FLAGS = {
    "-m": 0, "--multirun": 0, "--cfg": 1, "-c": 1, "--package": 1, "-p": 1, "--resolve": 0,
    "--info": 0, "-i": 0, "--hydra-help": 0, "-h": 0, "--help": 0, "--config-path": 1, "-cp": 1,
    "--config-name": 1, "-cn": 1, "--config-dir": 1, "-cd": 1, "--experimental-rerun": 1,
    "--shell-completion": 0, "-sc": 1, "--version": 0,
}
OVERRIDE_RE = re.compile(r"^[+~]{0,2}[A-Za-z_][\w.@/\-]*=")

log = logging.getLogger(__name__)


class UsageError(FaceAttrError):
    """The command line itself is wrong (unknown command or flag, missing value)."""


def _quote(value: str) -> str:
    """Quote a path for Hydra's override grammar so that it is taken literally.

    Spaces, commas and brackets are safe inside quotes; on top of that ``${`` is escaped
    (OmegaConf would read it as a variable: ``a${x}.jpg`` or ``${oc.env:HOME}``), with any
    backslashes right before it doubled, and backslashes before a quote or at the end of the
    value are doubled for Hydra's quoted strings. Any other backslash stands as it is.
    """
    escaped = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", value)
    escaped = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", escaped)
    escaped = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped)
    return "'" + escaped + "'"


def _flag_parser(command: str) -> argparse.ArgumentParser:
    """The sugar flags of one command; everything else is Hydra's."""
    p = argparse.ArgumentParser(prog=f"{program_name()} {command}", add_help=False)
    if command in ("run", "train", "evaluate", "export", "calibrate", "serve"):
        p.add_argument("--model_type", choices=family_names(), help="model family (model=...)")
    if command == "distill":
        p.add_argument("--model_type", choices=family_names(), default="normal",
                       help="the student's model family (model=...; default normal, one CNN)")
        p.add_argument("--teacher", metavar="DIR",
                       help="the teacher's model folder, with its split.csv (distill.teacher=...)")
    if command in ("run", "evaluate", "calibrate", "serve"):
        p.add_argument("--model_path", help="a trained model folder (default: saved_model/<model_type>)")
    if command in ("train", "evaluate", "stats", "calibrate"):
        p.add_argument("--data_path", help="UTKFace folder or .tar.gz/.zip archive (data.path=...)")
    if command == "evaluate":
        p.add_argument("--labels", metavar="PATH",
                       help="a labelled photo folder (with labels.csv) or its CSV: score the model on those photos "
                            "as `run` sees them (evaluation.labels=...)")
    if command == "train":
        p.add_argument("--eval", action="store_true", help="evaluate on the test split after training")
    if command == "run":
        src = p.add_mutually_exclusive_group()
        src.add_argument("--img", nargs="+", metavar="PATH", help="image files, folders or globs")
        src.add_argument("--video", nargs="?", const="0", metavar="SOURCE",
                         help="camera index (default 0) or video file")
        p.add_argument("--output", help="preds.csv|preds.json for --img, out.mp4 for --video")
        p.add_argument("--no-display", action="store_true", help="never open a window")
        p.add_argument("--no-annotate", action="store_true",
                       help="write only the predictions, no annotated copies of the images")
        p.add_argument("--save-faces", action="store_true",
                       help="--img: also write each face as the model saw it (aligned, at its input size) "
                            "to <run dir>/faces/ (run.faces_dir=...)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also show third-party warnings and TensorFlow's start-up messages")
    return p


def _split_args(args: list[str]) -> tuple[list[str], list[str], list[str]]:
    """Separate sugar flags, Hydra flags and ``key=value`` overrides.

    An ``--img`` list ends at the first token that looks like an override and is not an
    existing file, so ``run --img a.jpg b.jpg detector=none`` works as expected.
    """
    sugar: list[str] = []
    hydra_flags: list[str] = []
    overrides: list[str] = []
    i = 0
    while i < len(args):
        tok = args[i]
        name = tok.split("=", 1)[0]
        if name in HYDRA_FLAGS and not tok.startswith("--model"):
            n = HYDRA_FLAGS[name] if "=" not in tok else 0
            hydra_flags.extend(args[i : i + 1 + n])
            i += 1 + n
        elif tok.startswith("-"):
            sugar.append(tok)
            i += 1
        elif OVERRIDE_RE.match(tok) and not Path(tok).exists():
            overrides.append(tok)
            i += 1
        else:
            sugar.append(tok)  # a flag's value (paths for --img, a source for --video)
            i += 1
    return sugar, hydra_flags, overrides


def flags_to_overrides(command: str, sugar: list[str]) -> list[str]:
    """Map the familiar flags of ``command`` onto Hydra overrides."""
    parser = _flag_parser(command)

    def fail(message: str) -> None:
        raise UsageError(f"{command}: {message} (see: {program_name()} {command} --help)")

    parser.error = fail  # type: ignore[method-assign]
    ns, rest = parser.parse_known_args(sugar)
    if command in ("compare", "promote", "export", "ensemble"):
        positional = [r for r in rest if not r.startswith("-")]
        rest = [r for r in rest if r.startswith("-")]
    if rest:
        fail(f"unknown argument {rest[0]!r}")
    out: list[str] = []
    if getattr(ns, "model_type", None):
        out.append(f"model={ns.model_type}")
    if getattr(ns, "model_path", None):
        out.append(f"model_path={_quote(ns.model_path)}")
    if getattr(ns, "data_path", None):
        out.append(f"data.path={_quote(ns.data_path)}")
    if getattr(ns, "labels", None):
        out.append(f"evaluation.labels={_quote(ns.labels)}")
    if getattr(ns, "eval", False):
        out.append("train.eval=true")
    if getattr(ns, "teacher", None):
        out.append(f"distill.teacher={_quote(ns.teacher)}")
    if command == "run":
        if ns.img is None and ns.video is None:
            fail("give --img PATH [PATH ...] or --video [SOURCE]")
        if ns.img is not None:
            out.append("run.img=[" + ",".join(_quote(p) for p in ns.img) + "]")
        if ns.video is not None:
            out.append(f"run.video={_quote(ns.video)}")
        if ns.output:
            out.append(f"run.output={_quote(ns.output)}")
        if ns.no_display:
            out.append("run.display=false")
        if ns.no_annotate:
            out.append("run.annotate=false")
        if ns.save_faces:
            if ns.video is not None:
                fail("--save-faces goes with --img (a video's faces are not written one by one)")
            out.append("run.save_faces=true")
    if command == "compare":
        if not positional:
            fail("give one or more sweep or run folders")
        out.append("compare.dirs=[" + ",".join(_quote(p) for p in positional) + "]")
    if command == "ensemble":
        if len(positional) < 2:
            fail("give two or more model folders (or training runs) of one kind, trained on one split")
        out.append("ensemble.members=[" + ",".join(_quote(p) for p in positional) + "]")
    if command == "promote":
        if len(positional) != 1:
            fail("give exactly one training run folder")
        out.append(f"model_path={_quote(positional[0])}")
    if command == "export":
        if len(positional) > 1:
            fail("give at most one model folder (default: the shipped model of --model_type)")
        if positional:
            out.append(f"model_path={_quote(positional[0])}")
    return out


def _validate_overrides(overrides: list[str]) -> None:
    """Compose the config once and check it against the schema (faceattr.config), so a typo or
    a bad value is one clear line before any data is touched, not Hydra's multi-line report.

    Sweep overrides (``a=1,2``, ``range(...)``) are left for Hydra's sweeper to expand.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser  # deferred: Hydra (seconds)

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as exc:  # Hydra's grammar errors
        raise UsageError(f"bad override: {str(exc).splitlines()[0]}") from None
    plain = [o.input_line for o in parsed if not o.is_sweep_override() and not o.key_or_group.startswith("hydra")]
    compose_config(plain)  # one line (ConfigError) for an unknown key or group, or a bad value


def _run_folder_check(overrides: list[str], hydra_flags: list[str]) -> None:
    """Refuse in one line, before Hydra makes the run folder, when its first folder that exists
    (``outputs/`` or the current folder by default) takes no new files: a read-only or full
    current folder. Names the folder and the setting that moves the run elsewhere."""
    sweep = any(f in ("-m", "--multirun") for f in hydra_flags)
    key = "hydra.sweep.dir" if sweep else "hydra.run.dir"
    given = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+~") == key]
    value = given[-1].strip("'\"") if given else ("multirun" if sweep else "outputs")
    fixed = value.split("${", 1)[0] or "."  # the part before any ${now:...}: folders that must exist or be made
    folder = Path(fixed).expanduser()
    problem = write_problem(folder, folder=True)
    if problem is not None:
        raise UsageError(f"{folder.absolute()}: the run folder cannot be written there ({problem}); "
                         f"run from a writable folder or set {key}=<a writable folder>")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python src/main.py``; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(overview(COMMANDS), end="")
        return 0 if argv else 2
    command, args = argv[0], argv[1:]
    if command.startswith("-sc") or command == "--shell-completion":
        command, args = "run", argv  # tab completion: Hydra answers for the whole config
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}; choose from {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        sugar, hydra_flags, overrides = _split_args(args)
        if any(f in ("-h", "--help") for f in hydra_flags):  # before the flags are checked: help always works
            print(command_help(command, COMMANDS[command], _flag_parser(command), CONF_DIR), end="")
            return 0
        overrides = flags_to_overrides(command, sugar) + overrides
        register()
        if not any(f in ("-h", "--help", "--hydra-help", "-sc", "--shell-completion") for f in hydra_flags):
            _validate_overrides(overrides + [f"command={command}"])
            if not any(f in ("--cfg", "-c", "--info", "-i") for f in hydra_flags):
                _run_folder_check(overrides, hydra_flags)
    except FaceAttrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    # Before TensorFlow loads; FACEATTR_VERBOSE=1 (set by a verbose command for those it starts) too.
    set_verbosity(any(flag in ("-v", "--verbose") for flag in sugar) or is_verbose())
    sys.argv = [sys.argv[0], *hydra_flags, *overrides, f"command={command}"]
    from faceattr.app import hydra_entry  # deferred: Hydra takes a second to import; --help needs none of it

    hydra_entry()
    return 0
