"""Where the toolkit finds what it ships (``conf/``, ``saved_model/``, ``examples/``) and where it writes.

From a checkout (``python src/main.py ...``, or an editable ``pip install -e .``) both are the
checkout: the folder that holds ``src/`` and ``conf/``. An installed copy (``pip install .``)
carries its own ``conf/``, ``saved_model/`` and ``examples/`` inside the package, under
``faceattr/shipped/`` (copied there when the wheel is built, see ``setup.py``), and writes its
``outputs/``, ``multirun/`` and ``.cache/`` under the folder it is run from, as Hydra's run
folders (``outputs/<command>/<date>/<time>``) always are.
"""

from __future__ import annotations

import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
#: The folders a checkout holds beside ``src/`` that an installed copy carries in the package.
SHIPPED_FOLDERS = ("conf", "saved_model", "examples")
_CHECKOUT = PACKAGE_DIR.parents[1]
#: True when the package is the ``src/faceattr`` of a checkout (plain or editable install).
FROM_CHECKOUT = (_CHECKOUT / "conf" / "config.yaml").is_file() and (_CHECKOUT / "src" / "faceattr").is_dir()
#: The folder holding ``conf/``, ``saved_model/`` and ``examples/``.
SHIPPED_ROOT = _CHECKOUT if FROM_CHECKOUT else PACKAGE_DIR / "shipped"
CONF_DIR = SHIPPED_ROOT / "conf"
EXAMPLE_PHOTO = SHIPPED_ROOT / "examples" / "astronaut.jpg"


def program_name() -> str:
    """How the user started the toolkit, for the commands it suggests: ``python src/main.py`` from
    a checkout's entry script, else ``faceattr`` (the installed command, ``python -m faceattr``)."""
    return "python src/main.py" if Path(sys.argv[0]).name == "main.py" else "faceattr"


def work_root() -> Path:
    """Where ``outputs/``, ``multirun/``, ``.cache/`` and the web app's data go (``paths.root``):
    the checkout, or for an installed copy the folder the command runs in."""
    return _CHECKOUT if FROM_CHECKOUT else Path.cwd()


def toolkit_command() -> list[str]:
    """The argv that starts the toolkit in a new process with this interpreter (add COMMAND ...)."""
    if FROM_CHECKOUT:
        return [sys.executable, str(_CHECKOUT / "src" / "main.py")]
    return [sys.executable, "-m", "faceattr"]
