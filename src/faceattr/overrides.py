"""Values written into Hydra's override grammar (``key=value`` on a command line), in one place.

Used wherever the toolkit writes an override for Hydra to read back: the CLI's flags
(``--model-path DIR`` -> ``model_path='DIR'``), the command lines the app prints (how to
resume a run, how to train on from a finished one) and the retraining job the web app starts.
"""

from __future__ import annotations

import re
from typing import Any

#: A value that can stand bare in an override: letters, digits and ``_ . / @ : + -`` only (no
#: quote, space, comma, bracket, ``$`` or backslash)...
PLAIN_VALUE = re.compile(r"[\w./@:+\-]+")
#: ...unless Hydra would read it as something other than text (a number, a bool, null).
NOT_TEXT = re.compile(r"[+-]?(\d[\d_]*\.?[\d_]*(e[+-]?\d+)?|\.\d+(e[+-]?\d+)?|inf|nan)|true|false|null", re.IGNORECASE)


def quote(value: Any, *, bare_when_plain: bool = False) -> str:
    """``value`` as a value of Hydra's override grammar, read back literally.

    None is ``null``, a bool ``true``/``false``, a number its ``repr``. Text is quoted, so
    spaces, commas and brackets are safe; on top of that ``${`` is escaped (OmegaConf would
    read it as a variable: ``a${x}.jpg`` or ``${oc.env:HOME}``), with any backslashes right
    before it doubled, and backslashes before a quote or at the end of the value are doubled
    for Hydra's quoted strings. Any other backslash stands as it is (Hydra reads it literally).
    ``bare_when_plain``: text matching :data:`PLAIN_VALUE` (and not :data:`NOT_TEXT`) is left
    unquoted, for command lines a person reads (``hydra.run.dir=outputs/train/x``).
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    if bare_when_plain and PLAIN_VALUE.fullmatch(text) and not NOT_TEXT.fullmatch(text):
        return text
    escaped = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", text)
    escaped = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", escaped)
    escaped = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped)
    return "'" + escaped + "'"


def quote_list(values: list[Any]) -> str:
    """``values`` as a Hydra list: ``['a','b']``, each item quoted by :func:`quote`."""
    return "[" + ",".join(quote(v) for v in values) + "]"
