"""The Hydra application: one config tree, one entry, a dispatch on ``cfg.command``.

The handler is the one the commands table (``faceattr.commands``) declares for ``cfg.command``;
each imports its library only when it runs, so ``run`` doesn't pay for training code.

Here too: a typed error becomes one ``error:`` line on stderr (its record goes to the run's
log file only), Ctrl-C one line (for ``train``, the command that resumes the run) and exit code
130, and a rerun of a finished training is answered before Hydra writes into its folder.
"""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from faceattr import writes
from faceattr.commands import COMMANDS
from faceattr.config import CONF_DIR, register, validate
from faceattr.errors import FaceAttrError
from faceattr.overrides import quote
from faceattr.training.state import finished_message, finished_summary

log = logging.getLogger("faceattr")

register(command_names=COMMANDS)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def hydra_app(cfg: DictConfig) -> float | None:
    """Run ``cfg.command`` in the Hydra run (or sweep job) directory."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    try:
        validate(cfg)  # sweep values too: each job's config is checked before its work
        result = COMMANDS[cfg.command].handler(cfg, run_dir)
    except FaceAttrError as exc:
        _log_to_file(logging.ERROR, str(exc))  # the console gets the one line below
        print(f"error: {exc}", file=sys.stderr)
        if hc.mode == RunMode.MULTIRUN:
            return None  # one failed job of a sweep is reported; the others go on
        sys.exit(exc.exit_code)
    except OSError as exc:  # no space, read-only, no permission, met outside the writes that say so themselves
        if exc.errno not in writes.WRITE_ERRNOS:
            raise
        message = str(writes.write_error(exc.filename or run_dir, exc))
        _log_to_file(logging.ERROR, message)
        print(f"error: {message}", file=sys.stderr)
        if hc.mode == RunMode.MULTIRUN:
            return None
        sys.exit(2)
    except KeyboardInterrupt as exc:
        line = "interrupted" if _exit_code(exc) == 130 else "terminated"
        if cfg.command == "train":  # the same command with its folder goes on from the last backup
            key, folder = (("hydra.sweep.dir", Path(hc.sweep.dir)) if hc.mode == RunMode.MULTIRUN
                           else ("hydra.run.dir", run_dir))
            line += f"; to resume, run: {command_line({key: quote(_shown(folder), bare_when_plain=True)})}"
        _interrupted(line, _exit_code(exc))
    print(f"Results written to {run_dir}")
    # A number lets optimising sweepers (e.g. Optuna) minimise validation/test loss.
    if isinstance(result, dict) and isinstance(result.get("objective"), float):
        return result["objective"]
    return None


def hydra_entry() -> None:
    """Run the checked command line (``sys.argv`` as ``cli.main`` left it) through the Hydra app.

    A rerun of a finished training run is answered first, before Hydra rewrites anything in
    its folder; Ctrl-C anywhere is one line and exit code 130, never a traceback.
    """
    try:
        if _report_finished_training():
            return
        hydra_app()
    except KeyboardInterrupt as exc:
        _interrupted("interrupted" if _exit_code(exc) == 130 else "terminated", _exit_code(exc))


def command_line(overrides: dict[str, str | None]) -> str:
    """The command line as the user typed it, with ``key=value`` overrides set (None: dropped).

    Ready to paste into a shell: ``sys.orig_argv`` from the interpreter on (``faceattr ...`` when
    started by the installed command), or, when the toolkit was called in-process,
    ``python src/main.py`` with Hydra's form of the arguments.
    """
    argv = list(sys.orig_argv)
    at = next((i for i, token in enumerate(argv) if Path(token).name in ("main.py", "faceattr")), None)
    if at is not None and Path(argv[at]).name == "faceattr":  # the console script: bin/faceattr
        argv, at = ["faceattr", *argv[at + 1 :]], 0
    if at is None:
        args = sys.argv[1:]
        command = next((a.split("=", 1)[1] for a in args if a.startswith("command=")), "")
        argv, at = ["python", "src/main.py", command, *(a for a in args if not a.startswith("command="))], 1
    head, args = argv[: at + 1], argv[at + 1 :]
    for key, value in overrides.items():
        spots = [i for i, token in enumerate(args) if "=" in token and token.split("=", 1)[0].lstrip("+~") == key]
        new = [] if value is None else [f"{key}={value}"]
        if spots:  # in place of the first, so the command reads as typed
            args = args[: spots[0]] + new + [t for i, t in enumerate(args) if i > spots[0] and i not in spots]
        else:
            args += new
    return shlex.join(head + args)


def _report_finished_training() -> bool:
    """``train`` into the folder of a finished run: say so, and how to train on; changes nothing."""
    args = sys.argv[1:]
    if "command=train" not in args or any(a.startswith("-") for a in args):
        return False  # a sweep, --cfg, --help: Hydra's business
    given = [a for a in args if a.split("=", 1)[0] == "hydra.run.dir"]
    if not given:
        return False  # a new dated folder
    from hydra.core.override_parser.overrides_parser import OverridesParser  # deferred: Hydra's parser (slow)

    try:
        value = OverridesParser.create().parse_overrides(given[-1:])[0].value()
    except Exception:
        return False  # Hydra will say what is wrong with it
    if not isinstance(value, str) or "${" in value:
        return False
    summary = finished_summary(Path(value))
    if summary is None:
        return False
    model_dir = quote(_shown(Path(value).resolve() / "model"), bare_when_plain=True)
    further = command_line({"hydra.run.dir": None, "train.init_from": model_dir})
    print(finished_message(Path(value), summary, further))
    return True


def _exit_code(exc: KeyboardInterrupt) -> int:
    """130 for Ctrl-C; a signal turned into an interrupt says its own (SIGTERM: 143, ``writes.Terminated``)."""
    return int(getattr(exc, "exit_code", 130))


def _interrupted(line: str, exit_code: int = 130) -> None:
    """Ctrl-C (or SIGTERM): the one line (and into the run's log file), then exit code 130 (143)."""
    if sys.stdout.isatty():
        print(flush=True)  # off the progress bar's line
    _log_to_file(logging.WARNING, line)
    print(line, file=sys.stderr, flush=True)
    sys.exit(exit_code)


def _log_to_file(level: int, message: str) -> None:
    """Record ``message`` in the run's log file (Hydra's file handler) and nowhere else."""
    record = log.makeRecord(log.name, level, __file__, 0, "%s", (message,), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and record.levelno >= handler.level:
            handler.handle(record)


def _shown(path: Path) -> str:
    """``path`` as the user would type it: relative to the working directory when inside it."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)

