"""Quiet by default, everything with ``-v``: what the libraries underneath print.

The toolkit's own messages (its log lines, its one-line errors, where the results went) are
always shown. By default TensorFlow's C++ start-up messages below warnings are held back
(``TF_CPP_MIN_LOG_LEVEL=2``) and Python shows third-party warnings as it does by default (not
DeprecationWarnings of library code). ``-v``/``--verbose`` lets TensorFlow log everything and
shows every warning once per place it is raised, DeprecationWarnings included.

Warnings the toolkit caused were fixed where they came from, not hidden: Keras' "``shuffle=True``
... will be ignored" (``training.loop`` passes ``shuffle=False``; the datasets shuffle themselves)
and "Your input ran out of data" (``data.pipeline`` states each epoch's length, which Keras
otherwise learns by running the first epoch until the data ends).

The choice travels in ``FACEATTR_VERBOSE``, so the processes a command starts (parallel sweep
jobs, the web app's retrain job) are as quiet or as verbose as the command.
"""

from __future__ import annotations

import os
import warnings

VERBOSE_ENV = "FACEATTR_VERBOSE"


def is_verbose() -> bool:
    """Whether ``-v`` was given to this command or to the one that started this process."""
    return os.environ.get(VERBOSE_ENV) == "1"


def set_verbosity(verbose: bool) -> None:
    """Set this process (and the processes it starts) quiet or verbose; call before TensorFlow loads."""
    os.environ[VERBOSE_ENV] = "1" if verbose else "0"
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        warnings.simplefilter("default")  # every warning, once per place it is raised
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # errors and warnings only
