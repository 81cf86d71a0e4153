"""The window ``run`` shows results in, and whether one can be opened here.

``run.display=true`` asks for a window; a screen that can't be opened means no window (one
log line), never an aborted process (see ``display_problem``). A headless OpenCV build is
found out on the first ``show`` and ends the display the same way.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import subprocess
import sys

import cv2
import numpy as np

log = logging.getLogger(__name__)

WINDOW = "faceattr"
QUIT_KEYS = {ord("q"), ord("Q"), 27}  # q or Esc
#: Opening a window in a child process first: OpenCV's Qt back end aborts the whole process
#: (SIGABRT) when $DISPLAY names a screen it can't reach, so the real process never tries.
DISPLAY_PROBE = "import cv2; cv2.namedWindow('faceattr-probe'); cv2.destroyAllWindows()"
DISPLAY_PROBE_TIMEOUT_S = 5.0
NO_SCREEN = "No screen ($DISPLAY and $WAYLAND_DISPLAY unset)"
#: Longest side, in pixels, of an image as shown (bigger photos are scaled down to fit).
MAX_SHOWN_SIDE = 1280


@functools.cache
def display_problem() -> str | None:
    """Why no window can be shown here, or None when one can (checked once per process).

    On Linux/BSD a window needs $DISPLAY or $WAYLAND_DISPLAY, and the screen it names must
    answer: OpenCV's Qt/GTK back ends abort the process, not raise, when it doesn't. So a
    child process opens and closes a window first (a fraction of a second), and a failure or
    a hang past ``DISPLAY_PROBE_TIMEOUT_S`` means no window.
    """
    if sys.platform.startswith(("win", "darwin")):
        return None
    names = [f"${var}={os.environ[var]}" for var in ("DISPLAY", "WAYLAND_DISPLAY") if os.environ.get(var)]
    if not names:
        return NO_SCREEN
    screen = " / ".join(names)
    try:
        proc = subprocess.run([sys.executable, "-c", DISPLAY_PROBE], capture_output=True, text=True, errors="replace",
                              stdin=subprocess.DEVNULL, timeout=DISPLAY_PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"{screen}: opening a window took over {DISPLAY_PROBE_TIMEOUT_S:g} s"
    except OSError as exc:
        return f"{screen}: cannot check the screen ({exc.strerror or exc})"
    if proc.returncode == 0:
        return None
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
    reason = next((line for line in lines if "display" in line.lower()), lines[-1] if lines else
                  f"exit code {proc.returncode}")
    return f"{screen}: cannot open a window ({reason[:200]})"


def screen_available() -> bool:
    """Whether a window can be shown (see ``display_problem``)."""
    return display_problem() is None


def want_display(requested: bool) -> bool:
    """Whether to show a window: ``requested`` (``run.display``) and a screen that answers.

    A refused request is one log line: info when there is no screen at all (the ordinary
    headless case), a warning when a screen is named but doesn't answer.
    """
    if not requested:
        return False
    problem = display_problem()
    if problem is None:
        return True
    (log.info if problem == NO_SCREEN else log.warning)("%s: not displaying", problem)
    return False


def show(image: np.ndarray, wait_ms: int) -> int | None:
    """Show an (H, W, 3) BGR image in the window, scaled down to ``MAX_SHOWN_SIDE`` pixels if
    bigger, and wait up to ``wait_ms`` ms (0: until a key) for a key.

    Returns the key pressed (or -1 when none was), None if this OpenCV can't show windows.
    """
    try:
        h, w = image.shape[:2]
        if max(h, w) > MAX_SHOWN_SIDE:  # fit big photos on the screen
            s = MAX_SHOWN_SIDE / max(h, w)
            image = cv2.resize(image, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
        cv2.imshow(WINDOW, image)
        return cv2.waitKey(wait_ms) & 0xFF
    except cv2.error as exc:  # headless OpenCV build
        log.warning("Cannot show a window (%s); not displaying", str(exc).strip().splitlines()[-1])
        return None


def close_windows() -> None:
    """Close every OpenCV window (nothing happens on a headless build)."""
    with contextlib.suppress(cv2.error):
        cv2.destroyAllWindows()
