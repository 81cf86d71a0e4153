"""The commands of ``python src/main.py COMMAND``: one module each, listed once in :data:`COMMANDS`.

Each module (``run.py``, ``train.py``, ...) declares a :class:`~faceattr.commands.spec.Command`:
its summary line, its examples, its sugar flags and the Hydra overrides they become, and its
handler ``(cfg, run_dir) -> dict | None``, which composes the library floors below and holds no
library logic of its own. :data:`COMMANDS` is the one table of them: the CLI (known commands,
flag parsing, the overview), the Hydra app (dispatch), ``--help`` and the config schema's
``command`` choices (handed to ``faceattr.config.register``, which sits below this package) all
read it. Adding a command is one new module and one row below (docs/commands.md).

The modules import only the CLI's light floors at the top; each handler imports its library
when it runs, so ``--help`` and the flag checks stay fast and ``run`` never loads training code.
"""

from __future__ import annotations

from faceattr.commands import (
    calibrate,
    compare,
    distill,
    ensemble,
    evaluate,
    export,
    promote,
    run,
    serve,
    stats,
    train,
    weigh,
)
from faceattr.commands.spec import Command

#: command name -> its declaration, in the order ``--help`` lists them.
COMMANDS: dict[str, Command] = {command.name: command for command in (
    run.COMMAND,
    train.COMMAND,
    evaluate.COMMAND,
    stats.COMMAND,
    compare.COMMAND,
    promote.COMMAND,
    export.COMMAND,
    ensemble.COMMAND,
    weigh.COMMAND,
    calibrate.COMMAND,
    distill.COMMAND,
    serve.COMMAND,
)}
