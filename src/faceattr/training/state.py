"""Where a training run folder stands, readable without loading TensorFlow.

``train_summary.json``, written last (and atomically) by ``train``, marks a finished run: a
rerun into its folder changes nothing and says how to train the model further.
"""

from __future__ import annotations

import json
from pathlib import Path

from faceattr import writes

SUMMARY = "train_summary.json"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: never half a file
    (``writes.write_text``, the toolkit's one write discipline)."""
    writes.write_text(path, text)


def finished_summary(run_dir: Path) -> dict | None:
    """The ``train_summary.json`` of a run that has finished training (its model saved), or None."""
    run_dir = Path(run_dir)
    try:
        summary = json.loads((run_dir / SUMMARY).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or not (run_dir / "model" / "model_info.json").is_file():
        return None
    return summary


def finished_message(run_dir: Path, summary: dict, further: str | None = None) -> str:
    """What a rerun of a finished run says: nothing changed, and how to train the model further."""
    model_dir = Path(run_dir) / "model"
    epochs = summary.get("epochs_run")
    done = f"{epochs} epochs, " if epochs is not None else ""
    how = further or f"a new run with train.init_from={model_dir}"
    return (f"{run_dir}: this training has finished ({done}model in {model_dir}); nothing was changed.\n"
            f"To train it further, start from its weights: {how}")
