"""``python -m faceattr COMMAND ...``: the same as the ``faceattr`` command and ``python src/main.py``."""

import sys

from faceattr.cli import main

if __name__ == "__main__":
    sys.exit(main())
