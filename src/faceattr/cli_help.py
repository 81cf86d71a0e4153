"""What ``--help`` prints: the commands, each command's own flags and examples, the config groups.

Written here rather than left to Hydra, whose help is the whole composed config followed by a
generic page. The full composed config stays one flag away: ``COMMAND --cfg job``.
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Mapping
from pathlib import Path

from faceattr.commands.spec import Command
from faceattr.resources import EXAMPLE_PHOTO, program_name


def _shown(path: Path) -> str:
    """``path`` relative to the working folder when inside it, else in full."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def config_groups(conf_dir: Path) -> dict[str, list[str]]:
    """group -> its choices, from the YAML files under ``conf_dir`` (``hydra/launcher`` included)."""
    groups: dict[str, list[str]] = {}
    for path in sorted(conf_dir.rglob("*.yaml")):
        group = path.parent.relative_to(conf_dir).as_posix()
        if group != ".":
            groups.setdefault(group, []).append(path.stem)
    return groups


def command_help(declared: Command, flags: argparse.ArgumentParser, conf_dir: Path) -> str:
    """The text of ``COMMAND --help``: usage, the summary and examples of ``declared`` (its row of
    the commands table), the command's ``flags``, the config groups under ``conf_dir``."""
    prog, command = program_name(), declared.name
    flags.prog = f"{prog} {command}"
    help_lines = flags.format_help().splitlines()
    header = next((i for i, line in enumerate(help_lines) if line.endswith(":") and not line.startswith(" ")), None)
    flag_lines = help_lines[header + 1 :] if header is not None else []  # argparse's usage line left out
    lines = [
        f"usage: {prog} {command} [flags] [key=value ...] [-m] [--cfg job]",
        "",
        f"{command}: {declared.summary}",
        "",
        "examples:",
        *(line for args, text in declared.examples for line in (f"  # {text}", f"  {prog} {args}")),
        "",
        "flags:",
        *flag_lines,
        "",
        "config groups (GROUP=CHOICE, e.g. model=normal; the files under conf/):",
        *(textwrap.fill(f"{group}: {', '.join(choices)}", width=100, initial_indent="  ", subsequent_indent="      ",
                        break_on_hyphens=False)
          for group, choices in config_groups(conf_dir).items()),
        "",
        "Any config key can be set as key=value (train.epochs=5); -m sweeps over comma-separated values.",
        f"The full composed config, every key with its value: {prog} {command} --cfg job",
    ]
    return "\n".join(lines) + "\n"


def overview(commands: Mapping[str, Command]) -> str:
    """The text of ``--help`` without a command: every command of the table in one line (its
    summary), and where to look next."""
    prog = program_name()
    width = max(map(len, commands))
    lines = [
        f"usage: {prog} COMMAND [flags] [key=value ...] [hydra flags]",
        "",
        "Age, gender and race estimation from faces (UTKFace; FaceNet transfer or a CNN).",
        "",
        "commands:",
        *(f"  {name.ljust(width)}  {command.summary}" for name, command in commands.items()),
        "",
        "examples:",
        f"  {prog} run --img {_shown(EXAMPLE_PHOTO)}   # the shipped example photo",
        f"  {prog} train --model-type normal --eval debug=smoke",
        f"  {prog} serve",
        "",
        "Flags are shortcuts for config keys; any key can be set as key=value, -m sweeps,",
        "-v shows third-party warnings, and COMMAND --cfg job prints the composed config.",
        f"`{prog} COMMAND --help` lists a command's flags, examples and the config groups.",
    ]
    return "\n".join(lines) + "\n"
