"""The one figure saver of the toolkit: evaluation plots, sweep comparisons and dataset statistics.

Takes any matplotlib ``Figure`` (an Agg canvas or pyplot's) and imports nothing heavy itself.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

#: The formats a figure is written in ("png" always, the others where asked for).
SUPPORTED_FORMATS = ("png", "svg", "pdf")


def save_figure(fig: Figure, stem: Path, formats: Sequence[str] = ("png",), dpi: int = 120,
                bbox_inches: str | None = None) -> list[Path]:
    """Write ``fig`` as ``<stem>.<fmt>`` for each format ("png" always); returns the paths.

    ``dpi``: dots per inch of the raster formats; ``bbox_inches="tight"`` trims the margins.
    An unsupported format is skipped with a warning. The figure is cleared afterwards.
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    fmts = ["png", *(f for f in dict.fromkeys(str(f).lower() for f in formats) if f != "png")]
    paths = []
    for fmt in fmts:
        if fmt not in SUPPORTED_FORMATS:
            log.warning("plot format %r not supported (%s); skipped", fmt, "|".join(SUPPORTED_FORMATS))
            continue
        path = stem.with_suffix(f".{fmt}")
        fig.savefig(path, dpi=dpi, format=fmt, bbox_inches=bbox_inches)
        paths.append(path)
    fig.clear()
    return paths
