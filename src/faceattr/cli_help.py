"""What ``--help`` prints: the commands, each command's own flags and examples, the config groups.

Written here rather than left to Hydra, whose help is the whole composed config followed by a
generic page. The full composed config stays one flag away: ``COMMAND --cfg job``.
"""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path

from faceattr.resources import EXAMPLE_PHOTO, program_name

#: command -> (example arguments, what the example does); the program name is put in front.
EXAMPLES: dict[str, list[tuple[str, str]]] = {
    "run": [
        ("run --img photo.jpg", "label every face in one photo"),
        ('run --img photos/ "shots/*.png" --output preds.json --no-annotate', "folders and globs, JSON out"),
        ("run --img me.jpg --model_type cnn --save-faces", "the CNN; also each face as the model saw it"),
        ("run --video clip.mp4 --no-display --output out.mp4", "a video file, annotated copy written"),
        ("run --video", "camera 0, in a window (q quits)"),
    ],
    "train": [
        ("train --model_type cnn --eval debug=smoke", "a quick real run on 300 faces"),
        ("train --data_path ~/data/UTKFace.tar.gz --eval", "FaceNet transfer on your UTKFace copy"),
        ("train experiment=facenet_full train.epochs=20", "a named run with one key changed"),
        ("train -m model.heads.dropout=0.2,0.4 debug=smoke", "a sweep: one run per value"),
    ],
    "evaluate": [
        ("evaluate", "the shipped FaceNet model on its test split"),
        ("evaluate --model_type cnn evaluation.split=val", "the shipped CNN on its validation split"),
        ("evaluate --labels my_photos/", "your own labelled photos (a folder with labels.csv)"),
        ("evaluate --model_path outputs/train/DATE/TIME/model", "a model you trained"),
    ],
    "stats": [
        ("stats", "statistics of the configured dataset (data.path)"),
        ("stats --data_path ~/data/UTKFace", "of another copy"),
    ],
    "compare": [
        ("compare multirun/train/DATE/TIME", "one sweep: sweep_summary.csv and a plot"),
        ("compare outputs/train/DATE/T1 outputs/train/DATE/T2", "any runs side by side"),
    ],
    "promote": [
        ("promote outputs/train/DATE/TIME", "ship a run's model as saved_model/<model_type>"),
    ],
    "export": [
        ("export", "rewrite the shipped FaceNet model's model.tflite"),
        ("export outputs/train/DATE/TIME/model export.quantization=float32", "an exact (float32) export"),
    ],
    "ensemble": [
        ("ensemble outputs/a outputs/b outputs/c hydra.run.dir=outputs/ens", "the mean of three runs"),
    ],
    "calibrate": [
        ("calibrate --model_type cnn", "fit the shipped CNN's decision rules on its validation split"),
        ("calibrate --model_path outputs/train/DATE/TIME/model", "a model you trained"),
    ],
    "distill": [
        ("distill", "the shipped FaceNet model -> one CNN"),
        ("distill distill.unlabeled=[my_photos/,clip.mp4] distill.alpha=0.7", "with unlabelled photos"),
    ],
    "serve": [
        ("serve", "the web page on http://127.0.0.1:8000/ (shipped FaceNet model)"),
        ("serve --model_type cnn serve.port=8080", "the CNN, another port"),
    ],
}


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


def command_help(command: str, summary: str, flags: argparse.ArgumentParser, conf_dir: Path) -> str:
    """The text of ``COMMAND --help``: usage, examples, the command's flags, the config groups."""
    prog = program_name()
    flags.prog = f"{prog} {command}"
    help_lines = flags.format_help().splitlines()
    header = next((i for i, line in enumerate(help_lines) if line.endswith(":") and not line.startswith(" ")), None)
    flag_lines = help_lines[header + 1 :] if header is not None else []  # argparse's usage line left out
    lines = [
        f"usage: {prog} {command} [flags] [key=value ...] [-m] [--cfg job]",
        "",
        f"{command}: {summary}",
        "",
        "examples:",
        *(line for args, text in EXAMPLES.get(command, []) for line in (f"  # {text}", f"  {prog} {args}")),
        "",
        "flags:",
        *flag_lines,
        "",
        "config groups (GROUP=CHOICE, e.g. model=cnn; the files under conf/):",
        *(textwrap.fill(f"{group}: {', '.join(choices)}", width=100, initial_indent="  ", subsequent_indent="      ",
                        break_on_hyphens=False)
          for group, choices in config_groups(conf_dir).items()),
        "",
        "Any config key can be set as key=value (train.epochs=5); -m sweeps over comma-separated values.",
        f"The full composed config, every key with its value: {prog} {command} --cfg job",
    ]
    return "\n".join(lines) + "\n"


def overview(commands: dict[str, str]) -> str:
    """The text of ``--help`` without a command: every command in one line, and where to look next."""
    prog = program_name()
    width = max(map(len, commands))
    lines = [
        f"usage: {prog} COMMAND [flags] [key=value ...] [hydra flags]",
        "",
        "Age, gender and race estimation from faces (UTKFace; FaceNet transfer or a CNN).",
        "",
        "commands:",
        *(f"  {name.ljust(width)}  {text}" for name, text in commands.items()),
        "",
        "examples:",
        f"  {prog} run --img {_shown(EXAMPLE_PHOTO)}   # the shipped example photo",
        f"  {prog} train --model_type cnn --eval debug=smoke",
        f"  {prog} serve",
        "",
        "Flags are shortcuts for config keys; any key can be set as key=value, -m sweeps,",
        "-v shows third-party warnings, and COMMAND --cfg job prints the composed config.",
        f"`{prog} COMMAND --help` lists a command's flags, examples and the config groups.",
    ]
    return "\n".join(lines) + "\n"
