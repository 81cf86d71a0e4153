"""The machine a benchmark ran on: CPU, cores, RAM, software versions, git commit, date."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU, cores, RAM, software versions, date; TensorFlow must already be imported."""
    import cv2
    import keras
    import numpy as np
    import tensorflow as tf

    cpu = None
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.lower().startswith(("model name", "hardware", "cpu model")):
            cpu = line.split(":", 1)[1].strip()
            break
    ram_gib = None
    match = re.search(r"^MemTotal:\s+(\d+)\s+kB", _read("/proc/meminfo") or "", re.MULTILINE)
    if match:
        ram_gib = round(int(match.group(1)) / 2**20, 1)
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    quota = (_read("/sys/fs/cgroup/cpu.max") or "").split()
    cgroup_cpus = round(int(quota[0]) / int(quota[1]), 2) if len(quota) == 2 and quota[0].isdigit() else None
    commit = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):  # read-only
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    now = dt.datetime.now().astimezone()
    return {
        "cpu_model": cpu or platform.processor() or None,
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "cgroup_cpu_limit": cgroup_cpus,
        "ram_gib": ram_gib,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "os": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),  # 0 = TF default
        "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "thread_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
                                                   "TF_NUM_INTEROP_THREADS", "TF_ENABLE_ONEDNN_OPTS")
                       if k in os.environ},
        "git_commit": commit,
        "date": now.isoformat(timespec="seconds"),
        "date_utc": now.astimezone(dt.UTC).isoformat(timespec="seconds"),
    }
