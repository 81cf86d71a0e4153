"""Command line: familiar flags become Hydra overrides, then Hydra takes over.

``python src/main.py train --model-type cnn --eval train.epochs=5`` is handed to Hydra as
``model=cnn train.eval=true train.epochs=5 command=train``, so everything Hydra offers
(``-m`` sweeps, ``--cfg job``, ``hydra.run.dir=...``) works unchanged; ``--help`` is the
toolkit's own (``cli_help``: a command's flags, examples and the config groups). The commands,
their flags and what each flag sets are declared in ``faceattr.commands`` (one table); this file
only reads that table, maps and dispatches, and turns typed errors into one line and a non-zero
exit. Flags are spelt with hyphens (``--model-path``); the older underscore spellings
(``--model_path``) are still accepted (:func:`respell`) and not shown in ``--help``.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from faceattr.cli_help import command_help, overview
from faceattr.commands import COMMANDS
from faceattr.commands.spec import UsageError, usage_error
from faceattr.config import CONF_DIR, compose_config, register
from faceattr.errors import FaceAttrError
from faceattr.inference.outputs import write_problem
from faceattr.resources import program_name
from faceattr.verbosity import is_verbose, set_verbosity

# Hydra's own flags pass through untouched; the value tells how many arguments follow.
HYDRA_FLAGS = {
    "-m": 0, "--multirun": 0, "--cfg": 1, "-c": 1, "--package": 1, "-p": 1, "--resolve": 0,
    "--info": 0, "-i": 0, "--hydra-help": 0, "-h": 0, "--help": 0, "--config-path": 1, "-cp": 1,
    "--config-name": 1, "-cn": 1, "--config-dir": 1, "-cd": 1, "--experimental-rerun": 1,
    "--shell-completion": 0, "-sc": 1, "--version": 0,
}
OVERRIDE_RE = re.compile(r"^[+~]{0,2}[A-Za-z_][\w.@/\-]*=")


def _flag_parser(command: str) -> argparse.ArgumentParser:
    """The sugar flags of one command (its table row's ``add_flags``, and ``-v``); everything else is Hydra's."""
    p = argparse.ArgumentParser(prog=f"{program_name()} {command}", add_help=False)
    COMMANDS[command].add_flags(p)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also show third-party warnings and TensorFlow's start-up messages")
    return p


def respell(token: str) -> str:
    """A flag in its hyphen spelling: ``--model_path`` -> ``--model-path``, ``--data_path=x`` ->
    ``--data-path=x`` (the value after ``=`` untouched); any other token as it is."""
    if not token.startswith("--"):
        return token
    name, eq, value = token.partition("=")
    return name.replace("_", "-") + eq + value


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
    """Map the familiar flags of ``command`` (either spelling) onto Hydra overrides, as its
    table row (``faceattr.commands``) declares them."""
    declared = COMMANDS[command]
    parser = _flag_parser(command)

    def fail(message: str) -> None:
        raise usage_error(command, message)

    parser.error = fail  # type: ignore[method-assign]
    ns, rest = parser.parse_known_args([respell(token) for token in sugar])
    positional: list[str] = []
    if declared.positional:
        positional = [r for r in rest if not r.startswith("-")]
        rest = [r for r in rest if r.startswith("-")]
    if rest:
        fail(f"unknown argument {rest[0]!r}")
    return declared.to_overrides(ns, positional)


def _validate_overrides(overrides: list[str]) -> None:
    """Compose the config once and check it against the schema (faceattr.config), so a typo or
    a bad value is one clear line before any data is touched, not Hydra's multi-line report.

    Sweep overrides (``a=1,2``, ``range(...)``) are left for Hydra's sweeper to expand.
    """
    from hydra.core.override_parser.overrides_parser import (
        OverridesParser,  # deferred: Hydra's grammar, only to check a line
    )

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
            print(command_help(COMMANDS[command], _flag_parser(command), CONF_DIR), end="")
            return 0
        overrides = flags_to_overrides(command, sugar) + overrides
        register(command_names=COMMANDS)
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
    from faceattr.app import hydra_entry  # deferred: Hydra's app machinery; --help and refusals answer without it

    hydra_entry()
    return 0
