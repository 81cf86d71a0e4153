"""What every command declares, once: :class:`Command`, and the flags several commands share.

A command module (``faceattr/commands/<name>.py``) builds one :class:`Command`: its name, the
summary line of ``--help``, its examples, its sugar flags with the Hydra overrides they become,
and its handler. The table in ``faceattr/commands/__init__.py`` lists them; the CLI, the Hydra
app, ``--help`` and the config schema's ``command`` choices all read that table.

Flags are spelt with hyphens (``--model-type``); the CLI also accepts the older underscore
spellings (``--model_type``) by respelling them before parsing (``faceattr.cli``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faceattr.errors import FaceAttrError
from faceattr.models.families.names import family_names
from faceattr.overrides import quote
from faceattr.resources import program_name

#: A command's work: ``(cfg, run_dir) -> summary dict or None``; ``cfg`` is the composed config,
#: ``run_dir`` the folder Hydra made for this run (or sweep job).
Handler = Callable[[Any, Path], "dict | None"]


class UsageError(FaceAttrError):
    """The command line itself is wrong (unknown command or flag, missing value)."""


def usage_error(command: str, message: str) -> UsageError:
    """The error for a bad command line of ``command``, pointing at its ``--help``."""
    return UsageError(f"{command}: {message} (see: {program_name()} {command} --help)")


def _no_flags(parser: argparse.ArgumentParser) -> None:
    """A command with no sugar flags of its own."""


def _no_overrides(flags: argparse.Namespace, positional: list[str]) -> list[str]:
    """A command whose flags set nothing."""
    return []


@dataclass(frozen=True)
class Command:
    """One command of ``python src/main.py COMMAND``.

    ``add_flags`` adds the command's sugar flags to an ``argparse`` parser (``-v`` is added for
    every command by the CLI); ``to_overrides`` turns the parsed flags and, for a command with
    ``positional`` arguments, the folders given, into Hydra overrides (raising
    :func:`usage_error` for a command line it can't take). ``examples`` are ``(arguments, what
    they do)`` pairs for ``--help``; the program name is put in front.
    """

    name: str
    summary: str
    handler: Handler
    add_flags: Callable[[argparse.ArgumentParser], None] = _no_flags
    to_overrides: Callable[[argparse.Namespace, list[str]], list[str]] = _no_overrides
    positional: bool = False
    examples: tuple[tuple[str, str], ...] = field(default=())


# ------------------------------------------------------------------ flags several commands share

def add_model_type(parser: argparse.ArgumentParser, help: str = "model family (model=...)",
                   default: str | None = None) -> None:
    """``--model-type NAME`` -> ``model=NAME`` (a family of the registry)."""
    parser.add_argument("--model-type", dest="model_type", choices=family_names(), default=default, help=help)


def add_model_path(parser: argparse.ArgumentParser) -> None:
    """``--model-path DIR`` -> ``model_path='DIR'``."""
    parser.add_argument("--model-path", dest="model_path",
                        help="a trained model folder (default: saved_model/<model_type>)")


def add_data_path(parser: argparse.ArgumentParser) -> None:
    """``--data-path PATH`` -> ``data.path='PATH'``."""
    parser.add_argument("--data-path", dest="data_path", help="UTKFace folder or .tar.gz/.zip archive (data.path=...)")


def shared_overrides(flags: argparse.Namespace) -> list[str]:
    """The overrides of the shared flags a command declared, in this order: ``model``,
    ``model_path``, ``data.path`` (a flag not given, or not declared, sets nothing)."""
    out: list[str] = []
    if getattr(flags, "model_type", None):
        out.append(f"model={flags.model_type}")
    if getattr(flags, "model_path", None):
        out.append(f"model_path={quote(flags.model_path)}")
    if getattr(flags, "data_path", None):
        out.append(f"data.path={quote(flags.data_path)}")
    return out
