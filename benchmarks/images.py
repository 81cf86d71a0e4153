"""Section ``run_img``: ``python src/main.py run --img`` from a cold start, as a user runs it."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import ENV, MAIN_PY, PHOTO, ROOT, Row, median, progress
from benchmarks.models import ModelEntry


def measure_run_img(entry: ModelEntry, repeats: int, scratch: Path) -> Row:
    """Wall time of ``python src/main.py run --img examples/astronaut.jpg --no-display``."""
    times, faces, last = [], None, None
    for i in range(repeats):
        run_dir = scratch / f"run_img_{entry.name}_{i}"
        cmd = [sys.executable, str(MAIN_PY), "run", "--img", str(PHOTO), "--no-display", "--model-type", entry.name]
        if entry.overridden:
            cmd += ["--model-path", str(entry.dir)]
        cmd.append(f"hydra.run.dir={run_dir}")
        progress(f"{entry.name}: cold `run --img` {i + 1}/{repeats}")
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=ENV)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            return Row("run_img_cold", entry.name, None, "s", "error",
                       f"exit {proc.returncode}: {tail}", {"command": cmd})
        times.append(elapsed)
        match = re.search(r"(\d+) face(?:s|\(s\))?(?![\w(])", proc.stdout)  # "1 face", "2 faces"
        faces = int(match.group(1)) if match else None
        last = cmd
    return Row("run_img_cold", entry.name, round(median(times), 3), "s",
               details={"runs": [round(t, 3) for t in times], "faces": faces,
                        "command": " ".join(last[1:]) if last else None})
